"""One snapshot of RepoTune's state, shared by ``/api/status``, ``repotune status``, the chat-ops
``status`` command and the status page.

:func:`snapshot` returns a typed :class:`Status` (a serving part, one part per repository, the
recent runs, the freshness histories — push and editor — and the queue state); :meth:`Status.to_dict` is the one
place it becomes the JSON ``/api/status`` returns, which the status page and chat-ops read too.
:func:`collect` is ``snapshot(...).to_dict()``.

Every part is collected on its own: Redis being down or a corpus not built yet shows up as an
``error`` entry in that part, never as an exception, so the status stays available when it is
needed most.

The snapshot only *reads summaries that are written atomically*: ``corpus/<name>/corpus.json``,
``runs/*/run.json``, the serving pointer ``triton/<model>/serving.json`` and the freshness files
(and the proxy's append-only telemetry files, summarised once per change of their sizes).
It never takes a corpus lock, never runs a corpus recovery, never opens a manifest, never calls
git or Triton, and reads Redis with a short socket timeout (:data:`REDIS_TIMEOUT_S`). So an ingest
holding every corpus lock for minutes, or a hung Redis, cannot make ``/``, ``/api/status`` or the
chat-ops ``status`` reply wait: the webhook keeps answering the forge in time.

:func:`public` is what the HTTP views show: no server paths, no exception text, no clone URLs
(see docs/operations.md, "What the status views show").
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bot import defaults, freshness
from bot import queue as q
from bot import scheduler as sched
from bot.config import RepoConfig, Settings
from bot.runs import RunRecord, list_runs

log = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 1.0
"""Socket timeout (seconds) of the snapshot's Redis reads: a hung Redis costs a status view at
most a few of these, never a worker thread for good."""


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
    """Why ``corpus`` is None, in words fit for any viewer (no paths); left out of :meth:`to_dict`
    when None."""
    retired: tuple[str, ...] = ()
    """Branches whose corpus is retired (deleted branches: kept on disk, not trained on)."""

    def to_dict(self) -> dict[str, t.Any]:
        out = {"name": self.name, "forge": self.forge, "full_name": self.full_name,
               "branch": self.branch, "url": self.url, "corpus": self.corpus,
               "retired": list(self.retired)}
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
class ModelStatus:
    """One model (:mod:`bot.models`): what it learns from, which version serves, its queue state."""

    name: str
    method: str
    repos: list[str]
    serving: ServingStatus
    last_run: str | None = None
    """The newest run of this model (its id), if any."""
    last_run_status: str | None = None
    pending: dict[str, t.Any] = field(default_factory=dict)
    """Changes waiting for this model's next run (empty when Redis is not readable)."""
    training_lock: str | None = None
    """The run id holding this model's training lock, if any."""
    paused: bool = False
    """No automatic runs of this model: paused on its own or with every model."""
    freshness: dict[str, t.Any] = field(default_factory=dict)
    """This model's freshness points per corpus (see :func:`bot.freshness.summary`)."""
    canary: dict[str, t.Any] = field(default_factory=dict)
    """``{"enabled", "running", "last"}`` (:func:`bot.canary.part`): the running canary with the
    figures of the scheduler's last look, and the last decision; or ``{"error": …}``."""

    def to_dict(self) -> dict[str, t.Any]:
        return {"name": self.name, "method": self.method, "repos": list(self.repos),
                "serving": self.serving.to_dict(), "last_run": self.last_run,
                "last_run_status": self.last_run_status, "pending": self.pending,
                "training_lock": self.training_lock, "paused": self.paused, "freshness": self.freshness,
                "canary": self.canary}


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
    editor_freshness: dict[str, t.Any] = field(default_factory=dict)
    """The second curve, from editor use: ``{"store_code", "models"}`` (model name → last points
    of :func:`bot.freshness.editor_summary`) or ``{"error": …}``."""
    acceptance: dict[str, t.Any] = field(default_factory=dict)
    """What editors did with the served completions: ``{"days", "rows"}`` (rows of
    :class:`serving.acceptance.AcceptanceRow` as dicts, newest version first) or ``{"error": …}``."""
    models: list[ModelStatus] = field(default_factory=list)
    """One part per model (one with no ``[[models]]``); ``serving`` is the first one's."""

    def to_dict(self) -> dict[str, t.Any]:
        return {"time": self.time, "home": self.home,
                "repositories": [r.to_dict() for r in self.repositories],
                "serving": self.serving.to_dict(), "runs": [r.as_dict() for r in self.runs],
                "freshness": self.freshness, "editor_freshness": self.editor_freshness,
                "acceptance": self.acceptance, "models": [m.to_dict() for m in self.models],
                **self.queue.to_dict()}


def _safe_url(url: str) -> str:
    """The URL without credentials (a token in a clone URL must never reach a page or log)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def _corpus_summary(settings: Settings, name: str) -> tuple[dict[str, t.Any] | None, str | None]:
    """(``corpus.json``, None) or (None, why). Reads the file the update renames into place, and
    nothing else: no corpus lock, no recovery (``trainer.corpus.stats`` does both, so a status
    view would wait for a running ingest). Exception text stays in the log: it names paths."""
    path = settings.home / "corpus" / name / "corpus.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no completed corpus update yet"
    except (OSError, ValueError) as exc:
        log.warning("status: corpus summary of %s unreadable: %s", name, exc)
        return None, "the corpus summary could not be read (the server log says why)"
    if not isinstance(data, dict):
        log.warning("status: corpus summary of %s is not a JSON object", name)
        return None, "the corpus summary could not be read (the server log says why)"
    return data, None


def _repository(settings: Settings, repo: RepoConfig) -> RepositoryStatus:
    from bot.recipe import retired_branches

    corpus, error = _corpus_summary(settings, repo.name)
    return RepositoryStatus(name=repo.name, forge=repo.forge, full_name=repo.full_name, branch=repo.branch,
                            url=_safe_url(repo.url), corpus=corpus, corpus_error=error,
                            retired=tuple(retired_branches(settings.home, repo)))


def _serving(settings: Settings) -> ServingStatus:
    from bot import serving_version

    root = settings.home / "triton" / settings.serving.model_name
    versions = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) \
        if root.is_dir() else []
    return ServingStatus(model=settings.serving.model_name, backend=settings.serving.backend,
                         triton_url=settings.serving.triton_url,
                         version=serving_version.active_version(settings), versions=versions)


def _model(settings: Settings, spec: t.Any, connection: redis.Redis | None, queue_ok: bool) -> ModelStatus:
    """One model's part; ``settings`` are the full settings. Reads like the rest: summaries only."""
    from bot import models, serving_version

    view = models.settings_for(settings, spec)
    last = serving_version.last_run(view)
    pending: dict[str, t.Any] = {}
    holder = None
    paused = False
    if connection is not None and queue_ok:
        try:
            conn = bounded(connection)
            pending = sched.pending(view, conn)
            holder = sched.lock_holder(conn, spec.name)
            paused = sched.is_paused(conn, spec.name)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("status: Redis unreachable for model %s: %s", spec.name, exc)
    try:
        fresh = freshness.summary(settings.home, freshness.STATUS_POINTS, model=spec.name,
                                  unnamed=settings.serving.model_name)
    except Exception as exc:  # as _freshness: never take the status down
        log.warning("status: freshness history of %s unreadable: %s", spec.name, exc)
        fresh = {"error": "the freshness history could not be read (the server log says why)"}
    return ModelStatus(name=spec.name, method=spec.method, repos=[r.name for r in view.repos],
                       serving=_serving(view), last_run=last.id if last else None,
                       last_run_status=last.status.value if last else None, pending=pending,
                       training_lock=holder, paused=paused, freshness=fresh, canary=_canary(view))


def _canary(view: Settings) -> dict[str, t.Any]:
    from bot import canary

    try:
        return canary.part(view)
    except Exception as exc:  # as _freshness: never take the status down
        log.warning("status: canary of %s unreadable: %s", view.serving.model_name, exc)
        return {"error": "the canary state could not be read (the server log says why)"}


def _freshness(settings: Settings) -> dict[str, t.Any]:
    try:
        return freshness.summary(settings.home, freshness.STATUS_POINTS)
    except Exception as exc:  # an unreadable history must not take the status down
        log.warning("status: freshness history unreadable: %s", exc)
        return {"error": "the freshness history could not be read (the server log says why)"}


def _editor_freshness(settings: Settings) -> dict[str, t.Any]:
    try:
        return {"store_code": bool(settings.serving.store_code),
                "models": freshness.editor_summary(settings.home, freshness.STATUS_POINTS)}
    except Exception as exc:  # an unreadable history must not take the status down
        log.warning("status: editor freshness history unreadable: %s", exc)
        return {"error": "the editor-task history could not be read (the server log says why)"}


ACCEPTANCE_DAYS = 7
"""Days of telemetry the status summarises (the acceptance of what serves now, not of last year)."""

_acceptance_cache: dict[str, t.Any] = {}
_acceptance_lock = threading.Lock()


def telemetry_dir(settings: Settings) -> Path:
    """Where the proxy records completions and events (``serving.events_dir``, else ``<home>/telemetry``)."""
    from bot.proxy_settings import telemetry_folder

    return telemetry_folder(settings)


def _acceptance(settings: Settings, days: int = ACCEPTANCE_DAYS) -> dict[str, t.Any]:
    """Acceptance per version and language over the last ``days`` of telemetry.

    The telemetry files are append-only, not summaries, so the result is cached per set of
    (file, size, mtime): a status view re-reads them only after the proxy wrote more."""
    try:
        from serving.acceptance import summarize
        from serving.telemetry import COMPLETIONS, EVENTS, telemetry_files

        folder = telemetry_dir(settings)
        since = time.time() - days * 86400
        files = telemetry_files(folder, COMPLETIONS, since) + telemetry_files(folder, EVENTS, since)
        key = repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files] + [str(folder), days])
        with _acceptance_lock:
            if _acceptance_cache.get("key") != key:
                rows = [r.as_dict() for r in summarize(folder, days=days)]
                _acceptance_cache.clear()
                _acceptance_cache.update(key=key, rows=rows)
            return {"days": days, "rows": list(_acceptance_cache["rows"])}
    except Exception as exc:  # unreadable telemetry must not take the status down
        log.warning("status: completion telemetry unreadable: %s", exc)
        return {"error": "the completion telemetry could not be read (the server log says why)"}


def bounded(connection: redis.Redis, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """``connection`` itself when its socket timeout is at most ``timeout_s``, else a client for
    the same server with that timeout (the webhook builds one once; a CLI call builds its own)."""
    pool = connection.connection_pool
    kwargs = dict(pool.connection_kwargs)
    current = kwargs.get("socket_timeout")
    if current is not None and current <= timeout_s:
        return connection
    kwargs["socket_timeout"] = timeout_s
    if "host" in kwargs:  # TCP; a unix socket has no separate connect timeout
        kwargs["socket_connect_timeout"] = timeout_s
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _queue(settings: Settings, connection: redis.Redis | None) -> QueueStatus:
    if connection is None:
        return QueueStatus(ok=False, error="no Redis configured")
    connection = bounded(connection)
    try:
        return QueueStatus(ok=True, queues=q.queue_lengths(connection), paused=sched.is_paused(connection),
                           pending=sched.pending(settings, connection),
                           training_lock=sched.lock_holder(connection, settings.serving.model_name))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("status: Redis unreachable: %s", exc)
        return QueueStatus(ok=False, error="Redis is unreachable (the server log says why)")


def snapshot(settings: Settings, connection: redis.Redis | None,
             limit: int = defaults.RECENT_RUNS, model: str | None = None) -> Status:
    """Repositories with corpus stats, serving version and versions, the ``limit`` most recent
    runs, the freshness history per corpus (last points), queue lengths, pending changes, the
    training lock, the paused flag, the acceptance of served completions per version, and a
    part per model. With ``model``, everything is that model's: its repositories, its runs, its
    serving version, its freshness points."""
    from bot import models

    specs = models.model_specs(settings) if model is None else [models.get_model(settings, model)]
    first = models.settings_for(settings, specs[0])
    scoped = first if model is not None else settings
    queue = _queue(first, connection)
    runs = list_runs(settings.home, None if model is not None else limit)
    if model is not None:
        runs = [r for r in runs if (r.model or settings.serving.model_name) == model][:limit]
    fresh = _freshness(settings) if model is None else \
        freshness.summary(settings.home, freshness.STATUS_POINTS, model=model, unnamed=settings.serving.model_name)
    return Status(time=time.time(), home=str(settings.home),
                  repositories=[_repository(settings, repo) for repo in scoped.repos],
                  serving=_serving(first), runs=runs, freshness=fresh,
                  editor_freshness=_editor_freshness(settings), queue=queue,
                  acceptance=_acceptance(settings),
                  models=[_model(settings, spec, connection, queue.ok) for spec in specs])


def collect(settings: Settings, connection: redis.Redis | None,
            limit: int = defaults.RECENT_RUNS, model: str | None = None) -> dict[str, t.Any]:
    """:func:`snapshot` as the ``/api/status`` JSON (the webhook and chat-ops read this)."""
    return snapshot(settings, connection, limit, model).to_dict()


# --- the public form -----------------------------------------------------------------------

_RUN_PATH_FIELDS = ("checkpoint", "artifact", "eval_report")
"""Run fields that are server paths: the HTTP views leave them out (``has_report`` says enough)."""

_ABS_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.@+-]+/)*[\w.@+-]+/?")
"""An absolute filesystem path in free text (not the path part of a URL: that follows ``host``)."""


def scrub(text: t.Any) -> t.Any:
    """Free text safe for an anonymous viewer: a traceback reduced to its last line, absolute
    paths replaced by ``<path>``. Anything but a string passes through."""
    if not isinstance(text, str):
        return text
    if "Traceback (most recent call last)" in text:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    return _ABS_PATH.sub("<path>", text)


def public_run(run: dict[str, t.Any]) -> dict[str, t.Any]:
    """A ``run.json`` dict as the HTTP views show it: no path fields, scrubbed error and notes."""
    out = {k: v for k, v in run.items() if k not in _RUN_PATH_FIELDS}
    out["error"] = scrub(run.get("error"))
    out["history"] = [[h[0], h[1], scrub(h[2]) if len(h) > 2 else ""] for h in run.get("history") or []]
    return out


def public(data: dict[str, t.Any]) -> dict[str, t.Any]:
    """:meth:`Status.to_dict` as ``/api/status`` and the status page show it: without ``home``,
    clone URLs and run paths; error texts scrubbed (they are already generic at the source)."""
    out = {k: v for k, v in data.items() if k != "home"}
    out["repositories"] = [{k: v for k, v in r.items() if k != "url"} for r in data.get("repositories", [])]
    out["runs"] = [public_run(r) for r in data.get("runs", [])]
    out["freshness"] = _public_freshness(data.get("freshness") or {})
    out["models"] = [dict(m, freshness=_public_freshness(m.get("freshness") or {}),
                          canary=public_canary(m.get("canary") or {})) for m in data.get("models") or []]
    editor = data.get("editor_freshness") or {}
    if "models" in editor:
        editor = {**editor, "models": {name: [dict(p, error=scrub(p.get("error")), skipped=scrub(p.get("skipped")))
                                              for p in points] for name, points in editor["models"].items()}}
    out["editor_freshness"] = editor
    return out


def public_canary(part: dict[str, t.Any]) -> dict[str, t.Any]:
    """A model's canary part as the HTTP views show it: reasons and figures scrubbed, and not
    who acted by hand (a chat-ops ``by`` names a merge request of some repository)."""
    out = dict(part)
    for key in ("running", "last"):
        entry = part.get(key)
        if isinstance(entry, dict):
            entry = {k: scrub(v) for k, v in entry.items() if k != "by"}
            if isinstance(entry.get("decision"), dict):
                entry["decision"] = {k: scrub(v) for k, v in entry["decision"].items()}
            out[key] = entry
    return out


def _public_freshness(fresh: dict[str, t.Any]) -> dict[str, t.Any]:
    return {name: [dict(p, error=scrub(p.get("error"))) for p in points]
            if isinstance(points, list) else scrub(points) for name, points in fresh.items()}
