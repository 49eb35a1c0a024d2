"""The demo's client side: what a forge and an editor do against a running ``repotune up``.

:func:`run_demo` pushes generated code to the demo repository, delivers the signed GitHub push
the forge would send, follows the run it triggers (:func:`wait_for_run`) and asks the proxy for
a completion (:func:`complete`), as an editor would. The server side (the demo repository, its
settings, the base model) is :mod:`bot.demo`.

With ``canary`` (``repotune demo --canary``, and ``[canary] enabled`` in the demo's config) the
run stops in ``canary`` instead of serving; :func:`drive_canary` then plays many editors (one
API key each) whose acceptance rate is known per version (:data:`CANARY_RATES`: the candidate's
higher), until the scheduler's acceptance test decides (docs/canary.md).
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

CANARY_RATES = (0.35, 0.8)
"""The scripted editors' acceptance rate of (production, canary) completions: the candidate is
clearly better, so the test promotes it after a look or two."""


def wait_for_run(home: Path, commit: str, *, timeout: float = 900.0,
                 on_status: Callable[[str, str, float], None] | None = None,
                 poll: float = 0.5, until: t.Collection[str] = FINAL) -> t.Any:
    """Follow the run a push of ``commit`` triggered until its status is in ``until`` (default:
    it ended); returns its RunRecord."""
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
                if status in until:
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


def drive_canary(completions_url: str, canary_version: int, *, keys: int = 40, rounds: int = 1,
                 rates: tuple[float, float] = CANARY_RATES, seed: int = 0) -> dict[int, list[int]]:
    """Editors at work during a canary: ``rounds`` completions from each of ``keys`` API keys
    (routing is sticky per key), each followed by feedback, accepted with the rate of the version
    that answered (``rates`` = production's, the canary's). Returns {version: [shown, accepted]}."""
    import random

    rng = random.Random(seed)
    counts: dict[int, list[int]] = {}
    for _ in range(rounds):
        for k in range(keys):
            auth = {"Authorization": f"Bearer demo-editor-{k:03d}"}
            answer, headers = _post(completions_url, {"prompt": DEMO_PREFIX, "max_tokens": 8, "temperature": 0},
                                    auth)
            version = int(headers.get("x-repotune-model-version") or 0)
            accepted = rng.random() < rates[1 if version == canary_version else 0]
            _post(f"{completions_url.rstrip('/')}/{answer['id']}/feedback", {"accepted": accepted}, auth)
            tally = counts.setdefault(version, [0, 0])
            tally[0] += 1
            tally[1] += int(accepted)
    return counts


def _post(url: str, fields: dict[str, t.Any], headers: dict[str, str]) -> tuple[dict[str, t.Any], t.Any]:
    request = urllib.request.Request(url, data=json.dumps(fields).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}"), response.headers


def follow_canary(home: Path, run: t.Any, completions_url: str, *, echo: Callable[[str], None] = print,
                  timeout: float = 900.0) -> t.Any:
    """Drive editors at the canary of ``run`` until the scheduler decides it; the settled run."""
    from bot.runs import load_run

    share = float((run.metrics.get("canary") or {}).get("share") or 0)
    echo(f"version {run.version} is a canary for {share:.0%} of clients; editors accept "
         f"{CANARY_RATES[1]:.0%} of its completions and {CANARY_RATES[0]:.0%} of production's")
    started, total, rounds = time.monotonic(), {}, 0
    while run.status.value == "canary":
        if time.monotonic() - started > timeout:
            raise BotError(f"the canary of run {run.id} was not decided within {timeout:.0f}s; "
                           "`repotune canary status` shows its figures")
        for version, (shown, accepted) in drive_canary(completions_url, run.version,
                                                       seed=rounds).items():
            tally = total.setdefault(version, [0, 0])
            tally[0], tally[1] = tally[0] + shown, tally[1] + accepted
        rounds += 1
        echo("  editors so far: " + ", ".join(f"version {v} {a}/{s} accepted" for v, (s, a) in sorted(total.items())))
        run = load_run(home, run.id)
    canary = run.metrics.get("canary") or {}
    echo(f"canary decided: {(canary.get('decision') or {}).get('reason')}; {canary.get('summary')}")
    return run


def run_demo(home: Path, webhook_url: str, completions_url: str, *, files: int = 30, seed: int | None = None,
             echo: Callable[[str], None] = print, timeout: float = 900.0, family: str | None = None,
             canary: bool = False) -> t.Any:
    """push → ingest → train → evaluate → promote → serve, printing each stage with its time.

    ``family`` (the demo's ``[training] family``) decides the closing request: a FIM family's
    sends the code after the cursor as ``suffix``, as an editor does. ``canary``: the run
    publishes a canary, which scripted editors drive to a decision (:func:`follow_canary`)."""
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

    run = wait_for_run(home, after, timeout=timeout, on_status=show,
                       until=FINAL | {"canary"} if canary else FINAL)
    if run.status.value == "canary":
        run = follow_canary(home, run, completions_url, echo=echo, timeout=timeout)
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
