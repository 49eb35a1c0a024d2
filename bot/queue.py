"""Redis and RQ plumbing: connections, the four queues, key names, and the all-or-nothing
"remember this delivery and enqueue its jobs" transaction the webhook relies on.

Queues: ``ingest`` (CPU: corpus updates), ``gpu`` (training, evaluation, conversion), ``deploy``
(publish, activate, roll back), ``control`` (chat-ops commands and scheduler/reconcile ticks).
"""

from __future__ import annotations

import json
import os
import socket
import typing as t
from dataclasses import dataclass, field

import redis
from rq import Queue, Retry
from rq.job import Job

from bot import defaults
from bot.errors import QueueUnavailable

QUEUES = defaults.QUEUES

PREFIX = "repotune:"


def key(*parts: str) -> str:
    """A RepoTune Redis key: ``repotune:<part>:<part>…``."""
    return PREFIX + ":".join(parts)


def delivery_key(forge: str, delivery_id: str) -> str:
    return key("delivery", forge, delivery_id)


def connect(url: str, *, timeout: float = 2.0) -> redis.Redis:
    """A Redis client for ``url`` with short timeouts, so an outage is an error, not a hang."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                health_check_interval=30)


def get_queue(name: str, connection: redis.Redis) -> Queue:
    """The RQ queue ``name`` (one of :data:`QUEUES`)."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; queues are {', '.join(QUEUES)}")
    return Queue(name, connection=connection)


def ingest_retry() -> Retry:
    """Retry policy of ingest jobs: back-off intervals from :mod:`bot.defaults`."""
    intervals = list(defaults.INGEST_RETRY_INTERVALS_SECONDS)
    return Retry(max=len(intervals), interval=intervals)


@dataclass
class JobSpec:
    """One job to enqueue: which queue, which function, its arguments and RQ options."""

    queue: str
    func: str | t.Callable[..., t.Any]
    args: tuple[t.Any, ...] = ()
    kwargs: dict[str, t.Any] = field(default_factory=dict)
    options: dict[str, t.Any] = field(default_factory=dict)
    """Passed to :meth:`rq.Queue.enqueue_call` (timeout, retry, meta, job_id, description …)."""


def enqueue_once(connection: redis.Redis, marker: str | t.Sequence[str], ttl_seconds: int,
                 jobs: t.Sequence[JobSpec]) -> list[str] | None:
    """Set ``marker`` and enqueue ``jobs`` in one MULTI/EXEC; None if ``marker`` already exists.
    ``marker`` may be several keys: None if any exists, else all are set (a delivery id, and the
    body digest or comment id that recognise a replay under a new delivery id).

    Either the marker is set *and* every job is queued, or nothing is: a connection lost before
    EXEC leaves no marker behind, so the forge's redelivery is processed normally. Raises
    :class:`QueueUnavailable` when Redis cannot be reached.
    """
    try:
        with connection.pipeline(transaction=True) as pipe:
            try:
                markers = [marker] if isinstance(marker, str) else list(marker)
                pipe.watch(*markers)
                if pipe.exists(*markers):
                    return None
                pipe.multi()
                for name in markers:
                    pipe.set(name, "1", ex=ttl_seconds)
                ids = []
                for spec in jobs:
                    queue = get_queue(spec.queue, connection)
                    job = queue.enqueue_call(spec.func, args=spec.args, kwargs=spec.kwargs,
                                             pipeline=pipe, **spec.options)
                    ids.append(job.id)
                pipe.execute()
                return ids
            except redis.WatchError:
                return None  # a concurrent redelivery got there first
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailable(f"Redis is unreachable ({exc}); nothing was queued") from exc


def enqueue(connection: redis.Redis, spec: JobSpec) -> Job:
    """Enqueue one job now; QueueUnavailable if Redis cannot be reached."""
    try:
        return get_queue(spec.queue, connection).enqueue_call(
            spec.func, args=spec.args, kwargs=spec.kwargs, **spec.options)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailable(f"Redis is unreachable ({exc}); {spec.func} was not queued") from exc


def queue_lengths(connection: redis.Redis) -> dict[str, dict[str, int]]:
    """Per queue: jobs waiting, running, failed, scheduled (for retries)."""
    out = {}
    for name in QUEUES:
        q = get_queue(name, connection)
        out[name] = {"queued": q.count, "started": q.started_job_registry.count,
                     "failed": q.failed_job_registry.count,
                     "scheduled": q.scheduled_job_registry.count}
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_time(connection: redis.Redis) -> float:
    """Now on the Redis server's clock (``TIME``), in seconds since the epoch.

    The one clock liveness is judged on: workers on other hosts may be minutes off, and a
    timestamp one host wrote compared with another host's ``time.time()`` measures the skew,
    not the silence."""
    seconds, micros = connection.time()
    return float(seconds) + micros / 1_000_000


BEATS_SEEN_KEY = key("workers", "beats")
"""Hash: worker name → ``{"beat": its last heartbeat as written, "at": server time first seen}``."""


def _remote_worker_alive(connection: redis.Redis, worker: t.Any, now: float, dead_after: float) -> bool:
    """Whether a worker on another host beat within ``dead_after`` seconds of ``now`` (Redis time).

    The heartbeat RQ writes carries the worker host's clock, so its value is used only to notice
    that it *changed*; when it changes is read on the Redis clock and remembered in
    :data:`BEATS_SEEN_KEY`. A worker first seen now counts as just beaten."""
    beat = worker.last_heartbeat.isoformat() if worker.last_heartbeat else ""
    raw = connection.hget(BEATS_SEEN_KEY, worker.name)
    seen = json.loads(raw) if raw else None
    if seen is None or seen.get("beat") != beat:
        connection.hset(BEATS_SEEN_KEY, worker.name, json.dumps({"beat": beat, "at": now}))
        return True
    return now - float(seen["at"]) <= dead_after


def _worker_alive(connection: redis.Redis, worker: t.Any, now: float, dead_after: float) -> bool:
    """Whether the worker that started a job still lives.

    On this host its pid answers the question at once. Elsewhere its heartbeat does, judged on
    the Redis clock (:func:`_remote_worker_alive`): a worker silent for ``dead_after`` seconds is
    dead. (A SimpleWorker does not beat during a job, so run long jobs on other hosts with the
    forking worker, the default.)
    """
    if worker is None:
        return False  # its registration expired or it deregistered: gone
    if worker.hostname == socket.gethostname() and worker.pid:
        return _pid_alive(int(worker.pid))
    return _remote_worker_alive(connection, worker, now, dead_after)


def clean_registries(connection: redis.Redis, now: float | None = None,
                     dead_after: float = defaults.WORKER_DEAD_AFTER_SECONDS) -> list[str]:
    """Hand jobs whose worker died back to RQ, which retries them (retries left) or fails them.

    ``now`` is the Redis server's clock (:func:`server_time`) unless a test passes its own.
    A job counts as abandoned when its worker is gone (see :func:`_worker_alive`). The started
    registry's scores are expiry times computed on the *worker's* clock, so RQ's own cleanup
    would fail the jobs of a worker whose clock runs behind: the entries of live workers are
    moved to ``now + dead_after`` first, and only what is due on the Redis clock is cleaned.
    Returns the ids of the abandoned jobs.
    """
    from rq import Worker

    now = server_time(connection) if now is None else now
    abandoned = []
    for name in QUEUES:
        registry = get_queue(name, connection).started_job_registry
        for entry, score in connection.zrange(registry.key, 0, -1, withscores=True):
            job_id = entry.decode().split(":", 1)[0]
            try:
                job = Job.fetch(job_id, connection=connection)
            except Exception:
                continue
            worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + (job.worker_name or ""),
                                        connection=connection) if job.worker_name else None
            if not _worker_alive(connection, worker, now, dead_after):
                connection.zadd(registry.key, {entry: 0})  # expired: RQ's cleanup takes it from here
                abandoned.append(job_id)
            elif score < now:  # alive, its expiry written on a slow clock: not abandoned
                connection.zadd(registry.key, {entry: now + dead_after}, xx=True)
        registry.cleanup(timestamp=now)
    _forget_gone_workers(connection)
    return abandoned


def _forget_gone_workers(connection: redis.Redis) -> None:
    """Drop the remembered beats of workers whose registration is gone (names are per process)."""
    from rq import Worker

    for name in connection.hkeys(BEATS_SEEN_KEY):
        if not connection.exists(Worker.redis_worker_namespace_prefix + name.decode()):
            connection.hdel(BEATS_SEEN_KEY, name)


def enqueue_due(connection: redis.Redis, now: float | None = None) -> int:
    """Move scheduled jobs (retries with back-off) whose time has come into their queues.

    Workers started with a scheduler do this too; the scheduler tick does it as well so retries
    proceed with any worker and tests can pass their own clock.
    """
    moved = 0
    for name in QUEUES:
        queue = get_queue(name, connection)
        registry = queue.scheduled_job_registry
        ids = registry.get_jobs_to_schedule(int(now) if now is not None else None)
        for job_id in ids:
            with connection.pipeline() as pipe:
                try:
                    job = Job.fetch(job_id, connection=connection)
                except Exception:
                    registry.remove(job_id, pipeline=pipe)
                    pipe.execute()
                    continue
                pipe.multi()
                registry.remove(job, pipeline=pipe)
                queue.enqueue_job(job, pipeline=pipe)
                pipe.execute()
                moved += 1
    return moved
