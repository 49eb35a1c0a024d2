"""Canary releases, pure parts: the pointer's canary entry, sticky routing, and the sequential test.

No I/O here: :class:`serving.repository.ModelRepository` writes the pointer
(:meth:`~serving.repository.ModelRepository.start_canary`), :class:`serving.completer.VersionRouter`
routes with :func:`routes_to_canary`, and the bot feeds acceptance counts from
:mod:`serving.acceptance` into :func:`decide` on every scheduler tick (docs/canary.md).

The test: after ``min_shown`` shown completions per arm, at *looks* taken each time the smaller
arm doubles (``min_shown``, 2×, 4× …), a confidence interval on the difference of acceptance
rates (candidate − production; Newcombe's hybrid score interval, built from the Wilson intervals
:mod:`serving.acceptance` already reports) decides:

- **roll back** when the whole interval is below 0 (the candidate is clearly worse);
- **promote** when its lower end is above ``-margin`` (not worse beyond the margin);
- otherwise **extend**, until ``max_duration_seconds``, when it rolls back (conservative: a
  candidate that could not show it is not worse does not replace production).

Looking again and again at growing data inflates the error rate of a fixed-level interval, so
look ``k`` spends ``alpha·6/(π²k²)`` of the total ``alpha = 1 − confidence`` (these sum to
``alpha``: a union bound over every look, however many there are). Looks come from the sample
size alone, never from the data, so the schedule cannot be gamed by the numbers it sees.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from serving.acceptance import wilson

PROMOTE = "promote"
ROLLBACK = "rollback"
EXTEND = "extend"


@dataclass(frozen=True)
class CanaryState:
    """The pointer's ``canary`` entry: ``version`` serves a sticky ``share`` of clients since ``since``."""

    version: int
    share: float
    """Fraction of clients (0 < share < 1) routed to the candidate."""
    since: float
    """Unix time the canary started (acceptance is counted from here)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def canary_of(pointer: Mapping[str, Any] | None) -> CanaryState | None:
    """The canary of a pointer (``{"version": prod, "canary": {...}}``), or None when none runs
    or the entry is malformed (a malformed entry must never take production down)."""
    entry = (pointer or {}).get("canary")
    if not isinstance(entry, Mapping):
        return None
    try:
        state = CanaryState(int(entry["version"]), float(entry["share"]), float(entry.get("since", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None
    return state if 0.0 < state.share < 1.0 else None


def routes_to_canary(client: str, canary: CanaryState | None) -> bool:
    """Whether the client (the telemetry's salted hash of its API key or session) gets the canary.

    Sticky: a function of (client, canary version) only. The version is mixed in so that each
    canary samples a different slice of clients, rather than the same people trying every one.
    A request with no client identity stays on production.
    """
    if canary is None or not client:
        return False
    digest = hashlib.sha256(f"{canary.version}:{client}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < canary.share


# --------------------------------------------------------------------------- the sequential test


@dataclass(frozen=True)
class CanaryPolicy:
    """The test's parameters (the bot's ``[canary]`` settings)."""

    min_shown: int = 200
    """Shown completions each arm needs before the first look."""
    margin: float = 0.02
    """Largest acceptable drop in acceptance rate (absolute, 0.02 = 2 points)."""
    confidence: float = 0.95
    """Overall confidence across all looks."""
    max_duration_seconds: float = 86400.0
    """Undecided after this long: roll back."""


@dataclass(frozen=True)
class Arm:
    """One arm's acceptance: completions shown in an editor and accepted."""

    version: int
    shown: int
    accepted: int

    @property
    def rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None


@dataclass(frozen=True)
class Decision:
    """What the test concluded at one evaluation, with the figures that justify it."""

    action: str
    """``promote``, ``rollback`` or ``extend``."""
    reason: str
    """One sentence for run.json, the MR comment and the commit status."""
    production: Arm
    candidate: Arm
    look: int
    """Looks taken so far (0: not enough data yet)."""
    confidence: float | None
    """Confidence of this look's interval (after spending); None when no look was taken."""
    difference: float | None
    """Candidate rate − production rate."""
    low: float | None
    high: float | None
    """Interval of ``difference`` at ``confidence``."""
    margin: float
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["production"]["rate"] = self.production.rate
        data["candidate"]["rate"] = self.candidate.rate
        return data

    def summary(self) -> str:
        """``candidate 61.0% vs production 50.0%: +11.0 points (+3.2 … +18.5) at 97%``."""
        def pct(x: float | None) -> str:
            return "–" if x is None else f"{x:.1%}"
        text = (f"candidate v{self.candidate.version} {pct(self.candidate.rate)} of {self.candidate.shown} vs "
                f"production v{self.production.version} {pct(self.production.rate)} of {self.production.shown}")
        if self.difference is not None and self.low is not None and self.high is not None:
            text += (f": {self.difference * 100:+.1f} points ({self.low * 100:+.1f} … {self.high * 100:+.1f}"
                     f" at {self.confidence:.1%})")
        return text


def look_index(production: Arm, candidate: Arm, min_shown: int) -> int:
    """Looks reached: 0 below ``min_shown`` per arm, then 1 + log2 of the smaller arm over it."""
    smaller = min(production.shown, candidate.shown)
    if smaller < max(1, min_shown):
        return 0
    return 1 + int(math.floor(math.log2(smaller / max(1, min_shown))))


def look_confidence(look: int, confidence: float) -> float:
    """The interval's confidence at look ``look``: ``1 − alpha·6/(π²·look²)``."""
    alpha = 1.0 - confidence
    return 1.0 - alpha * 6.0 / (math.pi ** 2 * look ** 2)


def difference_interval(candidate: Arm, production: Arm, confidence: float) -> tuple[float, float, float]:
    """(difference, low, high) of candidate − production rates: Newcombe's hybrid score interval.

    It combines the two Wilson intervals, so it stays within [−1, 1] and keeps its coverage with
    the few hundred completions a canary sees, where the plain normal interval does not."""
    p1 = candidate.accepted / candidate.shown
    p2 = production.accepted / production.shown
    l1, u1 = wilson(candidate.accepted, candidate.shown, confidence)
    l2, u2 = wilson(production.accepted, production.shown, confidence)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def decide(production: Arm, candidate: Arm, policy: CanaryPolicy, elapsed_s: float,
           last_look: int = 0) -> Decision:
    """The canary's verdict now. ``last_look`` is the look the previous evaluation took: a look
    is only taken (and its alpha spent) once, when the sample size first reaches it."""
    look = look_index(production, candidate, policy.min_shown)
    common = dict(production=production, candidate=candidate, margin=policy.margin, elapsed_s=elapsed_s)
    overdue = elapsed_s >= policy.max_duration_seconds
    if look == 0:
        if overdue:
            return Decision(ROLLBACK, f"rolled back: after {_duration(elapsed_s)} fewer than {policy.min_shown} "
                            "completions per version were shown, too few to judge the candidate",
                            look=0, confidence=None, difference=None, low=None, high=None, **common)
        return Decision(EXTEND, f"waiting for {policy.min_shown} shown completions per version",
                        look=0, confidence=None, difference=None, low=None, high=None, **common)
    conf = look_confidence(look, policy.confidence)
    d, low, high = difference_interval(candidate, production, conf)
    figures = dict(look=look, confidence=conf, difference=d, low=low, high=high, **common)
    if look > last_look:
        if high < 0:
            return Decision(ROLLBACK, f"rolled back: the candidate is clearly worse (at most "
                            f"{high * 100:+.1f} points)", **figures)
        if low > -policy.margin:
            return Decision(PROMOTE, f"promoted: the candidate is not worse than production beyond "
                            f"{policy.margin * 100:.1f} points (at least {low * 100:+.1f})", **figures)
    if overdue:
        return Decision(ROLLBACK, f"rolled back: undecided after {_duration(elapsed_s)} (the limit); "
                        "production stays, as the conservative choice", **figures)
    nxt = max(1, policy.min_shown) * 2 ** look
    return Decision(EXTEND, f"undecided at look {look}; next look at {nxt} shown completions per version",
                    **figures)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
