"""Small file helpers: atomic writes, fsync'd copies, and reading a version folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def copytree_fsync(src: Path, dst: Path) -> None:
    """Copy a tree and fsync every file and folder written."""
    shutil.copytree(src, dst, symlinks=False)
    fsync_tree(dst)


def fsync_tree(dst: Path) -> None:
    """fsync every file and folder under ``dst``."""
    for folder, _dirs, files in os.walk(dst):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def checkpoint_dir(version_dir: Path) -> Path | None:
    """Where a version's tokenizer and HF config live: ``model/`` (python backend) or
    ``tokenizer/`` (FasterTransformer artifacts)."""
    for name in ("model", "tokenizer"):
        if (version_dir / name).is_dir():
            return version_dir / name
    return None


def context_window(version_dir: Path, default: int = 2048) -> int:
    """The model's context length in tokens: HF config ``n_positions`` (or
    ``max_position_embeddings``), else FasterTransformer's ``max_seq_len``, else ``default``."""
    ckpt = checkpoint_dir(version_dir)
    if ckpt is not None and (ckpt / "config.json").is_file():
        cfg = json.loads((ckpt / "config.json").read_text())
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            if cfg.get(key):
                return int(cfg[key])
    pbtxt = version_dir / "config.pbtxt"
    if pbtxt.is_file():
        import re

        match = re.search(r'key:\s*"max_seq_len"\s*value:\s*\{\s*string_value:\s*"(\d+)"', pbtxt.read_text())
        if match:
            return int(match.group(1))
    return default
