"""One model of a RepoTune (a ``[[models]]`` table): :class:`ModelSpec`, its field docs and forms.

A leaf like :mod:`bot.repo_config`, split from :mod:`bot.models` (which re-exports it) so that
:mod:`bot.settings` can declare ``Settings.models`` without an import circle; the parsing, the
implicit model and a model's view of the settings are :mod:`bot.models`'.
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass, field

METHODS = ("lora", "full")
"""How a model is fine-tuned: a LoRA adapter on a frozen base (peft), or every weight (DeepSpeed)."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A model name: a Triton model folder, a Redis key part and a chat-ops argument, so letters,
digits, ``_`` and ``-`` only (no dots, slashes or spaces), at most 64 characters."""

SPEC_TRAINING_FIELDS = ("base_model", "family", "method", "lora_r", "lora_alpha", "lora_dropout",
                        "lora_target_modules")
"""ModelSpec fields that land in the model's ``[training]`` (written there by :func:`settings_for`),
so a ``training`` override may not name them too."""


@dataclass
class ModelSpec:
    """One model (a ``[[models]]`` table): what it is called, what it starts from, what it learns from."""

    name: str = None  # type: ignore[assignment]  # required; parse_models names the fix
    """Model name: the Triton model and the engine/model name editors ask for (letters, digits, `_`, `-`)."""
    base_model: str | None = None
    """Base checkpoint this model fine-tunes (a local folder or hub id); default training.base_model."""
    family: str | None = None
    """Model family of the base (codegen, starcoder2, qwen2.5-coder, …); default training.family (unset: detected)."""
    repos: list[str] = field(default_factory=list)
    """Names of the [[repos]] this model learns from; its completions can reveal their code, so only API keys allowed for this model should reach it."""
    method: str = "lora"
    """lora (a small adapter on the frozen base: cheap to train, publish and hot-swap) or full (every weight, DeepSpeed)."""
    lora_r: int = 16
    """LoRA rank (method lora)."""
    lora_alpha: int = 32
    """LoRA scaling alpha (method lora)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA layers (method lora)."""
    lora_target_modules: list[str] = field(default_factory=list)
    """Modules that get LoRA layers (method lora); empty: the family's default modules."""
    training: dict[str, t.Any] = field(default_factory=dict)
    """Overrides of [training] keys for this model only (e.g. { num_epochs = 2, learning_rate = 0.0002 })."""
    evaluation: dict[str, t.Any] = field(default_factory=dict)
    """Overrides of [evaluation] keys for this model's gate only (e.g. { num_tasks = 100 })."""
    implicit: bool = field(default=False, metadata={"setting": False})
    """True for the one model of a configuration without [[models]] (today's behaviour)."""
