"""Acceptance of served completions per model version and language, from the telemetry files.

Pure apart from reading the JSON lines :mod:`serving.telemetry` writes. For each completion
choice (completion id, choice index) the events decide:

- *shown*: any view, select, dismiss or feedback event (a feedback implies it was shown: the
  custom clients that use it send no views);
- *accepted*: a select event, or a feedback with ``accepted: true`` (accepted wins over a later
  dismiss: Tabby dismisses the rest of a partially accepted completion);
- *kept*: for accepted choices whose client said what it kept (feedback ``text``), the characters
  of the completion still there after editing, over the characters of those completions.

The acceptance rate comes with a Wilson score interval: unlike the normal approximation it stays
inside [0, 1] and behaves with the few dozen shown completions a new version starts with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from serving.telemetry import COMPLETIONS, EVENTS, read_lines, telemetry_files

ALL_LANGUAGES = "*"
"""The language of a version's total row."""
SHOWN_EVENTS = frozenset({"view", "select", "dismiss", "feedback"})


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / trials`` at ``confidence`` ((0, 1) for 0 trials)."""
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class AcceptanceRow:
    """Acceptance of one model version in one language (``*``: all languages)."""

    model: str
    version: int
    language: str
    served: int
    """Choices served (from the completion records)."""
    shown: int
    accepted: int
    rate: float | None
    """accepted / shown; None before anything was shown."""
    low: float
    high: float
    """Wilson interval of ``rate`` at the summary's confidence."""
    kept_share: float | None
    """Share of accepted characters still there after edits, where the client said; else None."""
    kept_reports: int
    """Accepted choices whose client said what it kept."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    served: int = 0
    shown: int = 0
    accepted: int = 0
    kept: int = 0
    kept_of: int = 0
    kept_reports: int = 0


def _choices(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (completion id, choice): model, version, language, shown, accepted, kept figures."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in events:
        cid, idx, kind = ev.get("completion_id"), ev.get("choice_index"), ev.get("type")
        if not isinstance(cid, str) or not isinstance(idx, int) or kind not in SHOWN_EVENTS:
            continue
        c = out.setdefault((cid, idx), {"model": ev.get("model", ""), "version": ev.get("version"),
                                        "language": ev.get("language") or "unknown", "accepted": False,
                                        "kept": None, "chars": ev.get("completion_chars")})
        if kind == "select" or (kind == "feedback" and ev.get("accepted") is True):
            c["accepted"] = True
        if kind == "feedback" and isinstance(ev.get("kept_chars"), int):
            c["kept"] = ev["kept_chars"]
    return out


def summarize_records(completions: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]],
                      confidence: float = 0.95) -> list[AcceptanceRow]:
    """Rows per (model, version, language) plus a ``*`` row per version, newest version first."""
    tallies: dict[tuple[str, int, str], _Tally] = {}

    def tally(model: str, version: int, language: str) -> list[_Tally]:
        return [tallies.setdefault((model, version, lang), _Tally()) for lang in (language, ALL_LANGUAGES)]

    for rec in completions:
        if isinstance(rec.get("version"), int):
            for t in tally(str(rec.get("model", "")), rec["version"], str(rec.get("language") or "unknown")):
                t.served += int(rec.get("choices", 1))
    for c in _choices(events).values():
        if not isinstance(c["version"], int):
            continue
        for t in tally(str(c["model"]), c["version"], str(c["language"])):
            t.shown += 1
            t.accepted += c["accepted"]
            if c["accepted"] and c["kept"] is not None and isinstance(c["chars"], int) and c["chars"] > 0:
                t.kept += min(c["kept"], c["chars"])
                t.kept_of += c["chars"]
                t.kept_reports += 1
    rows = []
    for (model, version, language), t in tallies.items():
        low, high = wilson(t.accepted, t.shown, confidence)
        rows.append(AcceptanceRow(model=model, version=version, language=language, served=t.served,
                                  shown=t.shown, accepted=t.accepted,
                                  rate=t.accepted / t.shown if t.shown else None, low=low, high=high,
                                  kept_share=t.kept / t.kept_of if t.kept_of else None,
                                  kept_reports=t.kept_reports))
    return sorted(rows, key=lambda r: (-r.version, r.model, r.language != ALL_LANGUAGES, r.language))


def summarize(folder: str | Path, *, days: float | None = 30, confidence: float = 0.95,
              now: float | None = None) -> list[AcceptanceRow]:
    """:func:`summarize_records` over the telemetry files of the last ``days`` (all when None)."""
    since = None if days is None else (now or time.time()) - days * 86400

    def recent(stream: str):
        for rec in read_lines(telemetry_files(folder, stream, since)):
            if since is None or float(rec.get("time", 0) or 0) >= since:
                yield rec

    return summarize_records(recent(COMPLETIONS), recent(EVENTS), confidence)


def format_rate(row: Mapping[str, Any]) -> str:
    """``42.0% (35.1–49.2%)`` or ``–`` when nothing was shown (for tables and replies)."""
    if row.get("rate") is None:
        return "–"
    return f"{row['rate']:.1%} ({row['low']:.1%}–{row['high']:.1%})"


def format_kept(row: Mapping[str, Any]) -> str:
    return "–" if row.get("kept_share") is None else f"{row['kept_share']:.0%} of {row['kept_reports']}"
