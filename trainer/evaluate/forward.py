"""Forward evaluation: how well does the model now serving complete code it has never seen?

Before a push's changes are trained on, the production model is scored on that push's new
code. One entry per push, appended to a per-repository JSON-lines history, draws the
"freshness" curve of the served model: falling scores mean the code base is moving away
from what the model knows. ``plot_history`` draws such a file.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from trainer.evaluate.compare import ModelRef, score_model
from trainer.evaluate.config import EvalConfig
from trainer.evaluate.report import _clean, atomic_write

Progress = Callable[[dict[str, Any]], None] | None


def forward_eval(model: ModelRef, records: Iterable[Mapping[str, Any]], cfg: EvalConfig | None = None, *,
                 push: str | None = None, corpus_version: str | int | None = None,
                 history: str | Path | None = None, progress: Progress = None) -> dict[str, Any]:
    """Score ``model`` on ``records`` (a push's new or changed files) and return one history entry.

    The task draw is seeded by ``corpus_version`` (default: ``push``), so re-running a push
    gives the same tasks. With ``history``, the entry is appended to that JSON-lines file
    (rewritten atomically, so readers never see half a line); a conventional place is
    ``<home>/runs/freshness/<corpus name>.jsonl``.
    """
    cfg = cfg or EvalConfig()
    records = list(records)
    entry: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "push": push,
        "files": len(records),
    }
    version = corpus_version if corpus_version is not None else (push or "forward")
    if records:
        scores = score_model(model, records, cfg, corpus_version=version, progress=progress, label="production")
        entry.update(model=scores.name, n_tasks=len(scores.rows), scores=scores.overall,
                     per_language=scores.per_language)
    else:
        entry.update(model=str(getattr(model, "name", model)), n_tasks=0, scores={}, per_language={})
    entry = _clean(entry)
    if history is not None:
        append_history(Path(history), entry)
    return entry


def append_history(path: Path, entry: Mapping[str, Any]) -> Path:
    """Append one JSON line to ``path`` (whole file rewritten atomically)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    return atomic_write(path, existing + json.dumps(entry, sort_keys=True) + "\n")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a freshness history file, oldest first (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
