"""Durable file writes: the one implementation every RepoTune package uses.

A file that another process reads (``run.json``, a shard, ``eval.json``, a Triton
``config.pbtxt``) is never written in place. It goes to a uniquely named temp file in the
same folder, is flushed and fsync'd, renamed over the target (atomic on POSIX), and the
folder is fsync'd so the rename itself survives a power cut. Readers see the old bytes or
the new bytes, never a mix, and two writers of the same path never share a temp file (the
last rename wins, nothing is torn).

This package is a leaf: it imports only the standard library, so ``trainer``,
``converter``, ``serving`` and ``bot`` may all import it (docs/architecture.md, layering).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["copytree_fsync", "fsync_dir", "fsync_tree", "write_atomic", "write_json_atomic"]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``str`` is written as UTF-8. ``mode`` sets the permission bits (the temp file is
    created 0600 by :func:`tempfile.mkstemp`; without ``mode`` it is widened to 0644).
    On any error the temp file is removed and the old ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any, *, indent: int | None = 2) -> None:
    """:func:`write_atomic` of ``value`` as JSON (sorted keys, trailing newline)."""
    write_atomic(path, json.dumps(value, indent=indent, sort_keys=True) + "\n")


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (after a copy or a staged build)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def copytree_fsync(src: Path, dst: Path) -> None:
    """Copy a tree (no symlinks followed out of it) and fsync everything written."""
    shutil.copytree(src, dst, symlinks=False)
    fsync_tree(dst)
