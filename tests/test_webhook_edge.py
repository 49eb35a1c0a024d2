"""The webhook's edge: the forge is answered in time whatever anonymous clients do, the status
views never wait on a corpus lock, show no server paths, and sit behind the status token.

Real components throughout: the webhook app under the same :class:`serving.http.HttpServer`
``repotune webhook`` runs (``bot.webhook.server``), a real Redis, a corpus built from a real git
repository, and the very flock the ingest takes (``trainer.corpus.update._locked``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import config
from bot.queue import get_queue
from bot.webhook import create_app, server
from tests.fixtures.bot import SECRET_ENV, github_headers, github_push, settings_toml
from trainer.corpus.update import _locked, corpus_dir

A, B = "a" * 40, "b" * 40
TOKEN = "status-token-for-tests"
STATUS_VIEWS = ["/", "/status", "/api/status", "/metrics"]


def _settings(tmp_path: Path, redis_url: str, github_url: str, gitlab_url: str | None = None,
              token: str | None = None) -> config.Settings:
    path = tmp_path / "repotune.toml"
    path.write_text(settings_toml(tmp_path / "home", redis_url, github_url, gitlab_url), encoding="utf-8")
    env = dict(SECRET_ENV, **({"REPOTUNE_STATUS_TOKEN": token} if token else {}))
    return config.load(path, env=env)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _push(port: int, delivery: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps(github_push(A, B)).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/webhooks/github", body=body, headers=github_headers("push", body, delivery))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _in_thread(call, timeout_s: float = 15.0) -> Any:
    """Run ``call`` in a thread and insist it returns within ``timeout_s`` (no hang, no sleep)."""
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), f"{call} did not return within {timeout_s} s"
    return result["value"]


@contextlib.contextmanager
def _serving(settings: config.Settings, redis_conn, threads: int = 2) -> Iterator[int]:
    http_server = server(settings, "127.0.0.1", 0, threads, redis=redis_conn).start()
    try:
        yield http_server.port
    finally:
        http_server.stop()


@contextlib.contextmanager
def _every_corpus_lock(settings: config.Settings) -> Iterator[None]:
    """Hold the corpus flock of every configured repository, as a running ingest does."""
    with contextlib.ExitStack() as stack:
        for repo in settings.repos:
            stack.enter_context(_locked(corpus_dir(settings.home, repo.name)))
        yield


def test_status_views_answer_while_an_ingest_holds_every_corpus_lock(tmp_path, redis_url, redis_conn,
                                                                     make_repo) -> None:
    from trainer import corpus

    work = make_repo(files=6, seed=3, name="hello")
    settings = _settings(tmp_path, redis_url, work.url, gitlab_url="file:///nonexistent/web.git")
    built = corpus.update(settings.repo("hello").corpus_spec(), settings.home)
    with _serving(settings, redis_conn) as port, _every_corpus_lock(settings):
        code, body = _in_thread(lambda: _get(port, "/api/status"))
        assert code == 200
        hello = json.loads(body)["repositories"][0]
        assert hello["name"] == "hello" and hello["corpus"]["commit"] == built.commit
        code, page = _in_thread(lambda: _get(port, "/"))
        assert code == 200 and built.commit[:10].encode() in page
        assert _in_thread(lambda: _push(port, "locked-1"))[0] == 202


def test_a_signed_push_is_accepted_while_20_clients_dribble(tmp_path, redis_url, redis_conn) -> None:
    settings = _settings(tmp_path, redis_url, "file:///nonexistent/hello.git")
    with _serving(settings, redis_conn, threads=2) as port:
        dribblers = []
        try:
            for _ in range(20):  # 10x the worker threads, each promising a body it never sends
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
                dribblers.append(sock)
            code, answer = _in_thread(lambda: _push(port, "dribble-1"))
        finally:
            for sock in dribblers:
                sock.close()
    assert code == 202 and answer["status"] == "accepted"
    assert get_queue("ingest", redis_conn).count == 1


def test_status_token_guards_every_view_but_webhooks_and_healthz(tmp_path, redis_url, redis_conn) -> None:
    settings = _settings(tmp_path, redis_url, "file:///nonexistent/hello.git", token=TOKEN)
    assert settings.webhook.status_token == TOKEN
    client = create_app(settings, redis_conn, listen_host="0.0.0.0").test_client()
    for path in [*STATUS_VIEWS, "/runs/20260101-000000-abcd"]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            resp = client.get(path, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for path in STATUS_VIEWS:
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert client.get("/healthz").status_code == 200
    body = json.dumps(github_push(A, B)).encode()
    resp = client.post("/webhooks/github", data=body, headers=github_headers("push", body, "tok-1"))
    assert resp.status_code == 202


def test_status_token_from_a_file(tmp_path, redis_url) -> None:
    secret = tmp_path / "status-token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    path = tmp_path / "repotune.toml"
    path.write_text(settings_toml(tmp_path / "home", redis_url, "file:///x.git"), encoding="utf-8")
    settings = config.load(path, env=dict(SECRET_ENV, REPOTUNE_STATUS_TOKEN_FILE=str(secret)))
    assert settings.webhook.status_token == TOKEN
    assert settings.as_dict()["webhook.status_token"] == "***"


def test_without_a_token_status_views_are_open_only_on_a_loopback_listener(tmp_path, redis_url,
                                                                           redis_conn) -> None:
    settings = _settings(tmp_path, redis_url, "file:///nonexistent/hello.git")
    local = create_app(settings, redis_conn, listen_host="127.0.0.1").test_client()
    for path in STATUS_VIEWS:
        assert local.get(path).status_code == 200, path
    # A loopback listener still refuses a non-local peer (a proxy on another host forwarding to it).
    assert local.get("/api/status", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    exposed = create_app(settings, redis_conn, listen_host="0.0.0.0").test_client()
    for path in STATUS_VIEWS:
        resp = exposed.get(path)
        assert resp.status_code == 403 and "REPOTUNE_STATUS_TOKEN" in resp.json["error"], path
    assert exposed.get("/healthz").status_code == 200
    body = json.dumps(github_push(A, B)).encode()
    assert exposed.post("/webhooks/github", data=body,
                        headers=github_headers("push", body, "open-1")).status_code == 202


def test_anonymous_views_and_error_pages_show_no_paths_or_tracebacks(tmp_path, redis_url, redis_conn) -> None:
    settings = _settings(tmp_path, redis_url, "file:///nonexistent/hello.git",
                         gitlab_url="https://gitlab.example.internal/acme/web.git")
    home = str(settings.home)
    cdir = corpus_dir(settings.home, "hello")  # a corpus error: a summary that is not JSON
    cdir.mkdir(parents=True)
    (cdir / "corpus.json").write_text("{truncated", encoding="utf-8")
    app = create_app(settings, redis_conn)

    @app.get("/boom")  # an internal error whose text names server paths
    def boom() -> str:
        raise OSError(f"cannot read {home}/mirrors/hello.git/objects")

    client = app.test_client()
    answers = {path: client.get(path) for path in ["/", "/status", "/api/status", "/healthz", "/boom",
                                                   "/nowhere", "/runs/no-such-run"]}
    answers["405"] = client.get("/webhooks/github")
    assert answers["/boom"].status_code == 500 and answers["/nowhere"].status_code == 404
    assert answers["405"].status_code == 405
    for path, resp in answers.items():
        text = resp.get_data(as_text=True)
        assert home not in text and str(tmp_path) not in text, path
        assert "Traceback" not in text and "hunter2" not in text and "OSError" not in text, path
    status = answers["/api/status"].json
    assert "home" not in status
    assert all("url" not in repo for repo in status["repositories"])
    assert status["repositories"][0]["corpus_error"].startswith("the corpus summary could not be read")
    assert answers["/boom"].json == {"status": "error", "error": "internal error; the server log has the details"}


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("10.0.0.5", False), ("", False)])
def test_loopback_hosts(host: str, expected: bool) -> None:
    from bot.webhook import _is_loopback

    assert _is_loopback(host) is expected
