"""The promotion gate: may the candidate replace the model now serving?

It passes only when all of these hold (every threshold comes from :class:`EvalConfig`):

1. the primary metric improves by at least ``margin`` (in its better direction);
2. the paired bootstrap interval on that improvement lies entirely on the better side of
   zero (lower bound > 0 for higher-is-better metrics, upper bound < 0 for loss-like ones);
3. no metric listed in ``tolerances`` gets worse by more than its tolerance.

Pure: it reads scores and intervals, never models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.evaluate.config import HIGHER_IS_BETTER, EvalConfig
from trainer.evaluate.stats import Interval


@dataclass(frozen=True)
class GateDecision:
    """The verdict and every check behind it, failures first."""

    passed: bool
    reasons: list[str]
    """One sentence per check (the failed ones first), ready for a merge-request comment."""
    primary_metric: str
    improvement: float
    """Primary metric change in its better direction (positive = better)."""
    interval: tuple[float, float]
    """Bootstrap interval of ``improvement`` (same orientation)."""
    failed_checks: list[str] = field(default_factory=list)
    """Short names of the failed checks: ``margin``, ``interval``, ``tolerance:<metric>``."""

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "primary_metric": self.primary_metric,
                "improvement": self.improvement, "interval": list(self.interval),
                "failed_checks": list(self.failed_checks)}


def _fmt(x: float) -> str:
    return f"{x:+.4f}"


def decide(candidate: Mapping[str, float], baseline: Mapping[str, float],
           intervals: Mapping[str, Interval], cfg: EvalConfig) -> GateDecision:
    """Apply the gate rule to overall scores and their paired intervals."""
    primary = cfg.primary_metric
    sign = 1.0 if HIGHER_IS_BETTER[primary] else -1.0
    ok: list[str] = []
    bad: list[str] = []
    failed: list[str] = []

    delta = candidate[primary] - baseline[primary]
    improvement = sign * delta
    ci = intervals.get(primary)
    lo, hi = (sign * ci.low, sign * ci.high) if ci else (math.nan, math.nan)
    lo, hi = min(lo, hi), max(lo, hi)
    if not math.isfinite(improvement):
        bad.append(f"{primary} could not be measured for both models")
        failed.append("margin")
    elif improvement >= cfg.margin:
        ok.append(f"{primary} improved by {_fmt(improvement)} (margin {cfg.margin:g})")
    else:
        bad.append(f"{primary} improved by {_fmt(improvement)}, less than the margin {cfg.margin:g}")
        failed.append("margin")
    level = f"{cfg.confidence:.0%}"
    if math.isfinite(lo) and lo > 0:
        ok.append(f"{level} interval of the {primary} improvement [{_fmt(lo)}, {_fmt(hi)}] excludes zero")
    else:
        bad.append(f"{level} interval of the {primary} improvement [{_fmt(lo)}, {_fmt(hi)}] does not lie above zero")
        failed.append("interval")

    for metric, tolerance in sorted(cfg.tolerances.items()):
        if metric == primary:
            continue
        c, b = candidate.get(metric, math.nan), baseline.get(metric, math.nan)
        if not (math.isfinite(c) and math.isfinite(b)):
            ok.append(f"{metric} not measured for both models; not gated")
            continue
        regression = -(c - b) if HIGHER_IS_BETTER[metric] else (c - b)
        if regression > tolerance:
            bad.append(f"{metric} regressed by {regression:.4f} (from {b:.4f} to {c:.4f}), "
                       f"more than its tolerance {tolerance:g}")
            failed.append(f"tolerance:{metric}")
        else:
            ok.append(f"{metric} {b:.4f} -> {c:.4f} (allowed regression {tolerance:g})")
    return GateDecision(passed=not bad, reasons=bad + ok, primary_metric=primary,
                        improvement=improvement, interval=(lo, hi), failed_checks=failed)
