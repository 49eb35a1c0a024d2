"""Scoring one model and comparing a candidate with the model now serving.

``score_model`` runs one model on a task set (and the held-out loss); ``compare`` runs the
candidate and the baseline on the *same* tasks and records, computes paired intervals per
metric, overall and per language, applies the gate and (optionally) writes the reports.

Which tasks: ``EvalConfig.kinds``, or by family when it is None — a model that fills in the
middle (StarCoder2, Qwen2.5-Coder …) is judged on FIM tasks, asked with its own FIM prompt,
because that is how editors use it; CodeGen keeps the left-to-right tasks it always had. The
family is the candidate's (detected, or ``EvalConfig.family``), and the comparison records the
resolved kinds and family in its config so ``eval.json`` says what was asked.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer.errors import EvaluationError
from trainer.evaluate.config import TASK_KINDS, EvalConfig
from trainer.evaluate.gate import GateDecision, decide
from trainer.evaluate.generate import (
    LoadedModel,
    fim_budgets,
    generate_completions,
    load_model,
    model_family,
    record_losses,
)
from trainer.evaluate.metrics import STRING_METRICS, aggregate_loss, mean_scores, score_completion
from trainer.evaluate.stats import Interval, paired_bootstrap
from trainer.evaluate.tasks import FIM_TASK_KINDS, Task, build_tasks

Progress = Callable[[dict[str, Any]], None] | None
ModelRef = str | Path | LoadedModel

TASK_METRICS = (*STRING_METRICS, "latency_ms")
"""Metrics measured per task (paired over tasks in the bootstrap)."""


@dataclass
class ModelScores:
    """One model's results on a task set and on the held-out loss records."""

    name: str
    overall: dict[str, float]
    """exact_match, edit_similarity, identifier_match, latency_ms (mean), latency_p95_ms, loss,
    perplexity, loss_tokens, tasks_per_s."""
    per_language: dict[str, dict[str, float]]
    per_kind: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(repr=False)
    """Per task: task_id, kind, lang, prediction, the string metrics, latency_ms."""
    loss_parts: list[tuple[float, int]] = field(repr=False)
    """Per loss record (same order as the records scored): summed NLL in nats, tokens."""
    loss_langs: list[str] = field(repr=False)

    def as_dict(self, with_rows: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "overall": self.overall,
                               "per_language": self.per_language, "per_kind": self.per_kind}
        if with_rows:
            out["tasks"] = self.rows
        return out


@dataclass
class Comparison:
    """Candidate vs baseline on the same tasks: scores, deltas, intervals, verdict.

    ``baseline`` and ``gate`` are None when no baseline was given (the model was only scored).
    """

    candidate: ModelScores
    baseline: ModelScores | None
    tasks: list[Task]
    config: EvalConfig
    corpus_version: str
    deltas: dict[str, float]
    intervals: dict[str, Interval]
    per_language: dict[str, dict[str, Any]]
    """Per language: ``n_tasks``, ``deltas`` and ``intervals`` (empty without a baseline)."""
    gate: GateDecision | None
    created: str
    duration_s: float
    per_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task kind: ``n_tasks`` and ``deltas`` of the string metrics (empty without a baseline)."""

    def as_dict(self) -> dict[str, Any]:
        """The content of ``eval.json``."""
        kinds: dict[str, int] = defaultdict(int)
        for task in self.tasks:
            kinds[task.kind] += 1
        return {
            "schema": 1,
            "created": self.created,
            "corpus_version": self.corpus_version,
            "config": asdict(self.config),
            "task_count": len(self.tasks),
            "tasks_by_kind": dict(kinds),
            "candidate": self.candidate.as_dict(),
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "deltas": self.deltas,
            "intervals": {k: v.as_dict() for k, v in self.intervals.items()},
            "per_language": {
                lang: {"n_tasks": info["n_tasks"], "deltas": info["deltas"],
                       "intervals": {k: v.as_dict() for k, v in info["intervals"].items()}}
                for lang, info in self.per_language.items()
            },
            "per_kind": self.per_kind,
            "gate": self.gate.as_dict() if self.gate else None,
            "duration_s": self.duration_s,
        }


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _record_key(seed: int, version: str, record: Mapping[str, Any]) -> str:
    return hashlib.sha256(f"{seed}\x1f{version}\x1f{record.get('repo', '')}\x1f{record['path']}".encode()).hexdigest()


def loss_records(records: Sequence[Mapping[str, Any]], cfg: EvalConfig, corpus_version: str) -> list[Mapping[str, Any]]:
    """Records in the seeded hash order the loss budget walks through (independent of input order)."""
    return sorted(records, key=lambda r: _record_key(cfg.seed, str(corpus_version), r))


def resolve_config(lm: LoadedModel, cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with ``family`` (``lm``'s, unless given) and ``kinds`` (by family, unless given) filled in."""
    family = model_family(lm, cfg.family)
    kinds = cfg.kinds
    if kinds is None:
        kinds = FIM_TASK_KINDS if family is not None and family.has_fim else TASK_KINDS
    if any(k in FIM_TASK_KINDS for k in kinds) and (family is None or not family.has_fim):
        raise EvaluationError(
            f"EvalConfig.kinds {kinds} asks for fill-in-the-middle tasks, but {lm.name} is "
            f"{family.name if family else 'of no known family'}, which cannot fill in the middle; "
            "leave kinds unset (None) or set EvalConfig.family to the model's FIM family")
    return replace(cfg, kinds=tuple(kinds), family=family.name if family else None)


def _tasks_for(lm: LoadedModel, records: Sequence[Mapping[str, Any]], cfg: EvalConfig, version: str) -> list[Task]:
    cfg = resolve_config(lm, cfg)
    keep = lm.context - min(cfg.max_new_tokens, cfg.block_max_new_tokens)
    suffix_tokens = None
    if lm.family is not None and any(k in FIM_TASK_KINDS for k in cfg.kinds):
        # Leave room for the sentinels and the suffix, so the FIM prompt fits the context whole.
        keep, suffix_tokens = fim_budgets(lm.tokenizer, lm.family, max(keep, 1))
    tasks = build_tasks(records, seed=cfg.seed, n=cfg.num_tasks, corpus_version=version, kinds=cfg.kinds,
                        block_lines=cfg.block_lines, min_prefix_chars=cfg.min_prefix_chars,
                        tokenizer=lm.tokenizer, max_prompt_tokens=max(keep, 1), max_suffix_tokens=suffix_tokens)
    if not tasks:
        raise EvaluationError(
            f"no completion tasks could be cut from {len(records)} held-out records (all empty or "
            "trivial); check that the corpus has a held-out split with code in it")
    return tasks


def _summaries(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row[key]].append(row)
    return {name: {**mean_scores(group, TASK_METRICS), "n_tasks": len(group)}
            for name, group in sorted(groups.items())}


def score_model(model: ModelRef, records: Iterable[Mapping[str, Any]], cfg: EvalConfig | None = None, *,
                corpus_version: str | int = "", tasks: Sequence[Task] | None = None,
                progress: Progress = None, label: str = "model") -> ModelScores:
    """Run one model on tasks drawn from ``records`` (or on ``tasks``) and on the held-out loss.

    ``model`` is a checkpoint folder or a :class:`LoadedModel`. Progress events carry
    ``model=label`` so a caller running two models can tell them apart.
    """
    cfg = cfg or EvalConfig()
    with cpu_threads(cfg.num_threads):
        return _score_model(model, list(records), cfg, str(corpus_version), tasks, progress, label)


def _score_model(model: ModelRef, records: list[Mapping[str, Any]], cfg: EvalConfig, version: str,
                 tasks: Sequence[Task] | None, progress: Progress, label: str) -> ModelScores:
    lm = load_model(model, cfg.device)
    if tasks is None:
        tasks = _tasks_for(lm, records, cfg, version)
    relay = (lambda event: progress({**event, "model": label})) if progress else None
    started = time.perf_counter()
    completions = generate_completions(lm, tasks, cfg, progress=relay)
    gen_s = time.perf_counter() - started
    rows = []
    for task, completion in zip(tasks, completions, strict=True):
        rows.append({"task_id": task.task_id, "kind": task.kind, "lang": task.lang,
                     "prediction": completion.text, "latency_ms": completion.latency_ms,
                     **score_completion(completion.text, task.target)})
    ordered = loss_records(records, cfg, version)
    parts = record_losses(lm, ordered, max_tokens=cfg.loss_max_tokens, batch_size=cfg.batch_size, progress=relay)
    langs = [r.get("lang", "unknown") for r in ordered]
    latencies = sorted(r["latency_ms"] for r in rows)
    overall = {**mean_scores(rows, TASK_METRICS), **aggregate_loss(parts)}
    overall["latency_p95_ms"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else math.nan
    overall["loss_tokens"] = overall.pop("tokens")
    overall["tasks_per_s"] = len(rows) / gen_s if gen_s > 0 else math.nan
    per_language = _summaries(rows, "lang")
    by_lang: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for lang, part in zip(langs, parts, strict=True):
        by_lang[lang].append(part)
    for lang, lang_parts in by_lang.items():
        agg = aggregate_loss(lang_parts)
        if agg["tokens"]:
            per_language.setdefault(lang, {"n_tasks": 0})
            per_language[lang].update(loss=agg["loss"], perplexity=agg["perplexity"])
    return ModelScores(name=lm.name, overall=overall, per_language=per_language,
                       per_kind=_summaries(rows, "kind"), rows=rows, loss_parts=parts, loss_langs=langs)


def _intervals(cand: ModelScores, base: ModelScores, cfg: EvalConfig, lang: str | None) -> dict[str, Interval]:
    picked = [i for i, row in enumerate(cand.rows) if lang is None or row["lang"] == lang]
    out: dict[str, Interval] = {}
    if picked:
        for metric in TASK_METRICS:
            out[metric] = paired_bootstrap([cand.rows[i][metric] for i in picked],
                                           [base.rows[i][metric] for i in picked],
                                           confidence=cfg.confidence, resamples=cfg.bootstrap, seed=cfg.seed,
                                           label=f"{metric}/{lang or '*'}")
    units = [i for i, (c, b) in enumerate(zip(cand.loss_parts, base.loss_parts, strict=True))
             if c[1] and b[1] and (lang is None or cand.loss_langs[i] == lang)]
    if units:
        out["loss"] = paired_bootstrap([cand.loss_parts[i][0] for i in units], [base.loss_parts[i][0] for i in units],
                                       candidate_weights=[cand.loss_parts[i][1] for i in units],
                                       baseline_weights=[base.loss_parts[i][1] for i in units],
                                       confidence=cfg.confidence, resamples=cfg.bootstrap, seed=cfg.seed,
                                       label=f"loss/{lang or '*'}")
    return out


def _deltas(cand: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    return {k: cand[k] - base[k] for k in cand
            if k in base and k != "n_tasks" and isinstance(cand[k], (int, float)) and isinstance(base[k], (int, float))}


def compare(candidate: ModelRef, baseline: ModelRef | None, records: Iterable[Mapping[str, Any]],
            cfg: EvalConfig | None = None, *, corpus_version: str | int, out_dir: str | Path | None = None,
            progress: Progress = None) -> Comparison:
    """Score ``candidate`` (and ``baseline``, on the same tasks and loss records) and decide.

    ``records`` are held-out corpus lines. The task set is drawn once, with the candidate's
    tokenizer truncating prompts to its context. Without a baseline the candidate is only
    scored (``gate`` is None). With ``out_dir``, ``eval.json`` and ``report.md`` are written
    there atomically.
    """
    cfg = cfg or EvalConfig()
    with cpu_threads(cfg.num_threads):
        return _compare(candidate, baseline, list(records), cfg, str(corpus_version), out_dir, progress)


def _compare(candidate: ModelRef, baseline: ModelRef | None, records: list[Mapping[str, Any]], cfg: EvalConfig,
             version: str, out_dir: str | Path | None, progress: Progress) -> Comparison:
    if not records:
        raise EvaluationError("no held-out records to evaluate on; run a corpus update first "
                              "(the held-out split is empty)")
    started = time.perf_counter()
    cand_lm = load_model(candidate, cfg.device)
    cfg = resolve_config(cand_lm, cfg)
    tasks = _tasks_for(cand_lm, records, cfg, version)
    cand = score_model(cand_lm, records, cfg, corpus_version=version, tasks=tasks, progress=progress,
                       label="candidate")
    del cand_lm
    base = None
    if baseline is not None:
        base = score_model(baseline, records, cfg, corpus_version=version, tasks=tasks, progress=progress,
                           label="baseline")
    deltas: dict[str, float] = {}
    intervals: dict[str, Interval] = {}
    per_language: dict[str, dict[str, Any]] = {}
    per_kind: dict[str, dict[str, Any]] = {}
    gate = None
    if base is not None:
        per_kind = {kind: {"n_tasks": int(scores.get("n_tasks", 0)),
                           "deltas": _deltas(scores, base.per_kind.get(kind, {}))}
                    for kind, scores in cand.per_kind.items()}
        deltas = _deltas(cand.overall, base.overall)
        intervals = _intervals(cand, base, cfg, None)
        for lang in sorted(set(cand.per_language) | set(base.per_language)):
            per_language[lang] = {
                "n_tasks": int(cand.per_language.get(lang, {}).get("n_tasks", 0)),
                "deltas": _deltas(cand.per_language.get(lang, {}), base.per_language.get(lang, {})),
                "intervals": _intervals(cand, base, cfg, lang),
            }
        gate = decide(cand.overall, base.overall, intervals, cfg)
    result = Comparison(candidate=cand, baseline=base, tasks=list(tasks), config=cfg, corpus_version=version,
                        deltas=deltas, intervals=intervals, per_language=per_language, gate=gate,
                        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                        duration_s=time.perf_counter() - started, per_kind=per_kind)
    if out_dir is not None:
        from trainer.evaluate.report import write_reports

        write_reports(result, Path(out_dir))
    return result
