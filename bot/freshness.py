"""The served model's freshness curve: forward evaluation on each push's new code.

After an ingest brings a push's changes into a corpus, and before any run trains on them, the
``forward_eval_job`` (queue ``gpu``, :func:`bot.jobs.forward_eval_job`) scores the model serving now
on exactly the files the push changed that landed in the corpus — code it has never seen — with
:func:`trainer.evaluate.forward_eval`, and appends one JSON line per push to

    <home>/runs/freshness/<corpus>.jsonl

Each line: ``corpus``, ``commit`` (the corpus commit scored; also ``push``, which labels the
chart), ``time``, ``reason`` (push or reconcile), ``delivery_id``, ``serving_version`` (None when
the base model is used and nothing is published), ``serving_checkpoint``, ``files``, ``paths`` (at
most :data:`MAX_PATHS`; ``paths_total`` counts all), ``n_tasks``, ``scores``, ``per_language``,
``ok``, ``error``, ``duration_s`` and ``model`` (the model scored; one history file holds
every model learning from the corpus, :func:`summary` picks one). A failed evaluation is a line with ``ok: false`` and the
error: it is recorded and logged, never raised, so it cannot stop ingestion or a run.

This module holds the file format (the entry, paths, locked atomic appends, reading) and the
summary the status API and page show; the job itself lives with the others in :mod:`bot.jobs`.

The second curve comes from editor use: with ``serving.store_code`` on, the completions
developers accepted become tasks (:mod:`serving.editor_tasks`); each version that starts serving
is scored on its predecessor's, and each candidate beside the serving model, into
``<home>/runs/editor-freshness/<model>.jsonl`` (the second half of this module, and
docs/evaluation.md "Editor tasks").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import time
import typing as t
from collections.abc import Iterator, Mapping
from pathlib import Path

from bot.errors import BotError
from durable import write_atomic

if t.TYPE_CHECKING:
    from bot.config import Settings
    from serving.editor_tasks import EditorTask
    from trainer.evaluate import EvalConfig, ModelScores

log = logging.getLogger(__name__)

JOB_TIMEOUT_SECONDS = 1800
"""Wall-clock limit of one forward-evaluation job (a few dozen tasks; minutes even on a CPU)."""

MAX_PATHS = 200
"""Most changed paths listed in one history line (``paths_total`` counts them all)."""

STATUS_POINTS = 10
"""History points per corpus in :func:`bot.status.collect` and on the status page."""

SUMMARY_METRICS = ("edit_similarity", "exact_match", "identifier_match", "loss")
"""Scores kept in the status summary (the history file keeps every one)."""

SUFFIX = ".jsonl"


def root(home: str | os.PathLike[str]) -> Path:
    """The folder holding every corpus's freshness history."""
    return Path(home) / "runs" / "freshness"


def history_path(home: str | os.PathLike[str], corpus: str) -> Path:
    """``<home>/runs/freshness/<corpus>.jsonl`` (a corpus name may hold one ``/``)."""
    if not corpus or corpus.startswith((".", "/")) or ".." in corpus.split("/"):
        raise ValueError(f"{corpus!r} is not a corpus name")
    return root(home) / f"{corpus}{SUFFIX}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one history file (two GPU workers may finish at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append(path: Path, entry: Mapping[str, t.Any]) -> Path:
    """Add one JSON line to ``path``: under a lock, the whole file rewritten atomically
    (:func:`durable.write_atomic`), so readers never see half a line and concurrent writers lose
    none. Rewriting rather than ``O_APPEND`` costs a copy of a file of a few hundred short lines,
    and buys the same guarantee every other file under ``REPOTUNE_HOME`` has: a crash mid-write
    leaves the previous history whole."""
    line = json.dumps(entry, sort_keys=True, default=str)
    with _locked(path):
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        write_atomic(path, existing + line + "\n")
    return path


def new_entry(corpus: str, paths: list[str], commit: str | None, push: Mapping[str, t.Any] | None,
              reason: str) -> dict[str, t.Any]:
    """The start of one history line: what is scored, before the scoring (see the module doc)."""
    return {"corpus": corpus, "commit": commit, "push": commit, "time": time.time(), "reason": reason,
            "delivery_id": (push or {}).get("delivery_id"), "paths": list(paths[:MAX_PATHS]),
            "paths_total": len(paths)}


def record_scores(entry: dict[str, t.Any], scored: Mapping[str, t.Any]) -> None:
    """Copy :func:`trainer.evaluate.forward_eval`'s result into ``entry`` and mark it ok."""
    entry.update({k: scored.get(k) for k in ("created", "files", "model", "n_tasks", "scores",
                                             "per_language")})
    entry.update(ok=True, error=None)


def finish_entry(home: str | os.PathLike[str], entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """Stamp the duration and append ``entry`` to its corpus's history; a write failure is
    logged, not raised (the curve is an observation). Returns the entry."""
    entry["duration_s"] = round(time.time() - entry["time"], 3)
    try:
        append(history_path(home, entry["corpus"]), entry)
    except Exception as exc:
        log.warning("could not record the forward evaluation of %s@%s: %s", entry["corpus"],
                    str(entry.get("commit"))[:12], exc)
    return entry


def read(path: str | os.PathLike[str], last: int | None = None) -> list[dict[str, t.Any]]:
    """Entries of one history file, oldest first (the ``last`` N when given; [] if absent).
    A line that is not JSON (written by hand, say) is skipped rather than hiding the rest."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out[-last:] if last else out


def histories(home: str | os.PathLike[str]) -> dict[str, Path]:
    """Corpus name → its freshness file, for every corpus that has one (sorted by name)."""
    base = root(home)
    if not base.is_dir():
        return {}
    found = {p.relative_to(base).as_posix()[:-len(SUFFIX)]: p
             for p in base.rglob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")}
    return dict(sorted(found.items()))


def point(entry: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The short form of one entry for status output: identity, outcome, headline scores."""
    scores = entry.get("scores") or {}
    return {"commit": entry.get("commit"), "time": entry.get("time"), "reason": entry.get("reason"),
            "serving_version": entry.get("serving_version"), "files": entry.get("files"),
            "n_tasks": entry.get("n_tasks"), "ok": bool(entry.get("ok")), "error": entry.get("error"),
            "scores": {m: scores[m] for m in SUMMARY_METRICS if m in scores}}


def summary(home: str | os.PathLike[str], last: int = STATUS_POINTS, *, model: str | None = None,
            unnamed: str | None = None) -> dict[str, list[dict[str, t.Any]]]:
    """Corpus name → its ``last`` history points (oldest first), in :func:`point` form.

    With ``model``, only that model's points (each line names the model it scored; a line
    written before models had names belongs to ``unnamed``, the implicit model), and only the
    corpora it has points for."""
    if model is None:
        return {name: [point(e) for e in read(path, last)] for name, path in histories(home).items()}
    out = {}
    for name, path in histories(home).items():
        mine = [e for e in read(path) if (e.get("model") or unnamed) == model]
        if mine:
            out[name] = [point(e) for e in mine[-last:]]
    return out


# --- the second curve: accepted completions as tasks ------------------------------------------
#
# With ``serving.store_code`` on, the completions developers accepted (and what they kept of
# them) are completion tasks from real editor use (:mod:`serving.editor_tasks`). When a version
# starts serving it is scored on the tasks gathered while the previous version served, one line
# per version in ``<home>/runs/editor-freshness/<model>.jsonl`` (``source: "editor"``); a run's
# evaluation scores its candidate and the serving model on the tasks of the serving version
# (``run.json`` ``metrics.editor_tasks``, and a ``candidate`` line in the same history).

EDITOR_SOURCE = "editor"
"""``source`` of the editor history's lines (the push history's lines have none)."""

EDITOR_METRICS = ("edit_similarity", "exact_match", "identifier_match", "latency_ms")
"""Scores an editor line keeps (editor tasks have no held-out loss: there is no file to score)."""


def editor_root(home: str | os.PathLike[str]) -> Path:
    """The folder of the editor histories, one file per model."""
    return Path(home) / "runs" / "editor-freshness"


def editor_history_path(home: str | os.PathLike[str], model: str) -> Path:
    """``<home>/runs/editor-freshness/<model>.jsonl``."""
    if not model or model.startswith(".") or "/" in model:
        raise ValueError(f"{model!r} is not a model name")
    return editor_root(home) / f"{model}{SUFFIX}"


def editor_point(entry: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The short form of one editor line for status output."""
    scores = entry.get("scores") or {}
    return {"source": EDITOR_SOURCE, "time": entry.get("time"), "reason": entry.get("reason"),
            "run": entry.get("run"), "version": entry.get("version"),
            "tasks_version": entry.get("tasks_version"), "n_tasks": entry.get("n_tasks"),
            "edited": entry.get("edited"), "ok": bool(entry.get("ok")), "skipped": entry.get("skipped"),
            "error": entry.get("error"), "scores": {m: scores[m] for m in SUMMARY_METRICS if m in scores}}


def editor_summary(home: str | os.PathLike[str], last: int = STATUS_POINTS) -> dict[str, list[dict[str, t.Any]]]:
    """Model name → its ``last`` editor history points (oldest first), in :func:`editor_point` form."""
    base = editor_root(home)
    if not base.is_dir():
        return {}
    return {p.name[:-len(SUFFIX)]: [editor_point(e) for e in read(p, last)]
            for p in sorted(base.glob(f"*{SUFFIX}")) if p.is_file() and not p.name.startswith(".")}


def _finite(value: t.Any) -> t.Any:
    """NaN and infinities become None (the history stays strict JSON)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def editor_tasks(settings: Settings, version: int | None) -> tuple[list[EditorTask], dict[str, t.Any]]:
    """The editor tasks gathered while ``version`` of the serving model served (the newest
    ``evaluation.num_tasks``), and what to record about them: counts and ``skipped`` (why they
    will not be scored: ``serving.store_code`` off, nothing served, or fewer than
    ``evaluation.editor_min_tasks``; None when they will)."""
    from bot.proxy_settings import telemetry_folder
    from serving.editor_tasks import read_editor_tasks

    ev, sv = settings.evaluation, settings.serving
    info: dict[str, t.Any] = {"tasks_version": version, "n_tasks": 0, "accepted": 0, "edited": 0, "skipped": None}
    if not sv.store_code or not sv.telemetry:
        info["skipped"] = ("serving.store_code is off: the proxy keeps no code, so accepted completions cannot "
                           "become tasks (turn it on to get this curve; docs/evaluation.md says what is kept)"
                           if not sv.store_code else "serving.telemetry is off: nothing is recorded")
        return [], info
    if version is None:
        info["skipped"] = "no version has served yet, so no editor has accepted anything"
        return [], info
    found = read_editor_tasks(telemetry_folder(settings), model=sv.model_name, version=version,
                              limit=ev.num_tasks)
    counts = found.as_dict()
    info.update(n_tasks=counts["tasks"], accepted=counts["accepted"], without_code=counts["without_code"],
                duplicates=counts["duplicates"], edited=sum(task.edited for task in found.tasks),
                skipped=found.reason)
    if found.tasks and len(found.tasks) < ev.editor_min_tasks:
        info["skipped"] = (f"only {len(found.tasks)} editor task(s) from version {version}, fewer than "
                           f"evaluation.editor_min_tasks = {ev.editor_min_tasks}: too few to tell models apart")
    return (found.tasks if info["skipped"] is None else []), info


def score_editor_tasks(model: t.Any, tasks: list[EditorTask], cfg: EvalConfig, label: str) -> ModelScores:
    """Score ``model`` (a checkpoint folder or a loaded model) on editor tasks: FIM tasks for a
    family that fills in the middle, left to right (the suffix dropped) otherwise."""
    from trainer.evaluate import Task, load_model, score_model
    from trainer.evaluate.generate import model_family

    lm = load_model(model, cfg.device)
    family = model_family(lm, cfg.family)
    fim = family is not None and family.has_fim
    return score_model(lm, [], cfg, tasks=[Task(**task.as_task(fim)) for task in tasks],
                       corpus_version=EDITOR_SOURCE, label=label)


def _editor_entry(settings: Settings, reason: str, info: Mapping[str, t.Any], **extra: t.Any) -> dict[str, t.Any]:
    return {"source": EDITOR_SOURCE, "model": settings.serving.model_name, "reason": reason,
            "time": time.time(), "ok": False, "error": None, **info, **extra}


def _record_editor_scores(entry: dict[str, t.Any], scores: ModelScores) -> None:
    entry.update(ok=True, checkpoint_name=scores.name,
                 scores={m: _finite(scores.overall.get(m)) for m in EDITOR_METRICS},
                 per_language={lang: {k: _finite(v) for k, v in s.items() if k in (*EDITOR_METRICS, "n_tasks")}
                               for lang, s in scores.per_language.items()})


def finish_editor_entry(home: str | os.PathLike[str], entry: dict[str, t.Any]) -> dict[str, t.Any]:
    """Stamp the duration and append ``entry`` to its model's editor history (a write failure is
    logged, not raised: the curve is an observation). Returns the entry."""
    entry["duration_s"] = round(time.time() - entry["time"], 3)
    try:
        append(editor_history_path(home, entry["model"]), entry)
    except Exception as exc:
        log.warning("could not record the editor evaluation of %s: %s", entry.get("model"), exc)
    return entry


def editor_eval(settings: Settings, version: int, previous: int | None, checkpoint: str | None,
                run_id: str | None = None) -> dict[str, t.Any]:
    """Score ``version`` (``checkpoint``), which just started serving, on the editor tasks of
    ``previous`` and append the line. Too few tasks is a line with ``skipped``; a failure a line
    with ``ok: false`` and the error; neither is raised."""
    from bot import recipe

    tasks, info = editor_tasks(settings, previous)
    entry = _editor_entry(settings, "serving", info, version=version, run=run_id)
    if tasks:
        try:
            if not checkpoint:
                raise BotError(f"version {version} has no checkpoint on disk to score")
            _record_editor_scores(entry, score_editor_tasks(checkpoint, tasks, recipe.eval_config(settings),
                                                            f"version {version}"))
        except Exception as exc:  # recorded below; see the docstring
            entry["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("editor evaluation of version %s failed: %s", version, exc)
    return finish_editor_entry(settings.home, entry)


def editor_comparison(settings: Settings, run_id: str, candidate: str, baseline: str,
                      version: int | None) -> dict[str, t.Any]:
    """The candidate against the serving model on the editor tasks of ``version`` (the one serving): both
    models' scores, the paired interval of the primary metric's difference and ``worse`` (the
    whole interval beyond the metric's tolerance on the wrong side). What ``run.json`` records as
    ``metrics.editor_tasks``; the candidate's scores also go to the editor history. Informational:
    :func:`editor_gate` decides whether it may reject. Never raises (``error`` says what failed)."""
    from bot import recipe
    from trainer.evaluate.compare import TASK_METRICS
    from trainer.evaluate.config import HIGHER_IS_BETTER
    from trainer.evaluate.stats import paired_bootstrap

    cfg = recipe.eval_config(settings)
    tasks, info = editor_tasks(settings, version)
    out: dict[str, t.Any] = {**info, "gates": settings.evaluation.editor_tasks_gate, "worse": False,
                             "error": None}
    if not tasks:
        return out
    entry = _editor_entry(settings, "candidate", info, version=None, run=run_id)
    try:
        cand = score_editor_tasks(candidate, tasks, cfg, "candidate")
        base = score_editor_tasks(baseline, tasks, cfg, "baseline")
        metric = cfg.primary_metric if cfg.primary_metric in TASK_METRICS else "edit_similarity"
        interval = paired_bootstrap([r[metric] for r in cand.rows], [r[metric] for r in base.rows],
                                    confidence=cfg.confidence, resamples=cfg.bootstrap, seed=cfg.seed,
                                    label=f"{EDITOR_SOURCE}/{metric}")
        tolerance = cfg.tolerances.get(metric, 0.0)
        worse = interval.high < -tolerance if HIGHER_IS_BETTER[metric] else interval.low > tolerance
        out.update(metric=metric, interval={k: _finite(v) for k, v in interval.as_dict().items()}, worse=bool(worse),
                   candidate={m: _finite(cand.overall.get(m)) for m in EDITOR_METRICS},
                   baseline={m: _finite(base.overall.get(m)) for m in EDITOR_METRICS},
                   deltas={m: _finite(cand.overall[m] - base.overall[m]) for m in EDITOR_METRICS
                           if m in cand.overall and m in base.overall})
        _record_editor_scores(entry, cand)
    except Exception as exc:  # informational: a failure is recorded, the run goes on
        out["error"] = entry["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("editor-task comparison of run %s failed: %s", run_id, exc)
    finish_editor_entry(settings.home, entry)
    return out


def editor_gate(settings: Settings, comparison: Mapping[str, t.Any] | None) -> str | None:
    """Why the editor tasks reject a candidate, or None: only with ``evaluation.editor_tasks_gate``
    on and a comparison that found it clearly worse (skipped or failed comparisons never reject)."""
    if not settings.evaluation.editor_tasks_gate or not comparison or not comparison.get("worse"):
        return None
    iv = comparison.get("interval") or {}
    return (f"on {comparison.get('n_tasks')} editor tasks (accepted completions of version "
            f"{comparison.get('tasks_version')}) the candidate's {comparison.get('metric')} is worse than the "
            f"serving model's by {-(iv.get('delta') or 0.0):.4f} (interval {iv.get('low')}..{iv.get('high')}), "
            "and evaluation.editor_tasks_gate is on")


def editor_eval_spec(version: int, previous: int | None, checkpoint: str | None, run_id: str | None) -> t.Any:
    """The ``gpu`` job that scores a version that started serving on its predecessor's editor tasks."""
    from bot import defaults
    from bot import queue as q

    return q.JobSpec("gpu", "bot.jobs.editor_eval_job", (version, previous, checkpoint, run_id), {},
                     {"timeout": JOB_TIMEOUT_SECONDS, "result_ttl": defaults.RESULT_TTL_SECONDS,
                      "description": f"editor-task eval of version {version} (tasks of version {previous})"})


def queue_editor_eval(settings: Settings, conn: t.Any, version: int, previous: int | None,
                      checkpoint: str | None, run_id: str | None) -> str | None:
    """Queue :func:`editor_eval` when a new version starts serving with ``store_code`` on; the job
    id or None. Never raises: publishing must not depend on it."""
    if not settings.serving.store_code or previous is None or previous == version:
        return None
    try:
        from bot import queue as q

        return q.enqueue(conn, editor_eval_spec(version, previous, checkpoint, run_id)).id
    except Exception as exc:
        log.warning("editor-task evaluation of version %s not queued: %s", version, exc)
        return None
