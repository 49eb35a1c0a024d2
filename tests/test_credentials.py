"""Forge credentials never reach disk, and never show in a message.

The mirror is fetched over real smart HTTP (``git http-backend`` behind a server that demands
Basic auth), so a token that did not travel would fail the clone; after the ingest, no file
under the home (the mirror's config, ``manifest.sqlite`` and its journal, ``corpus.json``)
holds the token, in clear or base64.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.settings import RepoConfig
from trainer import corpus
from trainer.corpus.mirror import redact_url, split_credentials
from trainer.corpus.update import mirror_dir
from trainer.errors import RepositoryError

TOKEN = "ghp_sekrit0token0that0must0stay0in0memory"


@dataclass
class GitHttp:
    """A smart-HTTP git server over ``root`` that answers 401 unless Basic auth carries TOKEN."""

    root: Path
    port: int
    authorized: list[str]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def _handler(server: GitHttp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Basic ") or \
                    base64.b64decode(auth[6:]).decode().partition(":")[2] != TOKEN:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.end_headers()
                return
            server.authorized.append(self.path)
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            env = {"GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                   "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                   "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "PATH": "/usr/bin:/bin"}
            out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                 check=True).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            headers = [line.split(b":", 1) for line in head.split(b"\r\n") if b":" in line]
            status = next((int(v.split()[0]) for k, v in headers if k.lower() == b"status"), 200)
            self.send_response(status)
            for key, value in headers:
                if key.lower() != b"status":
                    self.send_header(key.decode(), value.decode().strip())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

    return Handler


@pytest.fixture
def git_http(make_repo) -> Iterator[GitHttp]:
    repo = make_repo(files=6, seed=3, name="web")
    state = GitHttp(repo.bare.parent, 0, [])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _files_holding(home: Path, secret: str) -> list[str]:
    needles = [secret.encode(), base64.b64encode(f"x-access-token:{secret}".encode())]
    return [str(p.relative_to(home)) for p in home.rglob("*")
            if p.is_file() and any(n in p.read_bytes() for n in needles)]


def test_an_ingest_with_a_token_leaves_no_token_on_disk(git_http: GitHttp, tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = git_http.url("web.git")
    with pytest.raises(RepositoryError) as refused:  # the server really checks: no token, no clone
        corpus.update(corpus.CorpusSpec(name="web", url=url), home)
    assert TOKEN not in str(refused.value)
    result = corpus.update(corpus.CorpusSpec(name="web", url=url, token=TOKEN), home)
    assert result.train_files + result.heldout_files > 0 and git_http.authorized
    config = subprocess.run(["git", f"--git-dir={mirror_dir(home, 'web')}", "config", "--list"],
                            capture_output=True, text=True, check=True).stdout
    assert TOKEN not in config and "extraheader" not in config.lower()
    assert (home / "corpus" / "web" / "manifest.sqlite").is_file()
    assert _files_holding(home, TOKEN) == []


def test_credentials_inside_a_url_are_moved_out_of_it(git_http: GitHttp, tmp_path: Path) -> None:
    # A library caller may still pass https://user:token@host; git gets the bare URL and a header.
    home = tmp_path / "home"
    url = git_http.url("web.git").replace("http://", f"http://someone:{TOKEN}@")
    spec = corpus.CorpusSpec(name="web", url=url)
    assert TOKEN not in repr(spec) and TOKEN not in str(spec.public())
    corpus.update(spec, home)
    remote = subprocess.run(["git", f"--git-dir={mirror_dir(home, 'web')}", "config", "--list"],
                            capture_output=True, text=True, check=True).stdout
    assert TOKEN not in remote and "someone" not in remote
    assert corpus.stats(home, "web")["url"] == git_http.url("web.git")
    assert _files_holding(home, TOKEN) == []


@pytest.mark.parametrize(("forge", "variable"), [
    ("github", "REPOTUNE_GITHUB_TOKEN"), ("gitlab", "REPOTUNE_GITLAB_TOKEN")])
def test_a_configured_url_with_a_token_is_refused_naming_the_variable(forge: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as refused:
        RepoConfig(name="web", url=f"https://bot:{TOKEN}@example.com/acme/web.git", forge=forge)
    assert TOKEN not in str(refused.value) and "https://example.com/acme/web.git" in str(refused.value)


def test_a_local_repository_with_a_token_url_names_both_variables() -> None:
    with pytest.raises(ConfigError) as refused:
        RepoConfig(name="web", url=f"https://{TOKEN}@git.example.com/web.git")
    message = str(refused.value)
    assert "REPOTUNE_GITHUB_TOKEN" in message and "REPOTUNE_GITLAB_TOKEN" in message
    assert TOKEN not in message


def test_ssh_and_plain_urls_are_accepted() -> None:
    for url in ("git@github.com:acme/web.git", "ssh://git@example.com/acme/web.git",
                "https://github.com/acme/web.git", "file:///srv/web.git"):
        assert RepoConfig(name="web", url=url, forge="github").url == url


def test_redaction_hides_a_password_containing_at_signs() -> None:
    text = "fatal: unable to access 'https://bot:p@ss@word@git.example.com/acme/web.git/': 403"
    redacted = redact_url(text)
    assert redacted == "fatal: unable to access 'https://***@git.example.com/acme/web.git/': 403"
    assert redact_url("see http://host/a@b and https://x@h/p") == "see http://host/a@b and https://***@h/p"
    assert split_credentials("https://bot:p%40ss@word@host/r.git") == ("https://host/r.git", ("bot", "p@ss@word"))
