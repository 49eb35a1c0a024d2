"""A run's lifecycle: the steps table, queueing the next step, moving and failing a run.

A run is a chain of RQ jobs, one per step (:data:`STEPS`), each queued by the one before it:

    ingest_step ─► train_step ─► evaluate_step ─┬► convert_step ─► publish_step
                                                └► (rejected: the run ends; promote_job resumes it)

Every step runs inside :func:`step`, which loads ``run.json``, applies the settings snapshot the
run started with (:meth:`bot.config.Settings.with_run_snapshot`), moves the run into the step's
status, holds the model's lease (:func:`bot.locks.heartbeat`) and, when the body raises, fails the
run and releases the model. After every status change :func:`move` saves the record and reports
it to the forge (:mod:`bot.reporting`). The job bodies themselves live in :mod:`bot.jobs`.

This module also names every other job by its dotted path (RQ enqueues by path string), so a
job's name is spelled in exactly two places: its ``def`` in :mod:`bot.jobs` and its spec here.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import typing as t
from collections.abc import Iterator

import redis
from rq import get_current_job
from rq.job import Job

from bot import defaults, locks, reporting
from bot import queue as q
from bot.config import Settings, current
from bot.errors import BotError
from bot.runs import RunRecord, RunStatus, load_run, run_dir, save_run, transition
from durable import write_atomic

log = logging.getLogger(__name__)

STEPS: dict[str, tuple[str, str, RunStatus, int]] = {
    "ingest": ("ingest", "bot.jobs.ingest_step", RunStatus.INGESTING, defaults.INGEST_JOB_TIMEOUT_SECONDS),
    "train": ("gpu", "bot.jobs.train_step", RunStatus.TRAINING, defaults.GPU_JOB_TIMEOUT_SECONDS),
    "evaluate": ("gpu", "bot.jobs.evaluate_step", RunStatus.EVALUATING, defaults.GPU_JOB_TIMEOUT_SECONDS),
    "convert": ("gpu", "bot.jobs.convert_step", RunStatus.CONVERTING, defaults.GPU_JOB_TIMEOUT_SECONDS),
    "publish": ("deploy", "bot.jobs.publish_step", RunStatus.PUBLISHING, defaults.DEPLOY_JOB_TIMEOUT_SECONDS),
}
"""Step name → (queue, job function path, status the step works in, timeout in seconds).
Training's timeout is ``training.job_timeout_seconds`` instead."""


def connection(settings: Settings) -> redis.Redis:
    """The current job's Redis connection, or one to ``settings.redis_url`` outside a worker."""
    job = get_current_job()
    if job is not None:
        return job.connection
    if not settings.redis_url:
        raise BotError("no Redis: set REDIS_URL or start RepoTune with `repotune up`")
    return q.connect(settings.redis_url)


def run_settings(settings: Settings, run: RunRecord, *, snapshot: bool = True) -> Settings:
    """The settings a step of ``run`` works with: its model's view (:func:`bot.models.settings_for`:
    that model's repositories, Triton model and overrides), with the run's snapshot in place of
    the live ``[training]`` and ``[evaluation]`` unless ``snapshot`` is False (re-evaluation)."""
    from bot import models

    view = models.settings_for(settings, run.model or settings.serving.model_name)
    return view.with_run_snapshot(run.settings) if snapshot else view


def model_of(settings: Settings, run: RunRecord) -> str:
    """The Triton model a run trains (its lock's name)."""
    return run.model or settings.serving.model_name


def report(settings: Settings, run: RunRecord) -> None:
    """Tell the forge (commit statuses, comments) about the run's current status."""
    reporting.on_run_transition(settings, run)


def move(settings: Settings, run: RunRecord, status: RunStatus, note: str = "") -> None:
    """Move ``run`` to ``status``, save it and report it."""
    transition(run, status, note)
    run.progress = {}
    save_run(settings.home, run)
    report(settings, run)


def fail_run(settings: Settings, conn: redis.Redis | None, run: RunRecord, error: str, *,
             now: float | None = None) -> None:
    """Mark ``run`` failed with ``error``, free the model and report it."""
    if run.status.terminal:
        return
    run.error = error
    transition(run, RunStatus.FAILED, error.splitlines()[0][:200], now=now)
    save_run(settings.home, run)
    if conn is not None:
        with contextlib.suppress(Exception):
            locks.release_lock(conn, model_of(settings, run), run.id)
    report(settings, run)
    log.warning("run %s failed: %s", run.id, error.splitlines()[0])


def finish(settings: Settings, conn: redis.Redis, run: RunRecord) -> None:
    """The run reached its last step: free the model for the follow-up run."""
    locks.release_lock(conn, model_of(settings, run), run.id)


def enqueue_step(settings: Settings, conn: redis.Redis, step_name: str, run_id: str, **kwargs: t.Any) -> Job:
    """Queue step ``step_name`` of run ``run_id``."""
    queue_name, func, _, timeout = STEPS[step_name]
    if step_name == "train":
        timeout = settings.training.job_timeout_seconds
    return q.enqueue(conn, q.JobSpec(
        queue_name, func, (run_id,), kwargs,
        {"timeout": timeout, "result_ttl": defaults.RESULT_TTL_SECONDS,
         "description": f"run {run_id}: {step_name}", "meta": {"run_id": run_id, "step": step_name}}))


def advance(settings: Settings, conn: redis.Redis, run: RunRecord, step_name: str, **kwargs: t.Any) -> None:
    """Queue the run's next step and remember its job (the scheduler checks it is still alive)."""
    job = enqueue_step(settings, conn, step_name, run.id, **kwargs)
    run.job_id = job.id
    save_run(settings.home, run)


def _failure_message(settings: Settings, run: RunRecord, exc: BaseException) -> str:
    """What a failed step says in run.json and the MR comment; the traceback goes to a log file."""
    if isinstance(exc, ImportError):
        return (f"step {run.status.value!r} needs {exc.name or 'a package'}, which is not installed "
                f"({exc}); the run stops here and the serving model is unchanged")
    write_atomic(run_dir(settings.home, run.id) / "logs" / f"{run.status.value}.error.txt",
                 traceback.format_exc())
    return f"{run.status.value} failed: {type(exc).__name__}: {exc}"


@contextlib.contextmanager
def step(run_id: str, status: RunStatus | None, *,
         retrying: bool = False) -> Iterator[tuple[Settings, RunRecord, redis.Redis]]:
    """Run one step of ``run_id``: yields (the run's settings, its record, Redis).

    Loads the run, applies its settings snapshot, moves it to ``status`` and holds the model's
    lease. On error the run fails (unless RQ will retry the job, with ``retrying``) and the error
    is re-raised so RQ records the traceback too.
    """
    run = load_run(current().home, run_id)
    settings = run_settings(current(), run)
    conn = connection(settings)
    if run.status.terminal:
        raise BotError(f"run {run_id} is already {run.status.value}; step skipped")
    job = get_current_job()
    if job is not None:
        run.job_id = job.id
    if status is not None and run.status != status:
        move(settings, run, status)
    try:
        with locks.heartbeat(conn, model_of(settings, run), run.id, settings.policy.lock_lease_seconds):
            yield settings, run, conn
    except Exception as exc:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if retrying and retries_left:
            log.warning("run %s: %s failed (%s); RQ retries it (%d left)", run.id, run.status.value,
                        exc, retries_left)
            raise
        fail_run(settings, conn, run, _failure_message(settings, run, exc))
        raise


# --- every other job, by dotted path -------------------------------------------------------


def ingest_spec(repo_name: str, branch: str | None, push: dict[str, t.Any] | None,
                reason: str = "push") -> q.JobSpec:
    """The ingest job for a push (used by the webhook inside its dedupe transaction)."""
    return q.JobSpec("ingest", "bot.jobs.ingest_job", (repo_name, branch, push, reason), {},
                     {"timeout": defaults.INGEST_JOB_TIMEOUT_SECONDS, "retry": q.ingest_retry(),
                      "result_ttl": defaults.RESULT_TTL_SECONDS,
                      "description": f"ingest {repo_name}@{branch or 'default'} ({reason})"})


def retire_spec(repo_name: str, branch: str, push: dict[str, t.Any]) -> q.JobSpec:
    """The retirement of a deleted branch's corpus (the webhook queues it for a deletion push)."""
    return q.JobSpec("ingest", "bot.jobs.retire_job", (repo_name, branch, push), {},
                     {"timeout": defaults.INGEST_JOB_TIMEOUT_SECONDS, "retry": q.ingest_retry(),
                      "result_ttl": defaults.RESULT_TTL_SECONDS,
                      "description": f"retire {repo_name}@{branch} (branch deleted)"})


def enqueue_ingest(settings: Settings, conn: redis.Redis, repo_name: str,
                   branch: str | None = None, push: dict[str, t.Any] | None = None) -> Job:
    return q.enqueue(conn, ingest_spec(repo_name, branch, push))


def enqueue_reconcile(settings: Settings, conn: redis.Redis, repo_name: str) -> Job:
    return q.enqueue(conn, q.JobSpec(
        "ingest", "bot.jobs.reconcile_job", (repo_name,), {},
        {"timeout": defaults.INGEST_JOB_TIMEOUT_SECONDS, "retry": q.ingest_retry(),
         "result_ttl": defaults.RESULT_TTL_SECONDS, "description": f"reconcile {repo_name}"}))


def forward_eval_spec(corpus_name: str, paths: list[str], commit: str | None,
                      push: dict[str, t.Any] | None, reason: str, timeout: int,
                      model: str | None = None) -> q.JobSpec:
    """The forward evaluation of an ingest's changed files by ``model`` (:mod:`bot.freshness`)."""
    return q.JobSpec(
        "gpu", "bot.jobs.forward_eval_job", (corpus_name, paths, commit, push, reason),
        {"model": model} if model else {},
        {"timeout": timeout, "result_ttl": defaults.RESULT_TTL_SECONDS,
         "description": f"forward eval {corpus_name}@{str(commit)[:12]} ({len(paths)} files"
                        f"{', ' + model if model else ''})",
         "meta": {"corpus": corpus_name, "commit": commit, "model": model}})


def enqueue_promote(settings: Settings, conn: redis.Redis, run_id: str) -> str:
    """Queue the promotion of ``run_id`` (its model is the run's own)."""
    load_run(settings.home, run_id)
    return q.enqueue(conn, q.JobSpec("deploy", "bot.jobs.promote_job", (run_id,), {},
                                     {"timeout": defaults.DEPLOY_JOB_TIMEOUT_SECONDS})).id


def enqueue_rollback(settings: Settings, conn: redis.Redis, version: int | None = None,
                     model: str | None = None) -> str:
    """Queue a rollback of ``model`` (None: the only model; several: BotError naming them)."""
    from bot import models

    name = models.get_model(settings, model).name
    return q.enqueue(conn, q.JobSpec("deploy", "bot.jobs.rollback_job", (version,), {"model": name},
                                     {"timeout": defaults.DEPLOY_JOB_TIMEOUT_SECONDS})).id


def enqueue_eval(settings: Settings, conn: redis.Redis, run_id: str) -> str:
    load_run(settings.home, run_id)
    return q.enqueue(conn, q.JobSpec("gpu", "bot.jobs.eval_job", (run_id,), {},
                                     {"timeout": defaults.GPU_JOB_TIMEOUT_SECONDS})).id
