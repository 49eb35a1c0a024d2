"""The demo's client side: what a forge and an editor do against a running ``repotune up``.

:func:`run_demo` pushes generated code to the demo repository, delivers the signed GitHub push
the forge would send, follows the run it triggers (:func:`wait_for_run`) and asks the proxy for
a completion (:func:`complete`), as an editor would. The server side (the demo repository, its
settings, the base model) is :mod:`bot.demo`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import typing as t
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from bot.demo import DEMO_FULL_NAME, DemoPaths, add_code, commit_and_push, run_git
from bot.errors import BotError


def github_push_payload(full_name: str, clone_url: str, before: str, after: str,
                        pusher: str = "demo", branch: str = "main") -> dict[str, t.Any]:
    """A GitHub ``push`` delivery body with the fields GitHub sends (trimmed to what matters)."""
    owner, _, name = full_name.partition("/")
    return {
        "ref": f"refs/heads/{branch}", "before": before, "after": after,
        "created": False, "deleted": False, "forced": False,
        "repository": {"name": name, "full_name": full_name, "owner": {"login": owner, "name": owner},
                       "clone_url": clone_url, "default_branch": branch, "private": True},
        "pusher": {"name": pusher, "email": f"{pusher}@example.invalid"},
        "sender": {"login": pusher},
        "commits": [{"id": after, "message": "demo change", "distinct": True}],
        "head_commit": {"id": after, "message": "demo change"},
    }


def deliver_github(url: str, secret: str, event: str, payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """POST one signed GitHub delivery; returns the JSON answer (raises BotError on non-2xx)."""
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature,
        "User-Agent": "GitHub-Hookshot/repotune-demo"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise BotError(f"webhook answered {exc.code}: {exc.read().decode(errors='replace')}") from exc


FINAL = {"serving", "rejected", "failed", "canceled"}


def wait_for_run(home: Path, commit: str, *, timeout: float = 900.0,
                 on_status: Callable[[str, str, float], None] | None = None,
                 poll: float = 0.5) -> t.Any:
    """Follow the run a push of ``commit`` triggered until it ends; returns its RunRecord."""
    from bot.runs import list_runs

    started = time.monotonic()
    seen: str | None = None
    run_id: str | None = None
    while time.monotonic() - started < timeout:
        for run in list_runs(home, limit=20):
            pushes = run.trigger.pushes or []
            commits = {run.trigger.commit} | {p.get("after") for p in pushes if isinstance(p, dict)}
            if run_id == run.id or commit in commits:
                run_id = run.id
                status = run.status.value
                if status != seen:
                    seen = status
                    if on_status:
                        on_status(run.id, status, time.monotonic() - started)
                if status in FINAL:
                    return run
                break
        time.sleep(poll)  # polling a file-backed record; there is no event to wait on
    raise BotError(f"no run for {commit[:12]} finished within {timeout:.0f}s "
                   f"(last status: {seen or 'no run yet'}); see `repotune runs` and the logs")


DEMO_PREFIX = "def load_invoice_customer(client: AcmeClient, invoice_id: int) -> dict:\n"
"""The code before the cursor in the demo's closing editor request."""
DEMO_SUFFIX = "\n    return customer\n"
"""The code after the cursor, sent as ``suffix`` when the demo's family fills in the middle."""


def complete(completions_url: str, prompt: str, max_tokens: int = 24, suffix: str | None = None) -> dict[str, t.Any]:
    """One completion through the proxy (the endpoint editors call); ``suffix`` asks for the middle."""
    fields: dict[str, t.Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stop": ["\n\n"]}
    if suffix is not None:
        fields["suffix"] = suffix
    body = json.dumps(fields).encode()
    request = urllib.request.Request(completions_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def run_demo(home: Path, webhook_url: str, completions_url: str, *, files: int = 30, seed: int | None = None,
             echo: Callable[[str], None] = print, timeout: float = 900.0, family: str | None = None) -> t.Any:
    """push → ingest → train → evaluate → promote → serve, printing each stage with its time.

    ``family`` (the demo's ``[training] family``) decides the closing request: a FIM family's
    sends the code after the cursor as ``suffix``, as an editor does."""
    paths = DemoPaths(home)
    if not paths.bare.exists():
        raise BotError(f"no demo repository under {paths.root}: start `repotune up` first (no config)")
    secret = paths.secret.read_text().strip()
    before = run_git(paths.work, "rev-parse", "HEAD")
    seed = seed if seed is not None else int(time.time()) % 100_000
    added = add_code(paths, files, seed)
    after = commit_and_push(paths, f"Add {len(added)} files of internal code")
    echo(f"pushed {after[:12]}: {len(added)} new files")
    answer = deliver_github(webhook_url, secret, "push",
                            github_push_payload(DEMO_FULL_NAME, paths.bare.as_uri(), before, after))
    echo(f"webhook accepted: {json.dumps(answer)}")
    last = [0.0]

    def show(run_id: str, status: str, elapsed: float) -> None:
        echo(f"  [{elapsed:7.1f}s] run {run_id}: {status} (+{elapsed - last[0]:.1f}s)")
        last[0] = elapsed

    run = wait_for_run(home, after, timeout=timeout, on_status=show)
    if run.status.value == "serving":
        echo(f"version {run.version} is serving")
    else:
        echo(f"run ended {run.status.value}: {run.error or ''}")
    from families import get_family

    if family and get_family(family).has_fim:
        answer = complete(completions_url, DEMO_PREFIX, suffix=DEMO_SUFFIX)
        echo(f"fill-in-the-middle from {answer.get('model')} ({family}): "
             f"{DEMO_PREFIX}[{answer['choices'][0]['text']}]{DEMO_SUFFIX}")
    else:
        answer = complete(completions_url, DEMO_PREFIX)
        echo(f"completion from {answer.get('model')}: {DEMO_PREFIX}{answer['choices'][0]['text']}")
    return run
