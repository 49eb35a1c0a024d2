"""Reports of an evaluation: ``eval.json``, ``report.md`` and a PNG of the metric history.

``report.md`` is the body of the merge-request comment: the verdict, the gate's reasons, one
table candidate vs production with deltas and intervals, and one row per language.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable import write_atomic

if TYPE_CHECKING:
    from trainer.evaluate.compare import Comparison

METRIC_LABELS = {
    "edit_similarity": "edit similarity",
    "exact_match": "exact match",
    "identifier_match": "identifier match",
    "loss": "held-out loss (nats/token)",
    "perplexity": "perplexity",
    "latency_ms": "latency per completion (ms)",
}
"""Report rows, in order, with their display names."""


def atomic_write(path: Path, data: str | bytes) -> Path:
    """:func:`durable.write_atomic`, returning ``path`` (kept for :mod:`trainer.evaluate.forward`)."""
    write_atomic(Path(path), data)
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} into eval.json")


def _clean(value: Any) -> Any:
    """NaN/inf become null so eval.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(comparison: Comparison) -> str:
    return json.dumps(_clean(comparison.as_dict()), indent=2, default=_json_default, allow_nan=False)


def write_reports(comparison: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write ``eval.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return {
        "eval_json": atomic_write(out_dir / "eval.json", to_json(comparison) + "\n"),
        "report_md": atomic_write(out_dir / "report.md", render_markdown(comparison)),
    }


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}"


def _interval(iv: Any, digits: int = 4) -> str:
    if iv is None or not math.isfinite(iv.low):
        return "–"
    return f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def _digits(metric: str) -> int:
    return 1 if metric == "latency_ms" else (2 if metric == "perplexity" else 4)


def render_markdown(comparison: Comparison) -> str:
    """The Markdown report (verdict, reasons, overall table, per-language table)."""
    c, cfg = comparison, comparison.config
    cand, base = c.candidate.overall, (c.baseline.overall if c.baseline else None)
    kinds: dict[str, int] = {}
    for task in c.tasks:
        kinds[task.kind] = kinds.get(task.kind, 0) + 1
    level = f"{cfg.confidence:.0%}"
    out = ["## RepoTune evaluation", ""]
    if c.gate is not None:
        verdict = "PASSED — candidate may replace production" if c.gate.passed else "REJECTED — production stays"
        out += [f"**Gate: {verdict}**", ""]
        out += [f"- {reason}" for reason in c.gate.reasons]
        out.append("")
    kind_text = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    out += [f"{len(c.tasks)} held-out tasks ({kind_text}), corpus version `{c.corpus_version}`, "
            f"seed {cfg.seed}; primary metric `{cfg.primary_metric}`, margin {cfg.margin:g}, "
            f"{level} paired bootstrap ({cfg.bootstrap} resamples).", ""]
    out += [f"- Candidate: `{c.candidate.name}`"]
    if c.baseline is not None:
        out += [f"- Production: `{c.baseline.name}`"]
    out.append("")
    if base is not None:
        out += [f"| metric | production | candidate | Δ | {level} CI of Δ |", "|---|---:|---:|---:|---|"]
        for metric, label in METRIC_LABELS.items():
            d = _digits(metric)
            out.append(f"| {label} | {_num(base.get(metric), d)} | {_num(cand.get(metric), d)} | "
                       f"{_signed(c.deltas.get(metric), d)} | {_interval(c.intervals.get(metric), d)} |")
    else:
        out += ["| metric | candidate |", "|---|---:|"]
        for metric, label in METRIC_LABELS.items():
            out.append(f"| {label} | {_num(cand.get(metric), _digits(metric))} |")
    out += ["", "### Per language", ""]
    shown = ("edit_similarity", "exact_match", "identifier_match", "loss")
    if base is not None:
        out += ["| language | tasks | " + " | ".join(METRIC_LABELS[m].split(" (")[0] for m in shown) + " |",
                "|---|---:|" + "---|" * len(shown)]
        for lang, info in c.per_language.items():
            cl = c.candidate.per_language.get(lang, {})
            bl = c.baseline.per_language.get(lang, {}) if c.baseline else {}
            cells = []
            for metric in shown:
                if metric not in cl or metric not in bl:
                    cells.append("–")
                    continue
                cells.append(f"{_num(bl[metric])} → {_num(cl[metric])} ({_signed(info['deltas'].get(metric))} "
                             f"{_interval(info['intervals'].get(metric))})")
            out.append(f"| {lang} | {info['n_tasks']} | " + " | ".join(cells) + " |")
    else:
        out += ["| language | tasks | " + " | ".join(METRIC_LABELS[m].split(" (")[0] for m in shown) + " |",
                "|---|---:|" + "---:|" * len(shown)]
        for lang, scores in c.candidate.per_language.items():
            out.append(f"| {lang} | {int(scores.get('n_tasks', 0))} | "
                       + " | ".join(_num(scores.get(m)) for m in shown) + " |")
    out += _per_kind_table(c, shown[:3])
    out += ["", f"Throughput: {_num(cand.get('tasks_per_s'), 1)} tasks/s (candidate); "
            f"evaluation took {c.duration_s:.1f} s.", ""]
    return "\n".join(out)


def _per_kind_table(c: Comparison, shown: tuple[str, ...]) -> list[str]:
    """Per task kind (``line`` … or ``fim_inline`` …): a model may fill a hole inside a line well
    and a missing block badly, which the overall mean hides."""
    out = ["", "### Per task kind", "", "| kind | tasks | " + " | ".join(METRIC_LABELS[m].split(" (")[0] for m in shown)
           + " |", "|---|---:|" + "---:|" * len(shown)]
    for kind, scores in c.candidate.per_kind.items():
        base = c.baseline.per_kind.get(kind, {}) if c.baseline else {}
        cells = [f"{_num(base.get(m))} → {_num(scores.get(m))}" if base else _num(scores.get(m)) for m in shown]
        out.append(f"| {kind} | {int(scores.get('n_tasks', 0))} | " + " | ".join(cells) + " |")
    return out


def _history_entries(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    item = json.loads(line)
                    entries.append({"label": str(item.get("push") or item.get("created", ""))[:10],
                                    "scores": item.get("scores", {}), "baseline": None, "passed": None})
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        gate = data.get("gate") or {}
        base = data.get("baseline")
        entries.append({"label": path.parent.name or path.stem, "scores": data["candidate"]["overall"],
                        "baseline": base["overall"] if base else None, "passed": gate.get("passed")})
    return entries


def plot_history(eval_json_paths: Iterable[str | Path], out_png: str | Path,
                 metrics: Mapping[str, str] | None = None) -> Path:
    """Draw the metric history across runs (one point per ``eval.json``, in the given order).

    A ``.jsonl`` path is read as a forward-evaluation (freshness) history, one point per line.
    Top panel: completion metrics of each run's candidate (production as crosses); gate
    passes are marked green, rejections red. Bottom panel: held-out loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = _history_entries(eval_json_paths)
    if not entries:
        raise ValueError("plot_history needs at least one eval.json or freshness .jsonl with entries")
    metrics = dict(metrics or {m: METRIC_LABELS[m] for m in ("edit_similarity", "exact_match", "identifier_match")})
    xs = list(range(len(entries)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.6 * len(entries) + 5), 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for metric, label in metrics.items():
        ys = [_as_float(e["scores"].get(metric)) for e in entries]
        (line,) = top.plot(xs, ys, marker="o", label=label)
        if any(e["baseline"] for e in entries):
            # Production is a different model per run: markers, not a connecting line.
            top.plot(xs, [_as_float((e["baseline"] or {}).get(metric)) for e in entries], linestyle="none",
                     marker="x", markersize=8, color=line.get_color(), alpha=0.7, label=f"{label} (production)")
    for x, e in zip(xs, entries, strict=True):
        if e["passed"] is not None:
            top.axvspan(x - 0.4, x + 0.4, color="tab:green" if e["passed"] else "tab:red", alpha=0.08)
    top.set_ylabel("score")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    top.set_title("RepoTune evaluation history (green: gate passed, red: rejected)")
    bottom.plot(xs, [_as_float(e["scores"].get("loss")) for e in entries], marker="o", color="tab:purple",
                label="held-out loss")
    bottom.set_ylabel("loss (nats/token)")
    bottom.set_xticks(xs)
    bottom.set_xticklabels([e["label"] for e in entries], rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()  # rendered in memory, then one atomic write: no fixed temp name to collide on
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(Path(out_png), png.getvalue())


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
