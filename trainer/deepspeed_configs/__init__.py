"""DeepSpeed configurations shipped with RepoTune, and a loader.

| name            | ZeRO | offload              | when                                               |
|-----------------|------|----------------------|----------------------------------------------------|
| ``zero2-offload`` | 2  | optimizer → CPU      | the original recipe's default; one 24 GB GPU, 350M |
| ``zero2``         | 2  | none                 | enough GPU memory; fastest; no DeepSpeed optimizer |
| ``zero3``         | 3  | none                 | 2B–6B on several GPUs; 16-bit weights gathered on save |
| ``zero3-offload`` | 3  | optimizer + params → CPU | 16B on a few 80 GB GPUs                        |

Values written ``"auto"`` are filled by the Hugging Face Trainer from ``TrainingArguments``
(batch sizes, gradient accumulation and clipping, learning rate, fp16/bf16, bucket sizes from
the model's hidden size). :func:`resolve_auto` does the same substitution for validation and
for showing the effective config. ``"none"`` means plain Trainer without DeepSpeed; anything
else is read as a path to a JSON file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent

SHIPPED: dict[str, str] = {
    "zero2-offload": "zero2_offload.json",
    "zero2": "zero2.json",
    "zero3": "zero3.json",
    "zero3-offload": "zero3_offload.json",
}
"""Shipped config name → file in this folder."""


def names() -> list[str]:
    """Names accepted by :func:`load` besides a path: the shipped configs and ``"none"``."""
    return [*SHIPPED, "none"]


def path_of(name: str) -> Path:
    """File of a shipped config."""
    return _HERE / SHIPPED[name]


def load(name_or_path: str | Path) -> dict[str, Any] | None:
    """The config dict for a shipped name or a JSON file path; ``None`` for ``"none"``."""
    from trainer.errors import FinetuneError

    key = str(name_or_path)
    if key == "none":
        return None
    path = path_of(key) if key in SHIPPED else Path(key).expanduser()
    if not path.is_file():
        raise FinetuneError(
            f"unknown DeepSpeed config {key!r}: not one of {', '.join(names())} and no such file"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise FinetuneError(f"DeepSpeed config {path} is not valid JSON: {exc}") from exc


def find_auto(config: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``"auto"``."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            found += find_auto(value, f"{prefix}{key}.")
    elif config == "auto":
        found.append(prefix.rstrip("."))
    return found


def resolve_auto(
    config: dict[str, Any],
    *,
    micro_batch: int = 1,
    grad_accum: int = 1,
    world_size: int = 1,
    hidden_size: int = 1024,
    learning_rate: float = 2e-5,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    precision: str = "fp32",
) -> dict[str, Any]:
    """A copy of ``config`` with every ``"auto"`` replaced the way the HF Trainer fills it."""
    values = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "optimizer.params.lr": learning_rate,
        "optimizer.params.betas": [0.9, 0.999],
        "optimizer.params.eps": 1e-8,
        "optimizer.params.weight_decay": weight_decay,
        "fp16.enabled": precision == "fp16",
        "bf16.enabled": precision == "bf16",
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    out = copy.deepcopy(config)
    for dotted in find_auto(out):
        if dotted not in values:
            raise ValueError(f"no rule to fill 'auto' at {dotted}")
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = values[dotted]
    return out


__all__ = ["SHIPPED", "find_auto", "load", "names", "path_of", "resolve_auto"]
