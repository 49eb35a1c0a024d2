"""RQ job functions, one per kind, each a few lines around one package call.

    ingest       (queue ingest)  trainer.corpus.update for a push or reconciliation; retried with back-off
    reconcile    (queue ingest)  the same, for a repository whose webhook may have been missed
    run_ingest   (queue ingest)  a run's first step: bring every corpus to its branch head
    train        (queue gpu)     trainer.finetune.train (CPU, in-process) or .launch (GPUs)
    evaluate     (queue gpu)     trainer.evaluate.compare against the serving model → gate
    convert      (queue gpu)     converter.convert → artifact
    publish      (queue deploy)  serving.ModelRepository.publish + activate
    promote      (queue deploy)  a rejected run: convert + publish anyway; a published one: activate
    rollback     (queue deploy)  serving.ModelRepository.rollback
    eval         (queue gpu)     re-run the evaluation of a run (no status change)
    forward_eval (queue gpu)     score the serving model on a push's new code (bot.freshness)

A run's steps each enqueue the next before they return, record progress in ``job.meta`` and in
``runs/<id>/run.json``, renew the model's training lock while they work, and call
:func:`bot.reporting.on_run_transition` after every status change. A step that fails marks the run
failed and releases the lock; nothing before ``publish`` touches the serving model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import traceback
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import redis
from rq import get_current_job
from rq.job import Job

from bot import defaults, freshness, reporting
from bot import queue as q
from bot import scheduler as sched
from bot.config import RepoConfig, Settings, current
from bot.errors import BotError
from bot.runs import (
    RunRecord,
    RunStatus,
    list_runs,
    load_run,
    run_dir,
    save_run,
    transition,
)

log = logging.getLogger(__name__)


class StepUnavailable(BotError):
    """The package a step needs is not part of this installation; the run stops before it."""


# --- helpers -------------------------------------------------------------------------------


def _connection(settings: Settings) -> redis.Redis:
    job = get_current_job()
    if job is not None:
        return job.connection
    if not settings.redis_url:
        raise BotError("no Redis: set REDIS_URL or start RepoTune with `repotune up`")
    return q.connect(settings.redis_url)


def report(settings: Settings, run: RunRecord) -> None:
    """Tell the forge (commit statuses, comments) about the run's current status."""
    reporting.on_run_transition(settings, run)


def _progress_recorder(settings: Settings, run: RunRecord, every_s: float = 1.0) -> Callable[[dict], None]:
    """A progress callback that copies events into job.meta and run.json (at most once a second)."""
    job = get_current_job()
    last = [0.0]

    def record(event: dict[str, t.Any]) -> None:
        now = time.monotonic()
        if now - last[0] < every_s and event.get("done") != event.get("total"):
            return
        last[0] = now
        clean = {k: v for k, v in event.items() if isinstance(v, (str, int, float, bool)) or v is None}
        if job is not None:
            job.meta["progress"] = clean
            job.meta["run_id"] = run.id
            with contextlib.suppress(Exception):
                job.save_meta()
        run.progress = clean
        save_run(settings.home, run)

    return record


@contextlib.contextmanager
def _holding_lock(settings: Settings, connection: redis.Redis, run: RunRecord) -> Iterator[None]:
    """Renew the model's lease every third of it while the step works (a dead worker lets it lapse)."""
    model = run.model or settings.serving.model_name
    lease = settings.policy.lock_lease_seconds
    if not sched.renew_lock(connection, model, run.id, lease):
        sched.acquire_lock(connection, model, run.id, lease)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(max(lease / 3.0, 0.5)):
            with contextlib.suppress(Exception):
                sched.renew_lock(connection, model, run.id, lease)

    thread = threading.Thread(target=beat, name=f"lease-{run.id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _move(settings: Settings, run: RunRecord, status: RunStatus, note: str = "") -> None:
    transition(run, status, note)
    run.progress = {}
    save_run(settings.home, run)
    report(settings, run)


def fail_run(settings: Settings, connection: redis.Redis | None, run: RunRecord, error: str, *,
             now: float | None = None) -> None:
    """Mark ``run`` failed with ``error``, free the model and report it."""
    if run.status.terminal:
        return
    run.error = error
    transition(run, RunStatus.FAILED, error.splitlines()[0][:200], now=now)
    save_run(settings.home, run)
    if connection is not None:
        with contextlib.suppress(Exception):
            sched.release_lock(connection, run.model or settings.serving.model_name, run.id)
    report(settings, run)
    log.warning("run %s failed: %s", run.id, error.splitlines()[0])


def _finish(settings: Settings, connection: redis.Redis, run: RunRecord) -> None:
    sched.release_lock(connection, run.model or settings.serving.model_name, run.id)


# Step name → (queue, job function path, RunStatus the step moves the run into, timeout).
STEPS: dict[str, tuple[str, str, int]] = {
    "ingest": ("ingest", "bot.jobs.run_ingest", defaults.INGEST_JOB_TIMEOUT_SECONDS),
    "train": ("gpu", "bot.jobs.train", defaults.GPU_JOB_TIMEOUT_SECONDS),
    "evaluate": ("gpu", "bot.jobs.evaluate", defaults.GPU_JOB_TIMEOUT_SECONDS),
    "convert": ("gpu", "bot.jobs.convert", defaults.GPU_JOB_TIMEOUT_SECONDS),
    "publish": ("deploy", "bot.jobs.publish", defaults.DEPLOY_JOB_TIMEOUT_SECONDS),
}


def enqueue_step(settings: Settings, connection: redis.Redis, step: str, run_id: str, **kwargs: t.Any) -> Job:
    """Queue step ``step`` of run ``run_id``."""
    queue_name, func, timeout = STEPS[step]
    if step == "train":
        timeout = settings.training.job_timeout_seconds
    return q.enqueue(connection, q.JobSpec(
        queue_name, func, (run_id,), kwargs,
        {"timeout": timeout, "result_ttl": defaults.RESULT_TTL_SECONDS,
         "description": f"run {run_id}: {step}", "meta": {"run_id": run_id, "step": step}}))


def _next(settings: Settings, connection: redis.Redis, run: RunRecord, step: str, **kwargs: t.Any) -> None:
    job = enqueue_step(settings, connection, step, run.id, **kwargs)
    run.job_id = job.id
    save_run(settings.home, run)


@contextlib.contextmanager
def _step(settings: Settings, run_id: str, status: RunStatus | None,
          *, retrying: bool = False) -> Iterator[tuple[RunRecord, redis.Redis]]:
    """Load the run, move it to ``status``, hold the lock; on error fail the run (unless RQ will
    retry the job) and re-raise so RQ records the traceback too."""
    connection = _connection(settings)
    run = load_run(settings.home, run_id)
    if run.status.terminal:
        raise BotError(f"run {run_id} is already {run.status.value}; step skipped")
    job = get_current_job()
    if job is not None:
        run.job_id = job.id
    if status is not None and run.status != status:
        _move(settings, run, status)
    try:
        with _holding_lock(settings, connection, run):
            yield run, connection
    except Exception as exc:
        retries_left = getattr(job, "retries_left", None) if job is not None else None
        if retrying and retries_left:
            log.warning("run %s: %s failed (%s); RQ retries it (%d left)", run.id, run.status.value,
                        exc, retries_left)
            raise
        if isinstance(exc, StepUnavailable):
            message = str(exc)
        else:
            message = f"{run.status.value} failed: {type(exc).__name__}: {exc}"
            (run_dir(settings.home, run.id) / "logs").mkdir(parents=True, exist_ok=True)
            (run_dir(settings.home, run.id) / "logs" / f"{run.status.value}.error.txt").write_text(
                traceback.format_exc(), encoding="utf-8")
        fail_run(settings, connection, run, message)
        raise


def _import(module: str, what: str) -> t.Any:
    """Import a package module a step needs; StepUnavailable when it is not there yet."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise StepUnavailable(f"step {what!r} needs {module}, which is not installed "
                              f"({exc}); the run stops here and the serving model is unchanged") from exc


# --- ingest --------------------------------------------------------------------------------


def _corpora(settings: Settings) -> list[tuple[RepoConfig, str]]:
    """Every (repository, corpus name) that exists or should: default branch plus ``NAME@*``."""
    out = []
    root = settings.home / "corpus"
    for repo in settings.repos:
        out.append((repo, repo.branch))
        parent = (root / repo.name).parent
        for extra in sorted(parent.glob(Path(repo.name).name + "@*")) if parent.is_dir() else []:
            out.append((repo, unquote(extra.name.split("@", 1)[1])))
    return out


def _changed_records(corpus: t.Any, home: Path, name: str, result: t.Any) -> list[dict]:
    """Current corpus records of the paths an update changed (deleted or skipped ones have none)."""
    paths = list(getattr(result, "changed_paths", None) or [])
    if not paths:
        return []
    try:
        return list(corpus.records_for_paths(home, name, paths))
    except Exception as exc:  # the records only refine the threshold and feed forward evaluation
        log.warning("could not read the changed paths of %s: %s", name, exc)
        return []


def _count(value: t.Any) -> int:
    return len(value) if isinstance(value, (list, tuple, set)) else int(value or 0)


def _update_corpus(settings: Settings, connection: redis.Redis, repo: RepoConfig, branch: str | None,
                   *, full: bool = False, progress: Callable[[dict], None] | None = None) -> t.Any:
    """``trainer.corpus.update`` to the branch head. Two ingest workers never race: the corpus
    holds a file lock (flock) for the update, which a killed worker releases by dying."""
    corpus = _import("trainer.corpus", "ingest")
    spec = repo.corpus_spec(settings.token_for(repo.forge), branch)
    return corpus, spec, corpus.update(spec, settings.home, None, full=full, progress=progress)


def ingest(repo_name: str, branch: str | None = None, push: dict[str, t.Any] | None = None,
           reason: str = "push") -> dict[str, t.Any]:
    """Bring one corpus to its branch head after a push (or a reconciliation) and note the change.

    The update always goes to the branch head, not the push's ``after``: deliveries can arrive
    out of order, and the corpus diffs from what it last ingested, so force pushes and missed
    webhooks are covered.
    """
    settings = current()
    connection = _connection(settings)
    repo = settings.repo(repo_name)
    job = get_current_job()

    last = {"at": 0.0, "stage": None}

    def progress(event: dict[str, t.Any]) -> None:
        # job.meta shows where the ingest is; saved on each new stage and at most 10 times a second.
        now = time.monotonic()
        if job is None or (event.get("stage") == last["stage"] and now - last["at"] < 0.1):
            return
        last.update(at=now, stage=event.get("stage"))
        job.meta["progress"] = {k: v for k, v in event.items() if isinstance(v, (str, int, float))}
        with contextlib.suppress(Exception):
            job.save_meta()

    corpus, spec, result = _update_corpus(settings, connection, repo, branch, progress=progress)
    files = _count(getattr(result, "added", 0)) + _count(getattr(result, "modified", 0)) + \
        _count(getattr(result, "deleted", 0))
    changed = _changed_records(corpus, settings.home, spec.name, result)
    nbytes = sum(len(r["text"].encode("utf-8")) for r in changed)
    # Queued before the change is noted, so it sits on the gpu queue ahead of any run's
    # training on this push: the serving model is scored on code it has not seen.
    forward = _queue_forward_eval(settings, connection, spec.name, sorted({r["path"] for r in changed}),
                                  getattr(result, "commit", None), push, reason)
    if files or push is not None:
        sched.note_change(settings, connection, repo=repo.name, files=files, nbytes=nbytes,
                          push=push if push is not None else None)
    summary = result.as_dict() if hasattr(result, "as_dict") else {"commit": getattr(result, "commit", None)}
    log.info("ingest %s (%s): %s → %s, %d files changed", spec.name, reason,
             str(getattr(result, "previous_commit", None))[:12], str(getattr(result, "commit", ""))[:12], files)
    return {"corpus": spec.name, "reason": reason, "changed_files": files, "changed_bytes": nbytes,
            "commit": summary.get("commit"), "version": summary.get("version"), "forward_eval": forward}


def reconcile(repo_name: str) -> dict[str, t.Any]:
    """Fetch a repository and ingest if its tracked branch moved (catches missed webhooks)."""
    return ingest(repo_name, None, None, reason="reconcile")


def enqueue_ingest(settings: Settings, connection: redis.Redis, repo_name: str,
                   branch: str | None = None, push: dict[str, t.Any] | None = None) -> Job:
    return q.enqueue(connection, ingest_spec(repo_name, branch, push))


def ingest_spec(repo_name: str, branch: str | None, push: dict[str, t.Any] | None,
                reason: str = "push") -> q.JobSpec:
    """The ingest job for a push (used by the webhook inside its dedupe transaction)."""
    return q.JobSpec("ingest", "bot.jobs.ingest", (repo_name, branch, push, reason), {},
                     {"timeout": defaults.INGEST_JOB_TIMEOUT_SECONDS, "retry": q.ingest_retry(),
                      "result_ttl": defaults.RESULT_TTL_SECONDS,
                      "description": f"ingest {repo_name}@{branch or 'default'} ({reason})"})


def enqueue_reconcile(settings: Settings, connection: redis.Redis, repo_name: str) -> Job:
    return q.enqueue(connection, q.JobSpec(
        "ingest", "bot.jobs.reconcile", (repo_name,), {},
        {"timeout": defaults.INGEST_JOB_TIMEOUT_SECONDS, "retry": q.ingest_retry(),
         "result_ttl": defaults.RESULT_TTL_SECONDS, "description": f"reconcile {repo_name}"}))


# --- forward evaluation (freshness) --------------------------------------------------------


def serving_model(settings: Settings) -> tuple[int | None, str | None]:
    """(version, checkpoint) of the model that serves now, the base model included.

    A serving run's checkpoint when a run record serves the active version; otherwise the base
    model, which serves as the version the pointer names (``repotune up`` publishes it as
    version 1) — or as no version when nothing is published yet, as long as it is a local
    folder. (None, None) when there is no model at all.
    """
    version, checkpoint = serving_checkpoint(settings)
    if checkpoint:
        return version, checkpoint
    pointer = _pointer_version(settings)
    base = settings.base_model_path()
    if pointer is not None or Path(base).is_dir():
        return pointer, base
    return None, None


def _pointer_version(settings: Settings) -> int | None:
    """The version ``triton/<model>/serving.json`` names (read from disk; no Triton needed)."""
    try:
        from serving import ModelRepository

        return ModelRepository(settings.home / "triton", settings.serving.model_name, None,
                               keep=max(1, settings.serving.keep_versions)).current()
    except Exception:
        return None


def forward_eval_config(settings: Settings) -> t.Any:
    """The evaluation settings with the forward evaluation's task budget."""
    cfg = _eval_config(settings)
    return dataclasses.replace(cfg, num_tasks=settings.evaluation.forward_tasks)


def _queue_forward_eval(settings: Settings, connection: redis.Redis, corpus_name: str, paths: list[str],
                        commit: str | None, push: dict[str, t.Any] | None, reason: str) -> str | None:
    """Queue the forward evaluation of an ingest's changed files when a model serves; the job id
    or None. Never raises: ingestion and the runs it feeds must not depend on it."""
    if not paths or settings.evaluation.forward_tasks <= 0:
        return None
    try:
        if serving_model(settings)[1] is None:
            return None
        job = q.enqueue(connection, q.JobSpec(
            "gpu", "bot.jobs.forward_eval", (corpus_name, paths, commit, push, reason), {},
            {"timeout": freshness.JOB_TIMEOUT_SECONDS, "result_ttl": defaults.RESULT_TTL_SECONDS,
             "description": f"forward eval {corpus_name}@{str(commit)[:12]} ({len(paths)} files)",
             "meta": {"corpus": corpus_name, "commit": commit}}))
        return job.id
    except Exception as exc:
        log.warning("forward evaluation of %s@%s not queued: %s", corpus_name, str(commit)[:12], exc)
        return None


def forward_eval(corpus_name: str, paths: list[str], commit: str | None,
                 push: dict[str, t.Any] | None = None, reason: str = "push") -> dict[str, t.Any]:
    """Score the serving model on ``paths`` of a corpus (a push's new code, not yet trained on)
    and append the result to ``<home>/runs/freshness/<corpus>.jsonl``.

    A failure is logged and written as an ``ok: false`` line, never raised: the freshness curve
    is an observation, and nothing else waits on it.
    """
    settings = current()
    started = time.time()
    version, model = None, None
    entry: dict[str, t.Any] = {
        "corpus": corpus_name, "commit": commit, "push": commit, "time": started, "reason": reason,
        "delivery_id": (push or {}).get("delivery_id"), "paths": list(paths[:freshness.MAX_PATHS]),
        "paths_total": len(paths)}
    try:
        version, model = serving_model(settings)
        entry.update(serving_version=version, serving_checkpoint=model)
        if model is None:
            raise BotError("no model serves and no base model is on disk; nothing to score")
        corpus = _import("trainer.corpus", "forward_eval")
        evaluate_mod = _import("trainer.evaluate", "forward_eval")
        records = corpus.records_for_paths(settings.home, corpus_name, list(paths))
        scored = evaluate_mod.forward_eval(model, records, forward_eval_config(settings), push=commit,
                                           corpus_version=commit, progress=_job_progress())
        entry.update({k: scored.get(k) for k in ("created", "files", "model", "n_tasks", "scores",
                                                 "per_language")})
        entry.update(ok=True, error=None)
    except Exception as exc:  # recorded below; see the docstring
        entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        log.warning("forward evaluation of %s@%s failed: %s", corpus_name, str(commit)[:12], exc)
    entry["duration_s"] = round(time.time() - started, 3)
    try:
        freshness.append(freshness.history_path(settings.home, corpus_name), entry)
    except Exception as exc:
        log.warning("could not record the forward evaluation of %s@%s: %s", corpus_name, str(commit)[:12], exc)
    return entry


def _job_progress() -> Callable[[dict], None] | None:
    """Copy progress events into the current job's meta (at most twice a second)."""
    job = get_current_job()
    if job is None:
        return None
    last = [0.0]

    def record(event: dict[str, t.Any]) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and event.get("done") != event.get("total"):
            return
        last[0] = now
        job.meta["progress"] = {k: v for k, v in event.items() if isinstance(v, (str, int, float))}
        with contextlib.suppress(Exception):
            job.save_meta()

    return record


# --- the run's steps -----------------------------------------------------------------------


def run_ingest(run_id: str, full: bool = False) -> dict[str, t.Any]:
    """Step 1: every corpus to its branch head (a full rebuild with ``full``); record versions."""
    settings = current()
    with _step(settings, run_id, RunStatus.INGESTING) as (run, connection):
        if not settings.repos:
            raise BotError("no repositories are configured; add a [[repos]] table to repotune.toml")
        progress = _progress_recorder(settings, run)
        for repo, branch in _corpora(settings):
            _, spec, result = _update_corpus(settings, connection, repo, branch, full=full, progress=progress)
            run.corpus_version[spec.name] = {"version": getattr(result, "version", None),
                                             "commit": getattr(result, "commit", None)}
        save_run(settings.home, run)
        _next(settings, connection, run, "train")
    return run.corpus_version


def _shards(settings: Settings, split: str) -> list[Path]:
    corpus = _import("trainer.corpus", "train")
    files: list[Path] = []
    for repo, branch in _corpora(settings):
        with contextlib.suppress(Exception):
            files += list(corpus.shard_files(settings.home, repo.corpus_name(branch), split))
    return files


def _corpus_version_label(run: RunRecord) -> str:
    return ",".join(f"{k}:{v.get('version')}" for k, v in sorted(run.corpus_version.items()))


def finetune_config(settings: Settings, run: RunRecord) -> t.Any:
    """The :class:`trainer.finetune.FinetuneConfig` of a run, from the training settings."""
    finetune = _import("trainer.finetune", "train")
    tr = settings.training
    base = settings.base_model_path()
    if tr.continue_from_serving:  # continued training: start where the serving model left off
        base = serving_checkpoint(settings)[1] or base
    values = {"base": base, "train_files": [str(p) for p in _shards(settings, "train")],
              "heldout_files": [str(p) for p in _shards(settings, "heldout")],
              "output_dir": str(run_dir(settings.home, run.id) / "train"),
              "block_size": tr.block_size, "learning_rate": tr.learning_rate, "num_epochs": tr.num_epochs,
              "max_steps": tr.max_steps, "per_device_batch": tr.per_device_batch,
              "grad_accum": tr.grad_accum, "warmup_steps": tr.warmup_steps, "precision": tr.precision,
              "gradient_checkpointing": tr.gradient_checkpointing, "deepspeed": tr.deepspeed,
              "cache_dir": str(settings.home / "cache" / "tokenized")}
    known = {f.name for f in dataclasses.fields(finetune.FinetuneConfig)}
    return finetune.FinetuneConfig(**{k: v for k, v in values.items() if k in known})


def train(run_id: str) -> dict[str, t.Any]:
    """Step 2: fine-tune the base model on the corpora (in-process on CPU, or the DeepSpeed launcher)."""
    settings = current()
    with _step(settings, run_id, RunStatus.TRAINING) as (run, connection):
        finetune = _import("trainer.finetune", "train")
        cfg = finetune_config(settings, run)
        if not cfg.train_files:
            raise BotError("the training split is empty: no corpus has train shards yet")
        progress = _progress_recorder(settings, run)
        if settings.training.gpus > 0 or settings.training.hostfile:
            logs = run_dir(settings.home, run.id) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            result = finetune.launch(cfg, gpus=settings.training.gpus or None,
                                     hostfile=settings.training.hostfile, log_path=logs / "train.log",
                                     progress=progress)
        else:
            result = finetune.train(cfg, progress=progress)
        run.checkpoint = str(result.checkpoint)
        run.metrics["base"] = str(cfg.base)
        for name in ("steps", "tokens", "train_loss", "heldout_loss", "wall_time_s", "tokens_per_s"):
            run.metrics[name] = getattr(result, name, None)
        _move(settings, run, RunStatus.EVALUATING)
        _next(settings, connection, run, "evaluate")
    return run.metrics


def serving_checkpoint(settings: Settings) -> tuple[int | None, str | None]:
    """(version, checkpoint) of the model serving now, from the run records; (None, None) if none."""
    serving = [r for r in list_runs(settings.home, limit=None)
               if r.version is not None and r.status == RunStatus.SERVING]
    active = _active_version(settings)
    for run in serving:
        if active is None or run.version == active:
            return run.version, run.checkpoint
    return None, None


def _active_version(settings: Settings) -> int | None:
    try:
        return _model_repository(settings).current()
    except Exception:
        return None


def _eval_config(settings: Settings) -> t.Any:
    evaluate_mod = _import("trainer.evaluate", "evaluate")
    ev = dataclasses.asdict(settings.evaluation)
    known = {f.name for f in dataclasses.fields(evaluate_mod.EvalConfig)}
    return evaluate_mod.EvalConfig(**{k: v for k, v in ev.items() if k in known and v is not None
                                      and not (k == "tolerances" and not v)})


def _heldout_records(settings: Settings) -> list[dict]:
    corpus = _import("trainer.corpus", "evaluate")
    return list(corpus.read_records(_shards(settings, "heldout")))


def _compare(settings: Settings, run: RunRecord, out_dir: Path, progress: t.Any) -> t.Any:
    evaluate_mod = _import("trainer.evaluate", "evaluate")
    _, baseline = serving_checkpoint(settings)
    baseline = baseline or settings.base_model_path()
    comparison = evaluate_mod.compare(run.checkpoint, baseline, _heldout_records(settings),
                                      _eval_config(settings), corpus_version=_corpus_version_label(run),
                                      out_dir=out_dir, progress=progress)
    run.metrics["baseline"] = str(baseline)
    gate = getattr(comparison, "gate", None)
    run.metrics["gate"] = {"passed": bool(gate.passed) if gate else True,
                           "reasons": list(getattr(gate, "reasons", []) or [])}
    for name in ("deltas", "candidate", "baseline_scores"):
        value = getattr(comparison, name, None)
        if isinstance(value, dict):
            run.metrics[f"eval_{name}"] = value
    if (out_dir / "report.md").exists():
        run.eval_report = str(out_dir / "report.md")
    return gate


def evaluate(run_id: str) -> dict[str, t.Any]:
    """Step 3: compare the candidate with the serving model on held-out tasks; the gate decides."""
    settings = current()
    with _step(settings, run_id, RunStatus.EVALUATING) as (run, connection):
        gate = _compare(settings, run, run_dir(settings.home, run.id) / "eval",
                        _progress_recorder(settings, run))
        if gate is not None and not gate.passed:
            run.error = "; ".join(gate.reasons) or "the candidate did not beat the serving model"
            _move(settings, run, RunStatus.REJECTED, "gate failed")
            _finish(settings, connection, run)
            return run.metrics
        _move(settings, run, RunStatus.CONVERTING, "gate passed")
        _next(settings, connection, run, "convert")
    return run.metrics


def convert(run_id: str) -> str:
    """Step 4: turn the checkpoint into a Triton artifact (python backend or FasterTransformer)."""
    settings = current()
    with _step(settings, run_id, RunStatus.CONVERTING) as (run, connection):
        converter = _import("converter", "convert")
        sv = settings.serving
        result = converter.convert(run.checkpoint, run_dir(settings.home, run.id) / "artifact",
                                   to=sv.backend, gpus=sv.gpus, dtype=sv.dtype, model_name=sv.model_name,
                                   progress=_progress_recorder(settings, run))
        run.artifact = str(result.artifact)
        _move(settings, run, RunStatus.PUBLISHING)
        _next(settings, connection, run, "publish")
    return run.artifact


def _model_repository(settings: Settings) -> t.Any:
    serving = _import("serving", "publish")
    if not settings.serving.triton_url:
        raise BotError("no Triton to publish to: set serving.triton_url (REPOTUNE_SERVING_TRITON_URL) "
                       "or run under `repotune up`, which starts the bundled Triton")
    return serving.ModelRepository(settings.home / "triton", settings.serving.model_name,
                                   settings.serving.triton_url, keep=settings.serving.keep_versions)


def publish(run_id: str) -> int:
    """Step 5: publish the artifact as a new version and switch serving to it."""
    settings = current()
    with _step(settings, run_id, RunStatus.PUBLISHING) as (run, connection):
        repository = _model_repository(settings)
        progress = _progress_recorder(settings, run)
        version = repository.publish(run.artifact, progress=progress)
        repository.activate(version, progress=progress)
        run.version = int(version)
        _move(settings, run, RunStatus.SERVING, f"version {version}")
        _finish(settings, connection, run)
    return run.version


# --- operator actions ----------------------------------------------------------------------


def promote(run_id: str) -> int | None:
    """Serve run ``run_id``: a rejected run is converted and published anyway; a run that was
    already published is activated again."""
    settings = current()
    connection = _connection(settings)
    run = load_run(settings.home, run_id)
    if run.version is not None:
        _model_repository(settings).activate(run.version)
        return run.version
    if run.status != RunStatus.REJECTED or not run.checkpoint:
        raise BotError(f"run {run_id} is {run.status.value}; only a rejected or published run can be promoted")
    model = run.model or settings.serving.model_name
    if not sched.acquire_lock(connection, model, run.id, settings.policy.lock_lease_seconds):
        raise BotError(f"run {sched.lock_holder(connection, model)} holds {model}; promote after it ends")
    run.error = None
    _move(settings, run, RunStatus.CONVERTING, "promoted by hand")
    _next(settings, connection, run, "convert")
    return None


def rollback(version: int | None = None) -> int:
    """Serve an older version (the previous one by default)."""
    settings = current()
    return int(_model_repository(settings).rollback(to=version))


def eval(run_id: str) -> dict[str, t.Any]:  # noqa: A001 - the job kind's name
    """Re-run a run's evaluation against the serving model; updates metrics and the report."""
    settings = current()
    run = load_run(settings.home, run_id)
    if not run.checkpoint:
        raise BotError(f"run {run_id} has no checkpoint to evaluate (status {run.status.value})")
    _compare(settings, run, run_dir(settings.home, run.id) / "eval", _progress_recorder(settings, run))
    save_run(settings.home, run)
    return run.metrics


def enqueue_promote(settings: Settings, connection: redis.Redis, run_id: str) -> str:
    load_run(settings.home, run_id)
    return q.enqueue(connection, q.JobSpec("deploy", "bot.jobs.promote", (run_id,), {},
                                           {"timeout": defaults.DEPLOY_JOB_TIMEOUT_SECONDS})).id


def enqueue_rollback(settings: Settings, connection: redis.Redis, version: int | None = None) -> str:
    return q.enqueue(connection, q.JobSpec("deploy", "bot.jobs.rollback", (version,), {},
                                           {"timeout": defaults.DEPLOY_JOB_TIMEOUT_SECONDS})).id


def enqueue_eval(settings: Settings, connection: redis.Redis, run_id: str) -> str:
    load_run(settings.home, run_id)
    return q.enqueue(connection, q.JobSpec("gpu", "bot.jobs.eval", (run_id,), {},
                                           {"timeout": defaults.GPU_JOB_TIMEOUT_SECONDS})).id


def tick() -> dict[str, t.Any]:
    """The scheduler tick as a job (``control`` queue), for deployments without ``repotune up``."""
    settings = current()
    return sched.tick(settings, _connection(settings))
