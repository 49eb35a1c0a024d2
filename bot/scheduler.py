"""The policy that turns ingested pushes into training runs.

State in Redis, per model (:mod:`bot.models`: each ``[[models]]`` entry, or the one implicit
model named ``settings.serving.model_name``):

``repotune:pending:<model>``          hash: files, bytes changed since the last run; first/last push time
``repotune:pending:<model>:pushes``   list of JSON push summaries waiting for a run
``repotune:lock:train:<model>``       run id holding the model (a lease, :mod:`bot.locks`)
``repotune:last_train:<model>``       when the last automatic run started (cooldown)
``repotune:paused``                   automatic retraining of every model paused (chat-ops, CLI)
``repotune:paused:<model>``           automatic retraining of one model paused
``repotune:reconcile:last``           when the last reconciliation was queued

:func:`tick` is the whole policy, a function of (settings, Redis, ``now``) so tests call it with an
injected clock; ``now`` is otherwise the Redis server's clock (:func:`bot.queue.server_time`), the
one clock every timestamp here is written and judged on, so a worker host whose clock is off
neither looks dead nor shifts the debounce; ``repotune up`` calls it every ``policy.tick_seconds``. Pushes that arrive while a run
holds the model simply accumulate in ``pending``; the first tick after the run ends turns them into
one follow-up run. A push to a repository is noted for every model that learns from it
(:func:`bot.models.models_for_repo`), and each model is debounced, locked and cooled down on its
own: a run of one model never blocks another.
"""

from __future__ import annotations

import json
import logging
import typing as t

import redis
from rq.job import Job, JobStatus

from bot import lifecycle, models
from bot import queue as q
from bot.config import Settings
from bot.errors import BotError

# The lock's functions, for callers that know them as the scheduler's (status, chat-ops, tests).
from bot.locks import acquire_lock as acquire_lock
from bot.locks import lock_holder as lock_holder
from bot.locks import lock_key as lock_key
from bot.locks import release_lock as release_lock
from bot.runs import (
    RunRecord,
    RunStatus,
    Trigger,
    active_runs,
    load_run,
    new_run,
    save_run,
    transition,
)

log = logging.getLogger(__name__)

PAUSED_KEY = q.key("paused")
RECONCILE_KEY = q.key("reconcile", "last")


def pending_key(model: str) -> str:
    return q.key("pending", model)


def pushes_key(model: str) -> str:
    return q.key("pending", model, "pushes")


def last_train_key(model: str) -> str:
    return q.key("last_train", model)


# --- pause ---------------------------------------------------------------------------------


def paused_key(model: str | None = None) -> str:
    """The flag of one model (``repotune:paused:<model>``), or the global one (no model)."""
    return q.key("paused", model) if model else PAUSED_KEY


def pause(connection: redis.Redis, model: str | None = None) -> None:
    """Stop starting automatic runs of ``model``, or of every model (pushes are still ingested)."""
    connection.set(paused_key(model), "1")


def resume(connection: redis.Redis, model: str | None = None) -> None:
    """Start automatic runs again: of ``model``, or lift the global pause. Each flag is lifted
    only by its own ``resume``: lifting the global pause leaves a model paused on its own
    paused, so a team's pause is not undone by someone else's."""
    connection.delete(paused_key(model))


def is_paused(connection: redis.Redis, model: str | None = None) -> bool:
    """Whether automatic runs are paused for everyone, or (with ``model``) for that model by
    either flag."""
    keys = [PAUSED_KEY] + ([paused_key(model)] if model else [])
    return bool(connection.exists(*keys))


def paused_models(connection: redis.Redis, names: t.Iterable[str]) -> list[str]:
    """Those of ``names`` paused on their own (not counting the global pause)."""
    names = list(names)
    if not names:
        return []
    flags = connection.mget([paused_key(n) for n in names])
    return [n for n, flag in zip(names, flags, strict=True) if flag is not None]


# --- recording changes ---------------------------------------------------------------------


def note_change(settings: Settings, connection: redis.Redis, *, repo: str, files: int, nbytes: int,
                push: dict[str, t.Any] | None, now: float | None = None) -> list[str]:
    """Add an ingest's changes to what the next run of every model learning from ``repo`` will
    cover (called by the ingest job); returns those models' names."""
    if files <= 0 and push is None:
        return []
    now = q.server_time(connection) if now is None else now
    summary = dict(push or {"kind": "reconcile"})
    summary.update(repo_name=repo, files=files, bytes=nbytes, at=now)
    names = [spec.name for spec in models.models_for_repo(settings, repo)]
    with connection.pipeline(transaction=True) as pipe:
        for model in names:
            pipe.hincrby(pending_key(model), "files", files)
            pipe.hincrby(pending_key(model), "bytes", nbytes)
            pipe.hsetnx(pending_key(model), "first", now)
            pipe.hset(pending_key(model), "last", now)
            pipe.rpush(pushes_key(model), json.dumps(summary))
        pipe.execute()
    if not names:
        log.info("push to %s noted for no model: no [[models]] entry learns from it", repo)
    return names


def pending(settings: Settings, connection: redis.Redis, model: str | None = None) -> dict[str, t.Any]:
    """What has changed since the last run of ``model`` (default: the model ``settings`` are a
    view of): files, bytes, first/last push time, pushes."""
    model = model or settings.serving.model_name
    raw = {k.decode(): v.decode() for k, v in connection.hgetall(pending_key(model)).items()}
    pushes = [json.loads(p) for p in connection.lrange(pushes_key(model), 0, -1)]
    return {"files": int(raw.get("files", 0)), "bytes": int(raw.get("bytes", 0)),
            "first": float(raw["first"]) if "first" in raw else None,
            "last": float(raw["last"]) if "last" in raw else None, "pushes": pushes}


def _take_pending(settings: Settings, connection: redis.Redis) -> dict[str, t.Any]:
    model = settings.serving.model_name
    with connection.pipeline(transaction=True) as pipe:
        pipe.hgetall(pending_key(model))
        pipe.lrange(pushes_key(model), 0, -1)
        pipe.delete(pending_key(model), pushes_key(model))
        raw, pushes, _ = pipe.execute()
    raw = {k.decode(): v.decode() for k, v in raw.items()}
    return {"files": int(raw.get("files", 0)), "bytes": int(raw.get("bytes", 0)),
            "pushes": [json.loads(p) for p in pushes]}


# --- starting runs -------------------------------------------------------------------------


def _trigger_from_pushes(settings: Settings, pushes: list[dict[str, t.Any]]) -> tuple[Trigger, str | None]:
    """The trigger of a run over ``pushes``: statuses go to the last real push's commit."""
    real = [p for p in pushes if p.get("kind") != "reconcile"]
    last = real[-1] if real else (pushes[-1] if pushes else {})
    trigger = Trigger(kind="push" if real else "reconcile", forge=last.get("forge"),
                      repo=last.get("repo"), commit=last.get("after"), pushes=list(pushes))
    return trigger, last.get("repo_name")


def start_run(settings: Settings, connection: redis.Redis, *, trigger: Trigger,
              repo: str | None, full: bool = False, now: float | None = None) -> RunRecord | None:
    """Create a run, take the model's lock and queue its first step; None if the model is busy.

    ``settings`` are one model's view (:func:`bot.models.settings_for`; the only model's when
    they are not). The effective ``training`` and ``evaluation`` settings, the model's overrides
    applied, are snapshotted into the run record here, and every step of the run uses the snapshot."""
    settings = models.settings_for(settings, None)
    now = q.server_time(connection) if now is None else now
    model = settings.serving.model_name
    run = new_run(repo=repo, trigger=trigger, model=model, now=now)
    if not acquire_lock(connection, model, run.id, settings.policy.lock_lease_seconds):
        return None
    run.settings = settings.run_snapshot()
    taken = _take_pending(settings, connection)
    known = {json.dumps(p, sort_keys=True) for p in run.trigger.pushes}
    run.trigger.pushes += [p for p in taken["pushes"] if json.dumps(p, sort_keys=True) not in known]
    run.trigger.full = full
    run.metrics["changed_files"] = taken["files"]
    run.metrics["changed_bytes"] = taken["bytes"]
    connection.set(last_train_key(model), now)
    save_run(settings.home, run)
    try:
        job = lifecycle.enqueue_step(settings, connection, "ingest", run.id, full=full)
    except Exception:
        release_lock(connection, model, run.id)
        transition(run, RunStatus.FAILED, "could not queue the first step")
        run.error = "could not queue the first step (Redis unreachable?)"
        save_run(settings.home, run)
        raise
    run.job_id = job.id
    save_run(settings.home, run)
    lifecycle.report(settings, run)
    log.info("run %s started (%s, %d files / %d bytes changed)", run.id, trigger.kind,
             taken["files"], taken["bytes"])
    return run


def request_training(settings: Settings, connection: redis.Redis, repo_name: str | None, *,
                     full: bool = False, reason: str = "requested", requested_by: str | None = None,
                     trigger: dict[str, t.Any] | None = None, model: str | None = None) -> str | None:
    """Start a run of ``model`` now, skipping debounce, threshold and cooldown (chat-ops ``retrain``).

    ``model`` may be None with one model; with several, a BotError names them. ``repo_name``,
    when given, must be one the model learns from. ``trigger`` adds fields to the run's trigger
    (``forge``, ``repo``, ``number`` for the reply). Returns the run id, or None when the model
    is already being trained (the pending changes then go into the follow-up run).
    """
    if repo_name is not None:
        settings.repo(repo_name)  # ConfigError naming the configured repositories
    spec = models.get_model(settings, model)
    if repo_name is not None and not spec.implicit and repo_name not in spec.repos:
        raise BotError(f"model {spec.name!r} does not learn from {repo_name!r} "
                       f"(it learns from {', '.join(spec.repos)})")
    settings = models.settings_for(settings, spec)
    full_trigger = Trigger(kind="chatops", reason=reason, requested_by=requested_by).merged(trigger)
    # As in tick: a run whose next step merely waits in a queue re-takes its lapsed lease first,
    # so a retrain never starts beside it.
    q.clean_registries(connection)
    _check_abandoned(settings, connection, q.server_time(connection))
    run = start_run(settings, connection, trigger=full_trigger, repo=repo_name, full=full)
    return run.id if run else None


# --- the tick ------------------------------------------------------------------------------


def _check_abandoned(settings: Settings, connection: redis.Redis, now: float) -> list[str]:
    """Fail runs whose lock lapsed because their worker died; re-take the lock of runs whose
    job is merely waiting in a queue or running on a live worker. Call after
    :func:`bot.queue.clean_registries`."""
    failed = []
    model = settings.serving.model_name
    for run in active_runs(settings.home):
        if lock_holder(connection, run.model or model) == run.id:
            continue
        status = None
        if run.job_id:
            try:
                status = Job.fetch(run.job_id, connection=connection).get_status()
            except Exception:  # NoSuchJobError and friends: the job is gone
                status = None
        # A started job's worker lives: q.clean_registries, run just before, handed back every job
        # whose worker died. Its step may not have taken the lease yet (a lease lapsed while it
        # waited in the queue), so re-take it rather than fail a live run.
        if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED):
            if (acquire_lock(connection, run.model or model, run.id, settings.policy.lock_lease_seconds)
                    and load_run(settings.home, run.id).status.terminal):
                release_lock(connection, run.model or model, run.id)  # it ended since we read it
            continue
        run = load_run(settings.home, run.id)  # fresh: a run that ended since is not abandoned
        if run.status.terminal:
            continue
        lifecycle.fail_run(settings, connection, run, "abandoned: its worker stopped renewing the "
                      f"training lock (job {run.job_id} is {status.value if status else 'gone'})",
                      now=now)
        failed.append(run.id)
    return failed


def tick(settings: Settings, connection: redis.Redis, now: float | None = None) -> dict[str, t.Any]:
    """One pass of the scheduler; returns what it did (for logs and tests).

    1. let RQ retry or fail jobs whose worker died, and queue retries that are due;
    2. judge running canaries (:func:`bot.canary.evaluate`: promote, roll back or extend; it
       keeps their lease), then fail runs whose worker died (lease expired);
    3. queue a reconciliation of every repository when ``policy.reconcile_seconds`` passed;
    4. for each model (:func:`bot.models.model_specs`), start a run when: neither all models nor
       this one is paused, no run
       holds the model, its last push is older than the debounce, its change since its last run
       meets a threshold, and its cooldown passed (:func:`tick_model`).

    ``did["models"]`` holds each model's ``{"run", "reason"}``; ``did["run"]`` and
    ``did["reason"]`` are the only model's (with several: the first run started, the reasons joined).
    """
    now = q.server_time(connection) if now is None else now
    policy = settings.policy
    did: dict[str, t.Any] = {"now": now, "run": None, "reason": None, "reconcile": [],
                             "abandoned": [], "orphaned": [], "models": {}}
    did["orphaned"] = q.clean_registries(connection, now)
    q.enqueue_due(connection, now)
    from bot import canary  # serving's acceptance reader, only needed here

    did["canary"] = canary.evaluate(settings, connection)
    did["abandoned"] = _check_abandoned(settings, connection, now)

    if policy.reconcile_seconds > 0 and settings.repos:
        last = connection.get(RECONCILE_KEY)
        if last is None or now - float(last) >= policy.reconcile_seconds:
            connection.set(RECONCILE_KEY, now)
            did["reconcile"] = [lifecycle.enqueue_reconcile(settings, connection, r.name).id
                                for r in settings.repos]

    paused = is_paused(connection)
    specs = models.model_specs(settings)
    alone = set(paused_models(connection, [spec.name for spec in specs]))
    for spec in specs:
        did["models"][spec.name] = tick_model(models.settings_for(settings, spec), connection, now,
                                              paused=paused or spec.name in alone)
    outcomes = list(did["models"].values())
    did["run"] = next((o["run"] for o in outcomes if o["run"]), None)
    did["reason"] = outcomes[0]["reason"] if len(outcomes) == 1 else \
        "; ".join(f"{name}: {o['reason']}" for name, o in did["models"].items())
    return did


def tick_model(settings: Settings, connection: redis.Redis, now: float, *,
               paused: bool = False) -> dict[str, t.Any]:
    """Step 4 of :func:`tick` for the one model ``settings`` are a view of: ``{"run", "reason"}``."""
    policy = settings.policy
    model = settings.serving.model_name
    state = pending(settings, connection)
    if not state["pushes"] and state["files"] <= 0:
        return {"run": None, "reason": "nothing changed"}
    if paused:
        return {"run": None, "reason": "paused"}
    holder = lock_holder(connection, model)
    if holder:
        return {"run": None, "reason": f"run {holder} holds {model}; changes wait for the follow-up run"}
    if state["last"] is not None and now - state["last"] < policy.debounce_seconds:
        return {"run": None, "reason": f"debounce: last push {now - state['last']:.0f}s ago"}
    if state["files"] < policy.min_changed_files and state["bytes"] < policy.min_changed_bytes:
        return {"run": None, "reason": (
            f"below threshold: {state['files']} files / {state['bytes']} bytes changed "
            f"(need {policy.min_changed_files} files or {policy.min_changed_bytes} bytes)")}
    last_train = connection.get(last_train_key(model))
    if last_train is not None and now - float(last_train) < policy.cooldown_seconds:
        return {"run": None, "reason": f"cooldown: last run started {now - float(last_train):.0f}s ago"}
    trigger, repo = _trigger_from_pushes(settings, state["pushes"])
    run = start_run(settings, connection, trigger=trigger, repo=repo, now=now)
    return {"run": run.id if run else None, "reason": "started" if run else "model busy"}
