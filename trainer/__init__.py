"""trainer: the corpus engine, fine-tuning, evaluation and the tiny-model bootstrap.

Subpackages: :mod:`trainer.corpus` (git → clean, deduplicated, secret-free zstd JSONL shards,
updated incrementally) and :mod:`trainer.evaluate` (held-out completion tasks, metrics and the
promotion gate). :mod:`trainer.families` is the model-family registry (FIM sentinels, prompt
formats, stop tokens) that the completion proxy calls too. Heavy libraries (torch, transformers, deepspeed, datasets) are imported inside
the functions that need them, so ``import trainer`` is cheap.
"""

from __future__ import annotations

from families import FAMILIES as FAMILIES
from families import Family as Family
from families import build_fim_prompt as build_fim_prompt
from families import detect_checkpoint_family as detect_checkpoint_family
from families import detect_family as detect_family
from families import get_family as get_family
from families import stop_tokens as stop_tokens
from trainer.errors import CorpusError as CorpusError
from trainer.errors import EvaluationError as EvaluationError
from trainer.errors import FamilyError as FamilyError
from trainer.errors import FinetuneError as FinetuneError
from trainer.errors import RepositoryError as RepositoryError
from trainer.errors import ShardCorrupt as ShardCorrupt
from trainer.errors import TokenOutOfRange as TokenOutOfRange
from trainer.errors import TrainerError as TrainerError
from trainer.fim import FimSettings as FimSettings
from trainer.finetune import FinetuneConfig as FinetuneConfig
from trainer.finetune import TrainResult as TrainResult
from trainer.finetune import launch as launch
from trainer.finetune import train as train
from trainer.tiny import TinyModelConfig as TinyModelConfig
from trainer.tiny import init_tiny as init_tiny

__all__ = [
    "FAMILIES",
    "CorpusError",
    "EvaluationError",
    "Family",
    "FamilyError",
    "FimSettings",
    "FinetuneConfig",
    "FinetuneError",
    "RepositoryError",
    "ShardCorrupt",
    "TinyModelConfig",
    "TokenOutOfRange",
    "TrainResult",
    "TrainerError",
    "build_fim_prompt",
    "detect_checkpoint_family",
    "detect_family",
    "get_family",
    "init_tiny",
    "launch",
    "stop_tokens",
    "train",
]
