"""Reading a version folder: where its checkpoint lives and its context window.

Durable writes live in the leaf package :mod:`durable`."""

from __future__ import annotations

import json
from pathlib import Path


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
