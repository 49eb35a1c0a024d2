"""trainer: the corpus engine, fine-tuning, evaluation and the tiny-model bootstrap.

Subpackages: :mod:`trainer.corpus` (git → clean, deduplicated, secret-free zstd JSONL shards,
updated incrementally) and :mod:`trainer.evaluate` (held-out completion tasks, metrics and the
promotion gate). Heavy libraries (torch, transformers, deepspeed, datasets) are imported inside
the functions that need them, so ``import trainer`` is cheap.
"""

from __future__ import annotations

from trainer.errors import CorpusError as CorpusError
from trainer.errors import EvaluationError as EvaluationError
from trainer.errors import FinetuneError as FinetuneError
from trainer.errors import RepositoryError as RepositoryError
from trainer.errors import ShardCorrupt as ShardCorrupt
from trainer.errors import TokenOutOfRange as TokenOutOfRange
from trainer.errors import TrainerError as TrainerError
from trainer.finetune import FinetuneConfig as FinetuneConfig
from trainer.finetune import TrainResult as TrainResult
from trainer.finetune import launch as launch
from trainer.finetune import train as train
from trainer.tiny import TinyModelConfig as TinyModelConfig
from trainer.tiny import init_tiny as init_tiny

__all__ = [
    "CorpusError",
    "EvaluationError",
    "FinetuneConfig",
    "FinetuneError",
    "RepositoryError",
    "ShardCorrupt",
    "TinyModelConfig",
    "TokenOutOfRange",
    "TrainResult",
    "TrainerError",
    "init_tiny",
    "launch",
    "train",
]
