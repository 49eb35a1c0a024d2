"""Paired bootstrap confidence intervals for the difference between two models.

"Paired" means each resample draws the same units (tasks, or records for the loss) for
candidate and baseline, so per-task difficulty cancels out and the interval is far tighter
than comparing two independent means. The generator is seeded from (seed, metric name)
through SHA-256, so a report is reproducible bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

_CHUNK = 250


@dataclass(frozen=True)
class Interval:
    """Observed difference (candidate − baseline) with its bootstrap percentile interval."""

    delta: float
    low: float
    high: float
    confidence: float
    n: int
    """Paired units the interval was computed over."""

    def as_dict(self) -> dict[str, float]:
        return {"delta": self.delta, "low": self.low, "high": self.high,
                "confidence": self.confidence, "n": self.n}


def _rng(seed: int, label: str):
    import numpy as np

    digest = hashlib.sha256(f"{seed}\x1f{label}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def paired_bootstrap(candidate: Sequence[float], baseline: Sequence[float], *,
                     candidate_weights: Sequence[float] | None = None,
                     baseline_weights: Sequence[float] | None = None,
                     confidence: float = 0.95, resamples: int = 1000, seed: int = 0,
                     label: str = "") -> Interval:
    """Interval on ``stat(candidate) - stat(baseline)`` over paired units.

    Without weights ``stat`` is the mean of the values (task metrics). With weights it is
    ``sum(values) / sum(weights)`` (a ratio estimator: per-record summed loss over per-record
    token counts gives per-token loss). ``label`` names the metric, so each metric gets its own
    reproducible stream of resamples.
    """
    import numpy as np

    cand = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    if cand.shape != base.shape or cand.ndim != 1:
        raise ValueError(f"paired bootstrap needs two equal-length 1-D sequences, got {cand.shape} and {base.shape}")
    n = cand.shape[0]
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence, 0)
    cw = np.ones(n) if candidate_weights is None else np.asarray(candidate_weights, dtype=np.float64)
    bw = np.ones(n) if baseline_weights is None else np.asarray(baseline_weights, dtype=np.float64)
    delta = float(cand.sum() / cw.sum() - base.sum() / bw.sum())
    rng = _rng(seed, label)
    stats = np.empty(resamples)
    for lo in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - lo)
        idx = rng.integers(0, n, size=(size, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[lo:lo + size] = cand[idx].sum(1) / cw[idx].sum(1) - base[idx].sum(1) / bw[idx].sum(1)
    stats = stats[np.isfinite(stats)]
    tail = (1.0 - confidence) / 2.0
    low, high = (np.quantile(stats, [tail, 1.0 - tail]) if stats.size else (np.nan, np.nan))
    return Interval(delta, float(low), float(high), confidence, n)
