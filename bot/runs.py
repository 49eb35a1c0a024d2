"""Training runs: their states, the allowed moves between them, and the durable record.

A run's truth is ``<home>/runs/<run-id>/run.json`` (written atomically), not Redis: it survives a
Redis flush and is what ``repotune runs``, the status API and reporting read. Redis only holds the
jobs that move a run along.

    queued ─► ingesting ─► training ─► evaluating ─┬► converting ─► publishing ─┬──────────► serving
                                                    │                          └► canary ─┬► serving
                                                    │                                     └► rejected
                                                    └► rejected ──(promote)──► converting
    any non-terminal state ─► failed | canceled

``canary`` (only with ``[canary] enabled``): the version serves a share of clients beside
production until the scheduler tick's acceptance test (or an operator) promotes it (``serving``)
or rolls it back (``rejected``); see :mod:`bot.canary`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import typing as t
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from bot.errors import BotError
from durable import write_atomic


class RunStatus(str, Enum):
    """Where a run is. ``str`` so it compares with and serialises as its value."""

    QUEUED = "queued"
    INGESTING = "ingesting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    REJECTED = "rejected"
    CONVERTING = "converting"
    PUBLISHING = "publishing"
    CANARY = "canary"
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
    RunStatus.PUBLISHING: frozenset({RunStatus.SERVING, RunStatus.CANARY, RunStatus.FAILED}),
    # The acceptance test (or an operator) decides; failed only if its record can no longer be
    # followed (e.g. the canary was removed from the pointer behind the bot's back).
    RunStatus.CANARY: frozenset({RunStatus.SERVING, RunStatus.REJECTED, RunStatus.FAILED}),
    RunStatus.SERVING: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELED: frozenset(),
}
"""Allowed moves; :func:`transition` refuses anything else."""

# Phases: how reporting groups the statuses (commit statuses per phase, see bot.reporting).
TRAIN_PHASE = frozenset({RunStatus.QUEUED, RunStatus.INGESTING, RunStatus.TRAINING})
"""Before a candidate exists: ``repotune/train`` is pending."""
EVAL_PHASE = frozenset({RunStatus.EVALUATING})
"""The candidate is being compared with the serving model: ``repotune/eval`` is pending."""
DEPLOY_PHASE = frozenset({RunStatus.CONVERTING, RunStatus.PUBLISHING})
"""The candidate passed (or was promoted) and is on its way to serving."""
CANARY_PHASE = frozenset({RunStatus.CANARY})
"""Published, serving a share of clients: ``repotune/canary`` is pending."""
STOPPED = frozenset({RunStatus.FAILED, RunStatus.CANCELED})
"""Ended without a verdict of the gate on this attempt (where it stopped decides what is reported)."""
ACTIVE = frozenset(RunStatus) - TERMINAL
"""Still moving: a step is queued or running."""


class InvalidTransition(BotError):
    """A run was asked to move to a state its current state does not lead to."""


@dataclass
class Trigger:
    """What started a run, and where to report it (``run.json``'s ``trigger``)."""

    kind: str = "push"
    """``push``, ``reconcile`` or ``chatops``."""
    forge: str | None = None
    """``github``, ``gitlab`` or None (a local repository: nothing to report to)."""
    repo: str | None = None
    """Forge path (``owner/repo``) commit statuses and comments go to."""
    commit: str | None = None
    """The pushed commit that carries the ``repotune/*`` commit statuses."""
    pushes: list[dict[str, t.Any]] = field(default_factory=list)
    """The coalesced push summaries this run covers (as the ingest job noted them)."""
    requested_by: str | None = None
    """Chat-ops: who asked for the run."""
    reason: str | None = None
    """Chat-ops: the reason given."""
    number: int | None = None
    """Chat-ops: the pull/merge request that gets the closing comment."""
    project_id: int | None = None
    """Chat-ops on GitLab: the project id of that merge request."""
    full: bool = False
    """Rebuild every corpus from scratch instead of updating it."""
    extra: dict[str, t.Any] = field(default_factory=dict)
    """Any other key found in ``run.json`` (written by another version), kept as it was."""

    def as_dict(self) -> dict[str, t.Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any] | None) -> Trigger:
        """A trigger from ``run.json`` or a caller's dict; unknown keys land in ``extra``."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        extra = {k: v for k, v in data.items() if k not in known and k != "extra"}
        extra.update(data.get("extra") or {})
        if values.get("number") is not None:
            values["number"] = int(values["number"])
        return cls(**values, extra=extra)

    def merged(self, overrides: t.Mapping[str, t.Any] | None) -> Trigger:
        """This trigger with ``overrides`` applied (chat-ops adds forge, repo and number)."""
        return Trigger.from_dict({**self.as_dict(), **{k: v for k, v in (overrides or {}).items()
                                                       if v is not None}})


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
    trigger: Trigger = field(default_factory=Trigger)
    """What started it and where to report it."""
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
    settings: dict[str, t.Any] = field(default_factory=dict)
    """The effective ``training`` and ``evaluation`` settings when the run started; every step
    uses these, so an edit of ``repotune.toml`` mid-run applies to the next run only."""

    @property
    def updated(self) -> float:
        return self.history[-1][1] if self.history else self.created

    def as_dict(self) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["history"] = [list(h) for h in self.history]
        data["trigger"] = self.trigger.as_dict()
        return data

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = RunStatus(values["status"])
        values["history"] = [tuple(h) for h in values.get("history", [])]
        values["trigger"] = Trigger.from_dict(values.get("trigger"))
        return cls(**values)


def new_run_id(now: float | None = None) -> str:
    """A sortable unique id: UTC creation time plus 4 random hex digits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


def new_run(*, repo: str | None, trigger: Trigger | t.Mapping[str, t.Any], model: str | None = None,
            now: float | None = None) -> RunRecord:
    """A queued run (not yet saved); ``trigger`` is copied (a mapping is read as :class:`Trigger`)."""
    now = time.time() if now is None else now
    if not isinstance(trigger, Trigger):
        trigger = Trigger.from_dict(trigger)
    return RunRecord(id=new_run_id(now), status=RunStatus.QUEUED, created=now, repo=repo,
                     trigger=Trigger.from_dict(trigger.as_dict()), history=[(RunStatus.QUEUED.value, now, "")],
                     model=model)


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


def save_run(home: Path, run: RunRecord) -> Path:
    """Write ``runs/<id>/run.json`` atomically; returns its path."""
    path = run_dir(home, run.id) / "run.json"
    # write_atomic with our own dumps (not write_json_atomic): ``default=str`` keeps a stray Path
    # in metrics from failing a run's save.
    write_atomic(path, json.dumps(run.as_dict(), indent=2, sort_keys=True, default=str) + "\n")
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
