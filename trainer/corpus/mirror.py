"""Bare mirrors: clone or fetch a repository into ``mirrors/<name>.git`` (never checked out).

A token travels only in the environment of the git child (``GIT_CONFIG_*`` -> an
``http.extraHeader``), never on a command line, in the mirror's config, or in a message. A URL
that carries ``user:password@`` itself (the bot refuses those in its settings; a library caller
may still pass one) is cut in two the same way: git sees the bare URL, the credentials go into
that header, so neither the mirror's ``remote.origin.url`` nor the manifest holds them.
``file://`` URLs and local paths work the same way as HTTPS.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

from durable import fsync_dir
from trainer.errors import RepositoryError

_CRED = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s]*@", re.IGNORECASE)
"""``scheme://`` then the userinfo up to the LAST ``@`` before the path: a password may contain
``@`` itself (``https://u:p@ss@host``), and stopping at the first would leave ``ss`` showing."""


def redact_url(text: str) -> str:
    """Hide ``user:password@`` in URLs inside ``text`` (up to the last ``@`` before the host's path)."""
    return _CRED.sub(r"\1***@", text)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and that (user, password) pair (None if absent).

    Uses the last ``@`` before the path, so a password containing ``@`` stays whole."""
    match = re.match(r"^([a-z][a-z0-9+.-]*://)([^/\s]*)@(.*)$", url, re.IGNORECASE | re.DOTALL)
    if not match:
        return url, None
    from urllib.parse import unquote

    user, sep, password = match.group(2).partition(":")
    if not sep:  # https://TOKEN@host: forges take a lone token as the user name
        user, password = "x-access-token", user
    return match.group(1) + match.group(3), (unquote(user), unquote(password))


def name_from_url(url: str) -> str:
    """A corpus name from a clone URL or path: ``owner/repo`` for remote URLs, else ``repo``."""
    trimmed = url.rstrip("/")
    trimmed = trimmed[:-4] if trimmed.endswith(".git") else trimmed
    is_remote = re.match(r"^[a-z+]+://", trimmed) and not trimmed.startswith("file://")
    scp = re.match(r"^[\w.-]+@[\w.-]+:(.+)$", trimmed)
    if scp:
        trimmed = "host:" + scp.group(1)
        is_remote = True
    parts = [p for p in re.split(r"[/:]", trimmed) if p]
    if is_remote and len(parts) >= 3:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1] if parts else "repo"


def _git_env(token: str | None, user: str = "x-access-token") -> dict[str, str]:
    """The git child's environment: no prompts, and the token as an ``Authorization`` header
    given through ``GIT_CONFIG_*`` (config that lives only in this process's environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/true", LC_ALL="C")
    if token:
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
    return env


def git(git_dir: Path, *args: str, token: str | None = None, check: bool = True,
        input: bytes | None = None) -> bytes:
    """Run ``git --git-dir=<git_dir> args`` and return stdout; RepositoryError on failure."""
    cmd = ["git", f"--git-dir={git_dir}", *args]
    done = subprocess.run(cmd, input=input, capture_output=True, env=_git_env(token))
    if check and done.returncode != 0:
        err = redact_url(done.stderr.decode("utf-8", "replace").strip())
        raise RepositoryError(f"git {' '.join(args[:2])} failed in {git_dir}: {err}")
    return done.stdout


def _source(url: str) -> str:
    if re.match(r"^[a-z+]+://", url) or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    path = Path(url).expanduser()
    if not path.exists():
        raise RepositoryError(f"{url!r} is neither a URL nor an existing path; "
                              "give a clone URL (https://, file://, ssh) or a local repository path")
    return str(path.resolve())


def sync(url: str, mirror: Path, token: str | None = None) -> Path:
    """Create the bare mirror if missing, then fetch every branch and tag (pruning deleted ones).

    ``token`` (or credentials inside ``url``, see :func:`split_credentials`) reach git only as
    an ``http.extraHeader`` in its environment; ``token`` wins over credentials in the URL."""
    source, creds = split_credentials(_source(url))
    user = "x-access-token"
    if creds is not None and not token:
        user, token = creds
    env = _git_env(token, user)
    if not (mirror / "HEAD").exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        tmp = mirror.with_name(mirror.name + ".cloning")
        if tmp.exists():
            subprocess.run(["rm", "-rf", "--", str(tmp)], check=False)
        done = subprocess.run(["git", "clone", "--bare", "--quiet", "--", source, str(tmp)],
                              capture_output=True, env=env)
        if done.returncode != 0:
            err = redact_url(done.stderr.decode("utf-8", "replace").strip())
            raise RepositoryError(f"cannot clone {redact_url(url)}: {err}. Check the URL, that the "
                                  "remote is reachable, and the token if the repository is private.")
        git(tmp, "config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
        os.replace(tmp, mirror)  # a whole folder: durable.write_atomic is for files
        fsync_dir(mirror.parent)
        return mirror
    # Fetch from the URL with origin's refspec (not `remote set-url` + `fetch origin`): one git
    # process less per update, and a changed URL needs no config edit.
    done = subprocess.run(["git", f"--git-dir={mirror}", "fetch", "--quiet", "--prune", "--tags",
                           source, "+refs/heads/*:refs/heads/*"], capture_output=True, env=env)
    if done.returncode != 0:
        err = redact_url(done.stderr.decode("utf-8", "replace").strip())
        raise RepositoryError(f"cannot fetch {redact_url(url)} into {mirror}: {err}. The remote may be "
                              "unreachable; the corpus was not changed.")
    return mirror


def resolve(mirror: Path, rev: str | None, branch: str | None) -> str:
    """The commit id of ``rev`` (or the tracked branch's head; None = the remote's default)."""
    if rev is None:
        if branch is None:
            rev = git(mirror, "symbolic-ref", "HEAD").decode().strip()
        else:
            rev = f"refs/heads/{branch}"
    done = subprocess.run(["git", f"--git-dir={mirror}", "rev-parse", "--verify", "--quiet",
                           f"{rev}^{{commit}}"], capture_output=True, env=_git_env(None))
    if done.returncode != 0:
        branches = git(mirror, "for-each-ref", "--format=%(refname:short)", "refs/heads").decode().split()
        raise RepositoryError(f"unknown revision {rev!r} in {mirror.name}; branches: "
                              f"{', '.join(branches) or '(none)'}. Pass an existing branch, tag or commit.")
    return done.stdout.decode().strip()


def has_commit(mirror: Path, sha: str) -> bool:
    """Whether the commit object is still in the mirror (a force push + gc may drop it)."""
    done = subprocess.run(["git", f"--git-dir={mirror}", "cat-file", "-e", f"{sha}^{{commit}}"],
                          capture_output=True, env=_git_env(None))
    return done.returncode == 0
