"""The training loop both methods share: the tokenised corpus and the transformers Trainer run.

Full fine-tuning (:mod:`trainer.finetune`, DeepSpeed) and LoRA (:mod:`trainer.lora`, peft) differ
in the model they hand over and in what they save; reading the corpus, resuming from the newest
complete checkpoint and reporting progress are the same, so they live here once.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.progress import ProgressCallback, ProgressFn

if t.TYPE_CHECKING:
    from trainer.finetune import FinetuneConfig


def prepare_data(cfg: FinetuneConfig, args: Any, tokenizer: Any, family: Any, block_size: int,
                 progress: ProgressFn | None) -> Any:
    """The tokenised corpus (:func:`trainer.data.prepare`) that full and LoRA training both read;
    rank 0 tokenises first, the other ranks then read its cache."""
    from trainer.data import prepare
    from trainer.fim import FimSettings

    # Only a FIM family gets the transform: CodeGen keeps the plain (faster) packing path.
    fim = FimSettings(family.name, cfg.fim_rate, cfg.spm_rate, cfg.seed) if family.has_fim else None
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir) / "tokenized"
    with args.main_process_first(desc="tokenise corpus", local=False):
        return prepare(cfg.train_files, cfg.heldout_files, tokenizer, cache_dir, block_size,
                       num_proc=cfg.num_proc, max_eval_blocks=cfg.max_eval_blocks, fim=fim,
                       progress=progress if args.process_index == 0 else None)


@dataclass
class Fit:
    """What :func:`fit_model` leaves for the result: the trainer, its progress reporter, timings."""

    trainer: Any
    reporter: ProgressCallback
    train_seconds: float
    resume: Path | None
    tokens_per_step: int


def fit_model(cfg: FinetuneConfig, args: Any, model: Any, data: Any, block_size: int,
              progress: ProgressFn | None) -> Fit:
    """Run the transformers Trainer on ``model`` (a full model or a PeftModel), resuming from the
    newest complete checkpoint in ``output_dir/checkpoints``; progress goes to ``progress``."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    from trainer.finetune import _collate as collate
    from trainer.finetune import last_complete_checkpoint

    resume = last_complete_checkpoint(Path(cfg.output_dir) / "checkpoints")
    tokens_per_step = cfg.per_device_batch * cfg.grad_accum * args.world_size * block_size
    reporter = ProgressCallback(progress, tokens_per_step)
    trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.heldout,
                      data_collator=collate, callbacks=[reporter])
    # Our progress events replace the Trainer's printed log dicts.
    trainer.remove_callback(PrinterCallback)
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return Fit(trainer, reporter, time.perf_counter() - train_started, resume, tokens_per_step)
