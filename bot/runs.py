"""Training runs: their states, the allowed moves between them, and the durable record.

A run's truth is ``<home>/runs/<run-id>/run.json`` (written atomically), not Redis: it survives a
Redis flush and is what ``repotune runs``, the status API and reporting read. Redis only holds the
jobs that move a run along.

    queued ─► ingesting ─► training ─► evaluating ─┬► converting ─► publishing ─► serving
                                                    └► rejected ──(promote)──► converting
    any non-terminal state ─► failed | canceled
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import tempfile
import time
import typing as t
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from bot.errors import BotError


class RunStatus(str, Enum):
    """Where a run is. ``str`` so it compares with and serialises as its value."""

    QUEUED = "queued"
    INGESTING = "ingesting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    REJECTED = "rejected"
    CONVERTING = "converting"
    PUBLISHING = "publishing"
    SERVING = "serving"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """No further automatic step follows (a rejected run can still be promoted by hand)."""
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.REJECTED, RunStatus.SERVING, RunStatus.FAILED, RunStatus.CANCELED})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.INGESTING, RunStatus.TRAINING, RunStatus.FAILED, RunStatus.CANCELED}),
    RunStatus.INGESTING: frozenset({RunStatus.TRAINING, RunStatus.FAILED, RunStatus.CANCELED}),
    RunStatus.TRAINING: frozenset({RunStatus.EVALUATING, RunStatus.FAILED, RunStatus.CANCELED}),
    RunStatus.EVALUATING: frozenset({RunStatus.CONVERTING, RunStatus.REJECTED, RunStatus.FAILED, RunStatus.CANCELED}),
    RunStatus.REJECTED: frozenset({RunStatus.CONVERTING}),  # promote overrides the gate
    RunStatus.CONVERTING: frozenset({RunStatus.PUBLISHING, RunStatus.FAILED, RunStatus.CANCELED}),
    RunStatus.PUBLISHING: frozenset({RunStatus.SERVING, RunStatus.FAILED}),
    RunStatus.SERVING: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELED: frozenset(),
}
"""Allowed moves; :func:`transition` refuses anything else."""


class InvalidTransition(BotError):
    """A run was asked to move to a state its current state does not lead to."""


@dataclass
class RunRecord:
    """The durable record of one run (``run.json``)."""

    id: str
    """``YYYYmmdd-HHMMSS-xxxx``: sorts by creation time."""
    status: RunStatus
    created: float
    """Unix time the run was created."""
    repo: str | None = None
    """Configured repository name that triggered it (None: all repositories)."""
    trigger: dict[str, t.Any] = field(default_factory=dict)
    """``kind`` (push, chatops, reconcile), ``forge``, ``repo`` (forge path), ``commit``, ``pushes``
    (the coalesced pushes), ``requested_by``, ``number`` (PR/MR for chat-ops), ``full``."""
    history: list[tuple[str, float, str]] = field(default_factory=list)
    """(status, unix time, note) for every state entered, oldest first."""
    corpus_version: dict[str, t.Any] = field(default_factory=dict)
    """Corpus name → version and commit the run trained on."""
    metrics: dict[str, t.Any] = field(default_factory=dict)
    """Training and evaluation figures (steps, losses, gate metrics …)."""
    progress: dict[str, t.Any] = field(default_factory=dict)
    """Last progress event of the running step."""
    checkpoint: str | None = None
    """Fine-tuned checkpoint folder."""
    artifact: str | None = None
    """Converted artifact folder."""
    eval_report: str | None = None
    """Path of the evaluation's report.md."""
    version: int | None = None
    """Serving version it was published as."""
    model: str | None = None
    """Triton model name."""
    error: str | None = None
    """Why it failed or was rejected."""
    job_id: str | None = None
    """RQ job currently moving the run (or the last one)."""

    @property
    def updated(self) -> float:
        return self.history[-1][1] if self.history else self.created

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["history"] = [list(h) for h in self.history]
        return data

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = RunStatus(values["status"])
        values["history"] = [tuple(h) for h in values.get("history", [])]
        return cls(**values)


def new_run_id(now: float | None = None) -> str:
    """A sortable unique id: UTC creation time plus 4 random hex digits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


def new_run(*, repo: str | None, trigger: dict[str, t.Any], model: str | None = None,
            now: float | None = None) -> RunRecord:
    """A queued run (not yet saved)."""
    now = time.time() if now is None else now
    return RunRecord(id=new_run_id(now), status=RunStatus.QUEUED, created=now, repo=repo,
                     trigger=dict(trigger), history=[(RunStatus.QUEUED.value, now, "")], model=model)


def transition(run: RunRecord, status: RunStatus | str, note: str = "", *,
               now: float | None = None) -> RunRecord:
    """Move ``run`` to ``status`` (in place) and record it; InvalidTransition if not allowed."""
    status = RunStatus(status)
    if status not in TRANSITIONS[run.status]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[run.status])) or "nothing (terminal)"
        raise InvalidTransition(f"run {run.id} is {run.status.value}; it can move to {allowed}, "
                                f"not {status.value}")
    run.status = status
    run.history.append((status.value, time.time() if now is None else now, note))
    return run


# --- storage -------------------------------------------------------------------------------


def run_dir(home: Path, run_id: str) -> Path:
    return Path(home) / "runs" / run_id


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_run(home: Path, run: RunRecord) -> Path:
    """Write ``runs/<id>/run.json`` atomically; returns its path."""
    path = run_dir(home, run.id) / "run.json"
    atomic_write_text(path, json.dumps(run.as_dict(), indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_run(home: Path, run_id: str) -> RunRecord:
    """The run ``run_id``; BotError naming the runs folder if there is none."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise BotError(f"{run_id!r} is not a run id (see `repotune runs`)")
    path = run_dir(home, run_id) / "run.json"
    try:
        return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise BotError(f"no run {run_id!r} in {Path(home) / 'runs'} (see `repotune runs`)") from exc


def list_runs(home: Path, limit: int | None = 20) -> list[RunRecord]:
    """The newest runs first (ids sort by creation time)."""
    root = Path(home) / "runs"
    if not root.is_dir():
        return []
    out: list[RunRecord] = []
    for path in sorted(root.glob("*/run.json"), reverse=True):
        try:
            out.append(RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError):
            continue  # a half-created folder or foreign file is not a run
        if limit is not None and len(out) >= limit:
            break
    return out


def active_runs(home: Path) -> list[RunRecord]:
    """Runs not yet in a terminal state."""
    return [r for r in list_runs(home, limit=None) if not r.status.terminal]
