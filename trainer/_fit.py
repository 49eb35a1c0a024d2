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

    def curves(self, data: Any) -> tuple[list[list[float]], list[list[float]]]:
        """(held-out curve, training-loss curve), the held-out loss evaluated once more at the end."""
        from trainer.finetune import _final_curves

        return _final_curves(self.trainer, self.reporter, has_heldout=data.heldout is not None)

    def result(self, cfg: FinetuneConfig, curves: tuple[list, list], *, started: float, use_cpu: bool,
               block_size: int, embedding: dict, family: Any, data: Any, extras: dict[str, Any]) -> Any:
        """The run's :class:`~trainer.finetune.TrainResult` (``extras`` added to the common ones),
        written to ``output_dir/train.json`` by rank 0 before every rank returns."""
        from durable import write_json_atomic
        from trainer.finetune import TrainResult, _peak_memory_bytes

        heldout_curve, loss_curve = curves
        trainer, args, seconds = self.trainer, self.trainer.args, self.train_seconds
        steps = trainer.state.global_step
        steps_here = steps - self.reporter.start_step
        result = TrainResult(
            checkpoint=Path(cfg.output_dir), steps=steps, tokens=steps * self.tokens_per_step,
            train_loss=loss_curve[-1][1] if loss_curve else None,
            heldout_loss=heldout_curve[-1][1] if heldout_curve else None,
            wall_time_s=round(time.perf_counter() - started, 3),
            tokens_per_s=round(steps_here * self.tokens_per_step / seconds, 2) if seconds > 0 else 0.0,
            peak_memory_bytes=_peak_memory_bytes(not use_cpu),
            resumed_from=str(self.resume) if self.resume else None,
            loss_curve=loss_curve, heldout_curve=heldout_curve,
            extras={"block_size": block_size, "tokens_per_step": self.tokens_per_step,
                    "world_size": args.world_size, "device": "cpu" if use_cpu else "cuda",
                    "steps_this_run": steps_here, "train_seconds": round(seconds, 3), "embedding": embedding,
                    "family": family.name, "data": data.summary(), "config": cfg.to_dict(), **extras})
        if args.process_index == 0:
            write_json_atomic(Path(cfg.output_dir) / "train.json", result.as_dict())
        # Other nodes' launchers read train.json as soon as their ranks exit: keep them until it exists.
        trainer.accelerator.wait_for_everyone()
        return result


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
