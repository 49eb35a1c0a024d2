"""One snapshot of RepoTune's state, shared by ``/api/status``, ``repotune status``, the chat-ops
``status`` command and the status page.

Every part is collected on its own: Redis being down or a corpus not built yet shows up as an
``error`` entry in that part, never as an exception, so the status stays available when it is
needed most.
"""

from __future__ import annotations

import contextlib
import time
import typing as t

import redis

from bot import defaults, freshness
from bot import queue as q
from bot import scheduler as sched
from bot.config import Settings
from bot.runs import list_runs


def _repositories(settings: Settings) -> list[dict[str, t.Any]]:
    out = []
    for repo in settings.repos:
        entry: dict[str, t.Any] = {"name": repo.name, "forge": repo.forge, "full_name": repo.full_name,
                                   "branch": repo.branch, "url": _safe_url(repo.url), "corpus": None}
        try:
            from trainer import corpus

            entry["corpus"] = corpus.stats(settings.home, repo.name)
        except Exception as exc:  # not built yet, or the corpus package is missing
            entry["corpus_error"] = f"{type(exc).__name__}: {exc}"
        out.append(entry)
    return out


def _safe_url(url: str) -> str:
    """The URL without credentials (a token in a clone URL must never reach a page or log)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def _serving(settings: Settings) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {"model": settings.serving.model_name, "backend": settings.serving.backend,
                             "triton_url": settings.serving.triton_url, "version": None, "versions": []}
    root = settings.home / "triton" / settings.serving.model_name
    out["versions"] = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) \
        if root.is_dir() else []
    pointer = root / "serving.json"
    if pointer.is_file():
        import json

        with contextlib.suppress(ValueError, OSError):
            data = json.loads(pointer.read_text(encoding="utf-8"))
            out["version"] = data.get("version") if isinstance(data, dict) else data
    return out


def _freshness(settings: Settings) -> dict[str, t.Any]:
    try:
        return freshness.summary(settings.home, freshness.STATUS_POINTS)
    except Exception as exc:  # an unreadable history must not take the status down
        return {"error": f"{type(exc).__name__}: {exc}"}


def collect(settings: Settings, connection: redis.Redis | None,
            limit: int = defaults.RECENT_RUNS) -> dict[str, t.Any]:
    """Repositories with corpus stats, serving version and versions, recent runs, the freshness
    history per corpus (last points), queue lengths, pending changes, the training lock and the
    paused flag."""
    status: dict[str, t.Any] = {"time": time.time(), "home": str(settings.home),
                                "repositories": _repositories(settings), "serving": _serving(settings),
                                "runs": [r.as_dict() for r in list_runs(settings.home, limit)],
                                "freshness": _freshness(settings)}
    if connection is None:
        status["redis"] = {"ok": False, "error": "no Redis configured"}
        return status
    try:
        status["queues"] = q.queue_lengths(connection)
        status["paused"] = sched.is_paused(connection)
        status["pending"] = sched.pending(settings, connection)
        status["training_lock"] = sched.lock_holder(connection, settings.serving.model_name)
        status["redis"] = {"ok": True}
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        status["redis"] = {"ok": False, "error": f"Redis is unreachable: {exc}"}
    return status
