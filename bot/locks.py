"""The one-run-per-model lock: a Redis lease that a live step renews and a dead worker lets lapse.

``repotune:lock:train:<model>`` holds the id of the run that owns the model. It is a lease
(``policy.lock_lease_seconds``), not a plain lock, so a worker killed mid-step frees the model
within one lease and the scheduler can fail the run as ``abandoned``. Steps hold it through
:func:`heartbeat`; the scheduler takes it when it starts a run and reads it to decide whether a
new run may start.

The lease's expiry is Redis's own (``PX``), judged on the Redis server's clock, so no worker's
clock decides when a model is free. A Redis restart without the key (no persistence, or the last
second lost) does not take the model from a run that still trains: the holder's next beat sets
the key again (:data:`_KEEP`); only when another run took it meanwhile does the holder give up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from bot import queue as q
from bot.errors import BotError

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_KEEP = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 2
end
return 0
"""
"""Renew the lease, or take it again when the key is gone (1 renewed, 2 re-taken, 0 another holds it)."""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def lock_key(model: str) -> str:
    """The Redis key of ``model``'s lock."""
    return q.key("lock", "train", model)


def acquire_lock(connection: redis.Redis, model: str, run_id: str, lease_seconds: float) -> bool:
    """Take the model for ``run_id`` unless another run holds it."""
    return bool(connection.set(lock_key(model), run_id, nx=True, px=int(lease_seconds * 1000)))


def renew_lock(connection: redis.Redis, model: str, run_id: str, lease_seconds: float) -> bool:
    """Extend the lease if ``run_id`` still holds it (False: it was lost)."""
    return bool(connection.eval(_RENEW, 1, lock_key(model), run_id, int(lease_seconds * 1000)))


def release_lock(connection: redis.Redis, model: str, run_id: str) -> bool:
    """Free the model if ``run_id`` holds it (a no-op for anyone else)."""
    return bool(connection.eval(_RELEASE, 1, lock_key(model), run_id))


def lock_holder(connection: redis.Redis, model: str) -> str | None:
    """The run id holding ``model``, or None."""
    value = connection.get(lock_key(model))
    return value.decode() if value else None


def keep_lock(connection: redis.Redis, model: str, run_id: str, lease_seconds: float) -> bool:
    """Extend the lease of ``run_id``, setting it again if the key vanished (a Redis restart);
    False only when another run holds the model."""
    kept = int(connection.eval(_KEEP, 1, lock_key(model), run_id, int(lease_seconds * 1000)))
    if kept == 2:
        log.warning("run %s: the lease of %s was gone (Redis restarted?); taken again", run_id, model)
    return kept != 0


@dataclass
class Lease:
    """What :func:`heartbeat` yields: ``lost`` is set when another run took the model, after
    which this holder stops beating (the body may check it before a step it cannot undo)."""

    model: str
    run_id: str
    lost: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def heartbeat(connection: redis.Redis, model: str, run_id: str, lease_seconds: float) -> Iterator[Lease]:
    """Hold ``model`` for ``run_id`` while the body runs: take the lease if it lapsed (the run's
    next job waited in a queue longer than a lease), then keep it every third of a lease from a
    daemon thread (:func:`keep_lock`: renewed, or set again after a Redis restart lost the key).
    A dead worker stops beating, so the lease lapses and the model is freed.

    Raises :class:`BotError` when another run took the lapsed lease meanwhile: two runs must never
    train one model at once, so this step stops instead of running unlocked."""
    lease = Lease(model, run_id)
    if not renew_lock(connection, model, run_id, lease_seconds) and not acquire_lock(
            connection, model, run_id, lease_seconds):
        raise BotError(f"run {lock_holder(connection, model)} took {model} while this run's step waited "
                       "in the queue longer than policy.lock_lease_seconds; this run stops so that only "
                       "one trains the model (raise the lease, or add workers to the step's queue)")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(max(lease_seconds / 3.0, 0.2)):
            try:
                kept = keep_lock(connection, model, run_id, lease_seconds)
            except Exception as exc:  # Redis down or restarting: the next beat tries again
                log.debug("run %s: lease beat failed: %s", run_id, exc)
                continue
            if not kept:
                log.error("run %s: run %s holds %s now; this worker stops renewing its lease", run_id,
                          lock_holder(connection, model), model)
                lease.lost.set()
                return

    thread = threading.Thread(target=beat, name=f"lease-{run_id}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=5)
