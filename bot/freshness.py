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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import typing as t
from collections.abc import Iterator, Mapping
from pathlib import Path

from durable import write_atomic

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
