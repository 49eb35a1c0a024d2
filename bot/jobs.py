"""RQ job functions, one per kind, each a few lines around one package call.

    ingest_job       (queue ingest)  trainer.corpus.update for a push; retried with back-off
    reconcile_job    (queue ingest)  the same, for every tracked branch (webhooks may have been missed)
    retire_job       (queue ingest)  a deleted branch: retire its corpus (bot.recipe.retire)
    forward_eval_job (queue gpu)     trainer.evaluate.forward_eval of the serving model (bot.freshness)
    editor_eval_job  (queue gpu)     a version that started serving, scored on editor tasks (bot.freshness)
    ingest_step      (queue ingest)  a run's step 1: trainer.corpus.update of every corpus
    train_step       (queue gpu)     step 2: trainer.finetune.train (CPU, in-process) or .launch (GPUs)
    evaluate_step    (queue gpu)     step 3: trainer.evaluate.compare against the serving model → gate
    convert_step     (queue gpu)     step 4: converter.convert → artifact (a LoRA adapter: itself, or merged)
    publish_step     (queue deploy)  step 5: the model's repository publish + activate (or a canary)
    promote_job      (queue deploy)  a rejected run: convert + publish anyway; a published one: activate
    rollback_job     (queue deploy)  serving.ModelRepository.rollback
    eval_job         (queue gpu)     re-run the evaluation of a run (no status change)
    tick_job         (queue control) bot.scheduler.tick, for deployments without ``repotune up``

The names end in ``_job`` / ``_step`` so they never shadow the package functions they call.
Queues, dotted paths and the run's bookkeeping (status moves, the model's lease, failure) are
:mod:`bot.lifecycle`'s; what the packages are given is :mod:`bot.recipe`'s. trainer, converter
and serving are imported inside the jobs: they pull in torch and Triton clients.
"""

from __future__ import annotations

import logging
import typing as t

import redis

from bot import freshness, lifecycle, locks, models, recipe, serving_version
from bot import queue as q
from bot import scheduler as sched
from bot.config import RepoConfig, Settings, current
from bot.errors import BotError
from bot.progress import Progress, recorder
from bot.runs import RunRecord, RunStatus, load_run, run_dir, save_run

if t.TYPE_CHECKING:
    from trainer.corpus import CorpusResult
    from trainer.evaluate import GateDecision

log = logging.getLogger(__name__)


# --- ingestion -----------------------------------------------------------------------------


def _update_or_retire(settings: Settings, repo: RepoConfig, branch: str | None, *, full: bool = False,
                      progress: Progress | None = None, reason: str = "push") -> CorpusResult | None:
    """``trainer.corpus.update`` of one branch's corpus; None when the branch is gone.

    A tracked branch other than the default one that the remote no longer has (merged and
    deleted) retires its corpus (:func:`bot.recipe.retire`) instead of failing every later
    update; one that is there again after being retired is revived. A failure with the branch
    still present (the remote unreachable, say) is raised as before."""
    from trainer import corpus
    from trainer.errors import RepositoryError

    spec = repo.corpus_spec(settings.token_for(repo.forge), branch)
    try:
        result = corpus.update(spec, settings.home, None, full=full, progress=progress)
    except RepositoryError:
        if branch in (None, repo.branch) or not recipe.branch_gone(settings.home, spec.name, branch):
            raise
        if recipe.retire(settings.home, spec.name, branch, f"branch {branch} is gone ({reason})"):
            log.warning("corpus %s retired: branch %s of %s is gone", spec.name, branch, repo.name)
        return None
    if recipe.revive(settings.home, spec.name):
        log.info("corpus %s revived: branch %s was pushed again", spec.name, branch)
    return result


def ingest_job(repo_name: str, branch: str | None = None, push: dict[str, t.Any] | None = None,
               reason: str = "push") -> dict[str, t.Any]:
    """Bring one corpus to its branch head after a push (or a reconciliation) and note the change.

    The update always goes to the branch head, not the push's ``after``: deliveries can arrive
    out of order, and the corpus diffs from what it last ingested, so force pushes and missed
    webhooks are covered. Two ingest workers never race: the corpus holds a file lock (flock)
    for the update, which a killed worker releases by dying. A branch found deleted retires its
    corpus (:func:`_update_or_retire`).
    """
    settings = current()
    conn = lifecycle.connection(settings)
    repo = settings.repo(repo_name)
    name = repo.corpus_name(branch)
    result = _update_or_retire(settings, repo, branch, progress=recorder(every_s=0.1), reason=reason)
    if result is None:
        return {"corpus": name, "reason": reason, "retired": True, "changed_files": 0}
    files = result.added + result.modified + result.deleted
    changed = _changed_records(settings, name, result.changed_paths)
    nbytes = sum(len(r["text"].encode("utf-8")) for r in changed)
    # Queued before the change is noted, so it sits on the gpu queue ahead of any run's
    # training on this push: the serving model is scored on code it has not seen.
    forward = [_queue_forward_eval(models.settings_for(settings, spec), conn, name,
                                   sorted({r["path"] for r in changed}), result.commit, push, reason)
               for spec in models.models_for_repo(settings, repo.name)]
    forward = forward[0] if len(forward) == 1 else [f for f in forward if f]
    if files or push is not None:
        sched.note_change(settings, conn, repo=repo.name, files=files, nbytes=nbytes, push=push)
    log.info("ingest %s (%s): %s → %s, %d files changed", name, reason,
             str(result.previous_commit)[:12], str(result.commit)[:12], files)
    return {"corpus": name, "reason": reason, "changed_files": files, "changed_bytes": nbytes,
            "commit": result.commit, "version": result.version, "forward_eval": forward}


def reconcile_job(repo_name: str) -> dict[str, t.Any]:
    """Fetch a repository and ingest every tracked branch that moved (catches missed webhooks);
    a branch found deleted retires its corpus, one pushed again revives it."""
    settings = current()
    out = {}
    for repo, branch in recipe.corpora(settings, retired=True):
        if repo.name == repo_name:
            out[repo.corpus_name(branch)] = ingest_job(repo_name, branch, None, reason="reconcile")
    return out


def retire_job(repo_name: str, branch: str, push: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """A tracked branch was deleted (a forge's deletion push): retire its corpus now.

    The corpus is fetched rather than retired on the webhook's word, so a deletion delivered
    after the branch was created again leaves it live (and brings it to the new head)."""
    settings = current()
    repo = settings.repo(repo_name)
    name = repo.corpus_name(branch)
    if not (settings.home / "corpus" / name).is_dir():
        return {"corpus": name, "retired": False, "reason": "no corpus was built for this branch"}
    result = _update_or_retire(settings, repo, branch, reason="branch deleted")
    return {"corpus": name, "retired": result is None,
            "commit": None if result is None else result.commit}


def _changed_records(settings: Settings, name: str, paths: list[str]) -> list[dict]:
    """Current corpus records of the paths an update changed (deleted or skipped ones have none)."""
    from trainer import corpus

    if not paths:
        return []
    try:
        return list(corpus.records_for_paths(settings.home, name, list(paths)))
    except Exception as exc:  # the records only refine the threshold and feed forward evaluation
        log.warning("could not read the changed paths of %s: %s", name, exc)
        return []


def _queue_forward_eval(settings: Settings, conn: redis.Redis, corpus_name: str, paths: list[str],
                        commit: str | None, push: dict[str, t.Any] | None, reason: str) -> str | None:
    """Queue the forward evaluation of an ingest's changed files when a model serves; the job id
    or None. Never raises: ingestion and the runs it feeds must not depend on it."""
    if not paths or settings.evaluation.forward_tasks <= 0:
        return None
    try:
        if serving_version.serving_model(settings)[1] is None:
            return None
        spec = lifecycle.forward_eval_spec(corpus_name, paths, commit, push, reason,
                                           freshness.JOB_TIMEOUT_SECONDS, _model_arg(settings))
        return q.enqueue(conn, spec).id
    except Exception as exc:
        log.warning("forward evaluation of %s@%s not queued: %s", corpus_name, str(commit)[:12], exc)
        return None


def _model_arg(settings: Settings) -> str | None:
    """The model name a queued job carries: None for the implicit model (jobs queued before
    [[models]] existed look the same), the name otherwise."""
    spec = models.get_model(settings, None)
    return None if spec.implicit else spec.name


def forward_eval_job(corpus_name: str, paths: list[str], commit: str | None,
                     push: dict[str, t.Any] | None = None, reason: str = "push",
                     model: str | None = None) -> dict[str, t.Any]:
    """Score ``model``'s serving version on ``paths`` of a corpus (a push's new code, not yet
    trained on) and append the result, tagged with the model, to
    ``<home>/runs/freshness/<corpus>.jsonl``.

    A failure is logged and written as an ``ok: false`` line, never raised: the freshness curve
    is an observation, and nothing else waits on it.
    """
    settings = models.settings_for(current(), model)
    entry = freshness.new_entry(corpus_name, paths, commit, push, reason)
    entry["model"] = settings.serving.model_name
    try:
        from trainer import corpus, evaluate

        version, model = serving_version.serving_model(settings)
        entry.update(serving_version=version, serving_checkpoint=model)
        if model is None:
            raise BotError("no model serves and no base model is on disk; nothing to score")
        records = corpus.records_for_paths(settings.home, corpus_name, list(paths))
        scored = evaluate.forward_eval(model, records, recipe.forward_eval_config(settings), push=commit,
                                       corpus_version=commit, progress=recorder(every_s=0.5))
        freshness.record_scores(entry, scored)
    except Exception as exc:  # recorded below; see the docstring
        entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        log.warning("forward evaluation of %s@%s failed: %s", corpus_name, str(commit)[:12], exc)
    return freshness.finish_entry(settings.home, entry)


def editor_eval_job(version: int, previous: int | None, checkpoint: str | None,
                    run_id: str | None = None) -> dict[str, t.Any]:
    """Score ``version``, which just started serving, on the completions developers accepted
    while ``previous`` served (:func:`bot.freshness.editor_eval`); recorded, never raised."""
    return freshness.editor_eval(current(), version, previous, checkpoint, run_id)


# --- the run's steps -----------------------------------------------------------------------


def _step_progress(settings: Settings, run: RunRecord) -> Progress | None:
    return recorder(run=run, home=settings.home)


def ingest_step(run_id: str, full: bool = False) -> dict[str, t.Any]:
    """Step 1: every live corpus to its branch head (a full rebuild with ``full``); record versions.
    A branch deleted since its last ingest retires its corpus here rather than failing the run."""
    with lifecycle.step(run_id, RunStatus.INGESTING) as (settings, run, conn):
        if not settings.repos:
            raise BotError("no repositories are configured; add a [[repos]] table to repotune.toml")
        progress = _step_progress(settings, run)
        for repo, branch in recipe.corpora(settings):
            result = _update_or_retire(settings, repo, branch, full=full, progress=progress,
                                       reason=f"run {run.id}")
            if result is not None:  # None: the branch is gone, its corpus retired
                run.corpus_version[repo.corpus_name(branch)] = {"version": result.version,
                                                                "commit": result.commit}
        save_run(settings.home, run)
        lifecycle.advance(settings, conn, run, "train")
    return run.corpus_version


def train_step(run_id: str) -> dict[str, t.Any]:
    """Step 2: fine-tune the base model on the corpora (in-process on CPU, or the DeepSpeed launcher)."""
    from trainer import finetune

    with lifecycle.step(run_id, RunStatus.TRAINING) as (settings, run, conn):
        cfg = recipe.finetune_config(settings, run)
        if not cfg.train_files:
            raise BotError("the training split is empty: no corpus has train shards yet")
        progress = _step_progress(settings, run)
        tr = settings.training
        if tr.gpus > 0 or tr.hostfile:
            logs = run_dir(settings.home, run.id) / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            result = finetune.launch(cfg, gpus=tr.gpus or None, hostfile=tr.hostfile,
                                     log_path=logs / "train.log", progress=progress)
        else:
            result = finetune.train(cfg, progress=progress)
        run.checkpoint = str(result.checkpoint)
        run.metrics.update(base=str(cfg.base), steps=result.steps, tokens=result.tokens,
                           train_loss=result.train_loss, heldout_loss=result.heldout_loss,
                           wall_time_s=result.wall_time_s, tokens_per_s=result.tokens_per_s)
        lifecycle.move(settings, run, RunStatus.EVALUATING)
        lifecycle.advance(settings, conn, run, "evaluate")
    return run.metrics


def _compare(settings: Settings, run: RunRecord) -> GateDecision | None:
    """trainer.evaluate.compare of the run's checkpoint with the serving model (or the base);
    the verdict and both models' scores go into the run record. Returns the gate."""
    from trainer import evaluate

    out_dir = run_dir(settings.home, run.id) / "eval"
    baseline = serving_version.baseline(settings)  # a LoRA model's: base + its serving adapter
    comparison = evaluate.compare(run.checkpoint, baseline, recipe.heldout_records(settings),
                                  recipe.eval_config(settings),
                                  corpus_version=recipe.corpus_version_label(run), out_dir=out_dir,
                                  progress=_step_progress(settings, run))
    recipe.record_comparison(run, comparison, baseline, out_dir)
    run.metrics["editor_tasks"] = freshness.editor_comparison(settings, run.id, run.checkpoint, baseline,
                                                              serving_version.active_version(settings))
    return comparison.gate


def evaluate_step(run_id: str) -> dict[str, t.Any]:
    """Step 3: compare the candidate with the serving model on held-out tasks; the gate decides."""
    with lifecycle.step(run_id, RunStatus.EVALUATING) as (settings, run, conn):
        gate = _compare(settings, run)
        editor = freshness.editor_gate(settings, run.metrics.get("editor_tasks"))
        if (gate is not None and not gate.passed) or editor:
            reasons = [*(gate.reasons if gate is not None and not gate.passed else []), *([editor] if editor else [])]
            run.error = "; ".join(reasons) or "the candidate did not beat the serving model"
            lifecycle.move(settings, run, RunStatus.REJECTED, "gate failed")
            lifecycle.finish(settings, conn, run)
            return run.metrics
        lifecycle.move(settings, run, RunStatus.CONVERTING, "gate passed")
        lifecycle.advance(settings, conn, run, "convert")
    return run.metrics


def convert_step(run_id: str) -> str:
    """Step 4: turn the checkpoint into a Triton artifact (python backend or FasterTransformer).

    A LoRA run's checkpoint is an adapter folder: on the python backend that folder *is* the
    artifact (the adapter repository publishes it beside the loaded base; nothing to convert);
    for a backend that cannot apply adapters it is merged into a full checkpoint first
    (:func:`trainer.lora.merge_adapter`) and converted like a full run's."""
    import converter
    from families.adapters import is_adapter

    with lifecycle.step(run_id, RunStatus.CONVERTING) as (settings, run, conn):
        sv = settings.serving
        checkpoint = run.checkpoint
        if is_adapter(checkpoint) and serving_version.serves_adapters(settings):
            run.artifact = str(checkpoint)
            lifecycle.move(settings, run, RunStatus.PUBLISHING, "adapter: published as trained, no conversion")
            lifecycle.advance(settings, conn, run, "publish")
            return run.artifact
        if is_adapter(checkpoint):
            from trainer.lora import merge_adapter

            merged = run_dir(settings.home, run.id) / "merged"
            if not (merged / "config.json").is_file():  # a retried step finds it merged already
                merge_adapter(checkpoint, merged)
            checkpoint = str(merged)
        result = converter.convert(checkpoint, run_dir(settings.home, run.id) / "artifact",
                                   to=sv.backend, gpus=sv.gpus, dtype=sv.dtype, model_name=sv.model_name,
                                   device=sv.device, progress=_step_progress(settings, run))
        run.artifact = str(result.artifact)
        lifecycle.move(settings, run, RunStatus.PUBLISHING)
        lifecycle.advance(settings, conn, run, "publish")
    return run.artifact


def publish_step(run_id: str) -> int:
    """Step 5: publish the artifact as a new version and switch serving to it; with ``[canary]
    enabled`` (and a production version to compare with), serve it to a share of clients instead
    and keep the model until the scheduler's acceptance test decides (:mod:`bot.canary`).

    A LoRA model on the python backend publishes an adapter version and activates it without
    reloading its base; its canary is the candidate adapter on the same loaded base, for the
    same share of clients (:meth:`serving.adapters.AdapterRepository.start_canary`)."""
    with lifecycle.step(run_id, RunStatus.PUBLISHING) as (settings, run, conn):
        repository = serving_version.repository(settings)
        progress = _step_progress(settings, run)
        version = repository.publish(run.artifact, progress=progress)
        run.version = int(version)
        previous = repository.current()
        note = f"version {version}"
        if settings.canary.enabled and previous is not None:
            from bot import canary

            state = canary.start(settings, repository, run, version, progress=progress)
            lifecycle.move(settings, run, RunStatus.CANARY, f"version {version} to {state.share:.0%} of clients")
            return run.version  # the model stays this run's until the canary is decided
        repository.activate(version, progress=progress)
        freshness.queue_editor_eval(settings, conn, run.version, previous, run.checkpoint, run.id)
        lifecycle.move(settings, run, RunStatus.SERVING, note)
        lifecycle.finish(settings, conn, run)
    return run.version


# --- operator actions ----------------------------------------------------------------------


def promote_job(run_id: str) -> int | None:
    """Serve run ``run_id``: a rejected run is converted and published anyway; a run that was
    already published is activated again."""
    run = load_run(current().home, run_id)
    settings = lifecycle.run_settings(current(), run, snapshot=False)
    conn = lifecycle.connection(settings)
    if run.version is not None:
        serving_version.repository(settings).activate(run.version)
        return run.version
    if run.status != RunStatus.REJECTED or not run.checkpoint:
        raise BotError(f"run {run_id} is {run.status.value}; only a rejected or published run can be promoted")
    model = lifecycle.model_of(settings, run)
    if not locks.acquire_lock(conn, model, run.id, settings.policy.lock_lease_seconds):
        raise BotError(f"run {locks.lock_holder(conn, model)} holds {model}; promote after it ends")
    run.error = None
    lifecycle.move(settings, run, RunStatus.CONVERTING, "promoted by hand")
    lifecycle.advance(settings, conn, run, "convert")
    return None


def rollback_job(version: int | None = None, model: str | None = None) -> int:
    """Serve an older version of ``model`` (the previous one by default; None: the only model)."""
    return int(serving_version.repository(models.settings_for(current(), model)).rollback(to=version))


def eval_job(run_id: str) -> dict[str, t.Any]:
    """Re-run a run's evaluation against the serving model; updates metrics and the report.
    With the settings of now, not the run's snapshot: re-evaluating after the gate's settings
    changed is what the command is for."""
    run = load_run(current().home, run_id)
    settings = lifecycle.run_settings(current(), run, snapshot=False)
    if not run.checkpoint:
        raise BotError(f"run {run_id} has no checkpoint to evaluate (status {run.status.value})")
    _compare(settings, run)
    save_run(settings.home, run)
    return run.metrics


def tick_job() -> dict[str, t.Any]:
    """The scheduler tick as a job (``control`` queue), for deployments without ``repotune up``."""
    settings = current()
    return sched.tick(settings, lifecycle.connection(settings))
