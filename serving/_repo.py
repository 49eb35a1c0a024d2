"""Pieces the model repository and the adapter repository share: the per-model lock, the
atomic pointer switch, progress events and tolerant JSON reads.

Both repositories keep the same on-disk promises (see :mod:`serving.repository`): a lock file
that is never truncated, and a ``serving.json`` symlink that is replaced in one rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from durable import fsync_dir

POINTER_FILE = "serving.json"

ProgressFn = Callable[[dict[str, Any]], None]


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold ``<model_dir>/.lock`` exclusively (publish, activate and rollback, across processes)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: a new mtime on a file in the model folder would make
    # Triton reload every loaded version at the next load.
    fd = os.open(model_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def relink(model_dir: Path, target: str) -> None:
    """Atomically re-point ``<model_dir>/serving.json`` at ``target`` (relative to the model
    folder): readers see the old pointer or the new one, never neither."""
    link = model_dir / POINTER_FILE
    # A unique temp name: two switches (threads or processes) never share one.
    tmp = model_dir / f".{POINTER_FILE}.{uuid.uuid4().hex}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(model_dir)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when missing or half-written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def emit(progress: ProgressFn | None, stage: str, done: int, total: int, **extra: Any) -> None:
    if progress is not None:
        progress({"stage": stage, "done": done, "total": total, **extra})
