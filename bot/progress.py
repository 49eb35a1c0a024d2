"""One progress recorder for every job: package progress events into ``job.meta`` (and a run).

Package functions call ``progress(event)`` with ``stage``, ``done``, ``total`` and free extras
(docs/architecture.md). A job hands them :func:`recorder`, which keeps the scalar fields, and
copies them into the current RQ job's ``meta["progress"]`` (what ``repotune status`` shows) and,
for a run's step, into ``run.json``'s ``progress``. Writes are throttled: an event is kept when its
stage changed, when it is the last of its stage (``done == total``), or when ``every_s`` passed.
"""

from __future__ import annotations

import contextlib
import time
import typing as t
from collections.abc import Callable
from pathlib import Path

from rq import get_current_job

from bot.runs import RunRecord, save_run

Progress = Callable[[dict[str, t.Any]], None]


def _scalars(event: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return {k: v for k, v in event.items() if isinstance(v, (str, int, float, bool)) or v is None}


def recorder(*, every_s: float = 1.0, run: RunRecord | None = None,
             home: Path | None = None) -> Progress | None:
    """A progress callback for the current job; None when there is nowhere to record (no RQ job
    and no run), so packages skip their own bookkeeping. ``run`` with ``home``: also saved into
    that run's ``run.json``."""
    job = get_current_job()
    if job is None and run is None:
        return None
    last = {"at": 0.0, "stage": None}

    def record(event: dict[str, t.Any]) -> None:
        now = time.monotonic()
        stage = event.get("stage")
        finished = event.get("done") is not None and event.get("done") == event.get("total")
        if stage == last["stage"] and not finished and now - last["at"] < every_s:
            return
        last.update(at=now, stage=stage)
        clean = _scalars(event)
        if job is not None:
            job.meta["progress"] = clean
            if run is not None:
                job.meta["run_id"] = run.id
            with contextlib.suppress(Exception):  # progress must never fail the work it reports
                job.save_meta()
        if run is not None and home is not None:
            run.progress = clean
            save_run(home, run)

    return record
