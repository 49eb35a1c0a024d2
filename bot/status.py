"""One snapshot of RepoTune's state, shared by ``/api/status``, ``repotune status``, the chat-ops
``status`` command and the status page.

:func:`snapshot` returns a typed :class:`Status` (a serving part, one part per repository, the
recent runs, the freshness history and the queue state); :meth:`Status.to_dict` is the one
place it becomes the JSON ``/api/status`` returns, which the status page and chat-ops read too.
:func:`collect` is ``snapshot(...).to_dict()``.

Every part is collected on its own: Redis being down or a corpus not built yet shows up as an
``error`` entry in that part, never as an exception, so the status stays available when it is
needed most.
"""

from __future__ import annotations

import contextlib
import json
import time
import typing as t
from dataclasses import dataclass, field

import redis

from bot import defaults, freshness
from bot import queue as q
from bot import scheduler as sched
from bot.config import RepoConfig, Settings
from bot.runs import RunRecord, list_runs


@dataclass(frozen=True)
class RepositoryStatus:
    """A configured repository and its corpus summary."""

    name: str
    forge: str
    full_name: str
    branch: str | None
    url: str
    """The clone URL without credentials."""
    corpus: dict[str, t.Any] | None = None
    """``corpus.json`` (see ``trainer.corpus.stats``); None until the first build completes."""
    corpus_error: str | None = None
    """Why ``corpus`` is None (``CorpusError: …``); left out of :meth:`to_dict` when None."""

    def to_dict(self) -> dict[str, t.Any]:
        out = {"name": self.name, "forge": self.forge, "full_name": self.full_name,
               "branch": self.branch, "url": self.url, "corpus": self.corpus}
        if self.corpus_error is not None:
            out["corpus_error"] = self.corpus_error
        return out


@dataclass(frozen=True)
class ServingStatus:
    """The Triton model: which version serves, which versions are published."""

    model: str
    backend: str
    triton_url: str | None
    version: int | None
    """The version ``serving.json`` names; None before the first publish."""
    versions: list[int] = field(default_factory=list)
    """Published version numbers, ascending."""

    def to_dict(self) -> dict[str, t.Any]:
        return {"model": self.model, "backend": self.backend, "triton_url": self.triton_url,
                "version": self.version, "versions": list(self.versions)}


@dataclass(frozen=True)
class QueueStatus:
    """What Redis knows: queue lengths, the pause flag, pending changes, the training lock."""

    ok: bool
    error: str | None = None
    """Why the rest is unknown (no Redis configured, or unreachable)."""
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    paused: bool = False
    pending: dict[str, t.Any] = field(default_factory=dict)
    training_lock: str | None = None
    """The run id holding the model's training lock, if any."""

    def to_dict(self) -> dict[str, t.Any]:
        """The top-level keys of ``/api/status`` this part supplies (only ``redis`` when not ok)."""
        if not self.ok:
            return {"redis": {"ok": False, "error": self.error}}
        return {"queues": self.queues, "paused": self.paused, "pending": self.pending,
                "training_lock": self.training_lock, "redis": {"ok": True}}


@dataclass(frozen=True)
class Status:
    """The whole snapshot; :meth:`to_dict` is what ``/api/status`` returns."""

    time: float
    """Unix time of the snapshot."""
    home: str
    repositories: list[RepositoryStatus]
    serving: ServingStatus
    runs: list[RunRecord]
    """Recent runs, newest first."""
    freshness: dict[str, t.Any]
    """Corpus name → last history points (see :func:`bot.freshness.summary`), or ``{"error": …}``."""
    queue: QueueStatus

    def to_dict(self) -> dict[str, t.Any]:
        return {"time": self.time, "home": self.home,
                "repositories": [r.to_dict() for r in self.repositories],
                "serving": self.serving.to_dict(), "runs": [r.as_dict() for r in self.runs],
                "freshness": self.freshness, **self.queue.to_dict()}


def _safe_url(url: str) -> str:
    """The URL without credentials (a token in a clone URL must never reach a page or log)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def _repository(settings: Settings, repo: RepoConfig) -> RepositoryStatus:
    corpus, error = None, None
    try:
        from trainer import corpus as corpus_api

        corpus = corpus_api.stats(settings.home, repo.name)
    except Exception as exc:  # not built yet, or the corpus package is missing
        error = f"{type(exc).__name__}: {exc}"
    return RepositoryStatus(name=repo.name, forge=repo.forge, full_name=repo.full_name, branch=repo.branch,
                            url=_safe_url(repo.url), corpus=corpus, corpus_error=error)


def _serving(settings: Settings) -> ServingStatus:
    root = settings.home / "triton" / settings.serving.model_name
    versions = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) \
        if root.is_dir() else []
    version = None
    pointer = root / "serving.json"
    if pointer.is_file():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(pointer.read_text(encoding="utf-8"))
            version = data.get("version") if isinstance(data, dict) else data
    return ServingStatus(model=settings.serving.model_name, backend=settings.serving.backend,
                         triton_url=settings.serving.triton_url, version=version, versions=versions)


def _freshness(settings: Settings) -> dict[str, t.Any]:
    try:
        return freshness.summary(settings.home, freshness.STATUS_POINTS)
    except Exception as exc:  # an unreadable history must not take the status down
        return {"error": f"{type(exc).__name__}: {exc}"}


def _queue(settings: Settings, connection: redis.Redis | None) -> QueueStatus:
    if connection is None:
        return QueueStatus(ok=False, error="no Redis configured")
    try:
        return QueueStatus(ok=True, queues=q.queue_lengths(connection), paused=sched.is_paused(connection),
                           pending=sched.pending(settings, connection),
                           training_lock=sched.lock_holder(connection, settings.serving.model_name))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return QueueStatus(ok=False, error=f"Redis is unreachable: {exc}")


def snapshot(settings: Settings, connection: redis.Redis | None,
             limit: int = defaults.RECENT_RUNS) -> Status:
    """Repositories with corpus stats, serving version and versions, the ``limit`` most recent
    runs, the freshness history per corpus (last points), queue lengths, pending changes, the
    training lock and the paused flag."""
    return Status(time=time.time(), home=str(settings.home),
                  repositories=[_repository(settings, repo) for repo in settings.repos],
                  serving=_serving(settings), runs=list_runs(settings.home, limit),
                  freshness=_freshness(settings), queue=_queue(settings, connection))


def collect(settings: Settings, connection: redis.Redis | None,
            limit: int = defaults.RECENT_RUNS) -> dict[str, t.Any]:
    """:func:`snapshot` as the ``/api/status`` JSON (the webhook and chat-ops read this)."""
    return snapshot(settings, connection, limit).to_dict()
