"""Fine-tune a code model (CodeGen, or a FIM family with the FIM transform) with the Hugging Face Trainer and DeepSpeed.

Reads top to bottom as the stages of a run: check the config → set up the process group →
tokenizer and block size → tokenise/pack (cached, :mod:`trainer.data`) → model and embedding
rows → train (resuming from the last complete checkpoint) → held-out loss → save the final
checkpoint and ``train.json``.

Two ways to run the same code: :func:`train` in the current process (CPU, one rank; what
tests and the embedded setup use), or :func:`trainer.launch.launch` (re-exported here), which
starts this module once per rank through DeepSpeed's launcher, on one node or several.

Tokens per optimizer step = per_device_batch × grad_accum × world_size × block_size; the
recipe's 1 × 32 × 4 × 2048 = 262,144 tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from families import FAMILIES
from trainer._base_model import (
    check_token_range,
    effective_block_size,
    load_model,
    load_tokenizer,
)
from trainer._fit import fit_model, prepare_data
from trainer.errors import FinetuneError, TrainerError
from trainer.launch import DIST_VARS, build_launch_command, free_port, launch, peer_lost_error
from trainer.progress import ProgressFn, parse_progress_line, print_progress

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; ``train.json`` records it as given."""

    base: str
    """Base model: a hub id (``Salesforce/codegen-350M-multi``) or a local HF folder, e.g. the
    production checkpoint for continued training or the tiny model from ``repotune model init-tiny``."""
    train_files: list[str]
    """Training shards (``corpus/<name>/shards/train-NN.jsonl.zst``)."""
    heldout_files: list[str]
    """Held-out shards; their loss is measured every ``eval_every`` steps. May be empty."""
    output_dir: str
    """Final checkpoint (safetensors + tokenizer) and ``train.json`` land here; intermediate
    checkpoints under ``output_dir/checkpoints/``. Rerunning with the same folder resumes."""
    block_size: int = 2048
    """Tokens per training block; capped at the model's context (``n_positions``)."""
    learning_rate: float = 2e-5
    """Peak learning rate (linear decay after ``warmup_steps``). The recipe's 2e-5."""
    num_epochs: float = 1.0
    """Passes over the training blocks; ignored when ``max_steps`` > 0."""
    max_steps: int = -1
    """Optimizer steps to run; -1 means ``num_epochs`` decides."""
    per_device_batch: int = 1
    """Blocks per rank per forward pass (the recipe's per_device_train_batch_size=1)."""
    grad_accum: int = 1
    """Forward passes per optimizer step (the recipe used 32 on 4 GPUs)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 42
    """Seeds model init of new rows, data order and dropout."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` (GPU or CPU) or ``fp16`` (GPU only; the recipe's choice on P40/V100)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30 % slower."""
    deepspeed: str = "zero2-offload"
    """``zero2-offload`` (recipe default), ``zero2``, ``zero3``, ``zero3-offload``, ``none``
    (plain Trainer) or a path to a DeepSpeed JSON config."""
    eval_every: int = 50
    """Held-out loss every N optimizer steps (and once before the first step and at the end)."""
    save_every: int = 200
    """Write a resumable checkpoint every N optimizer steps."""
    keep_checkpoints: int = 2
    """Intermediate checkpoints kept under ``output_dir/checkpoints``."""
    log_every: int = 10
    """Training loss and a progress event every N optimizer steps."""
    max_eval_blocks: int = 64
    """Held-out blocks evaluated each time (bounds evaluation cost on big corpora)."""
    cache_dir: str | None = None
    """Tokenisation cache (``corpus/<name>/tokenized``); default ``output_dir/tokenized``."""
    num_proc: int = 1
    """Processes used to tokenise a shard."""
    resize_embeddings: bool = True
    """Grow the embedding rows (to a multiple of 64) when the tokenizer has more tokens than the
    model has rows. Rows are never removed. If False, such a corpus fails with TokenOutOfRange."""
    use_cpu: bool | None = None
    """Train on CPU. ``None``: CPU exactly when CUDA is not available."""
    num_nodes: int = 1
    """Machines taking part (DeepSpeed launcher only); each runs ``gpus`` ranks."""
    node_rank: int | None = None
    """This node in 0..num_nodes-1: start only its ranks, no ssh (``--no_ssh``); None: hostfile over ssh."""
    master_addr: str | None = None
    """Address of node 0 that every node can reach (multi-node rendezvous, ``MASTER_ADDR``)."""
    master_port: int | None = None
    """Rendezvous port on node 0, the same on every node; None: 29500 multi-node, a free port on one node."""
    dist_timeout_s: int = 1800
    """Seconds a rank waits for its peers in a collective before failing (a dead node ends the run, not hangs it)."""
    family: str | None = None
    """Model family (codegen, starcoder2, qwen2.5-coder, deepseek-coder, codellama, codegemma) whose FIM format
    training uses; None: detected from the base checkpoint's model_type and tokenizer (docs/families.md)."""
    fim_rate: float = 0.5
    """Share of training files made fill-in-the-middle examples, for a FIM family; a left-to-right family
    (CodeGen) trains left to right whatever this says, and train.json records fim_rate 0."""
    spm_rate: float = 0.5
    """Share of FIM examples in suffix-prefix-middle order (families trained with PSM only ignore it)."""
    method: str = "full"
    """``full`` (every weight, DeepSpeed) or ``lora`` (a small adapter over a frozen base, plain PyTorch, no
    DeepSpeed; the output folder is an adapter that names its base by digest). LoRA learns best with a
    higher learning_rate than full training, about 1e-4 to 3e-4 (docs/training.md)."""
    lora_r: int = 16
    """LoRA rank: width of the low-rank update per targeted layer (adapter size grows linearly with it)."""
    lora_alpha: int = 32
    """LoRA scaling numerator: the update is multiplied by lora_alpha / lora_r (2 at the defaults)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input during training, in [0, 1)."""
    lora_target_modules: list[str] = field(default_factory=list)
    """Module names LoRA wraps (e.g. q_proj, v_proj); empty: the architecture's attention and MLP projections
    (trainer.lora.DEFAULT_TARGET_MODULES)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FinetuneError(f"unknown FinetuneConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: Path | str) -> FinetuneConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train_files"] = [str(p) for p in self.train_files]
        data["heldout_files"] = [str(p) for p in self.heldout_files]
        return data

    def problems(self) -> list[str]:
        """Every reason this config cannot run, collected before failing once."""
        from trainer import deepspeed_configs

        found = []
        if not self.train_files:
            found.append("train_files is empty: point it at the corpus's train-*.jsonl.zst shards")
        if self.precision not in PRECISIONS:
            found.append(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.block_size < 2:
            found.append(f"block_size={self.block_size}: must be at least 2")
        for name in ("per_device_batch", "grad_accum", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                found.append(f"{name}={getattr(self, name)}: must be at least 1")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_epochs <= 0):
            found.append("nothing to train: set max_steps > 0 or num_epochs > 0")
        ds = str(self.deepspeed)
        if ds not in deepspeed_configs.names() and not Path(ds).expanduser().is_file():
            found.append(f"deepspeed={ds!r}: use one of {', '.join(deepspeed_configs.names())} "
                         "or a path to a JSON config")
        if self.family is not None and self.family not in FAMILIES:
            found.append(f"family={self.family!r}: use one of {', '.join(FAMILIES)} (or leave it unset: detected)")
        found += [f"{n}={getattr(self, n)}: must be between 0 and 1" for n in ("fim_rate", "spm_rate")
                  if not 0.0 <= getattr(self, n) <= 1.0]
        from trainer.lora import lora_problems

        return found + lora_problems(self)


@dataclass
class TrainResult:
    """What a finished run produced (also written to ``output_dir/train.json``)."""

    checkpoint: Path
    """Final HF checkpoint folder (safetensors + tokenizer files), or for ``method="lora"`` the adapter
    folder (:mod:`families.adapters`); equals ``output_dir``."""
    steps: int
    """Optimizer steps completed in total (including those before a resume)."""
    tokens: int
    """Training tokens consumed in total: steps × tokens per step."""
    train_loss: float | None
    """Last logged training loss."""
    heldout_loss: float | None
    """Held-out loss at the end (None without held-out shards)."""
    wall_time_s: float
    """Wall time of this process's run, preparation included."""
    tokens_per_s: float
    """Training tokens per second over this process's training loop."""
    peak_memory_bytes: int
    """Peak RSS on CPU; ``torch.cuda.max_memory_allocated`` on GPU (rank 0)."""
    resumed_from: str | None
    """Checkpoint folder the run resumed from, if any."""
    loss_curve: list[list[float]] = field(default_factory=list)
    """``[step, loss]`` pairs."""
    heldout_curve: list[list[float]] = field(default_factory=list)
    """``[step, held-out loss]`` pairs, starting at step 0 (or the resume step)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Block size, embedding resize, tokenisation cache account (``data``, with ``data["fim"]``: the FIM
    summary or None), ``family`` (given or detected), world size …"""

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        kept["checkpoint"] = Path(kept["checkpoint"])
        return cls(**kept)


# ───────────────────────────── helpers (pure) ─────────────────────────────


def last_complete_checkpoint(folder: Path) -> Path | None:
    """Newest ``checkpoint-N`` whose save finished (``trainer_state.json`` is written last)."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


@contextlib.contextmanager
def _scoped_env(single_rank: bool) -> Iterator[None]:
    """Environment for one in-process run, restored afterwards.

    DeepSpeed wants a process group even for one rank; without RANK/WORLD_SIZE/… it looks for
    MPI. We set them only when no launcher did. accelerate leaves ``ACCELERATE_USE_DEEPSPEED``
    set after a DeepSpeed run, which would turn a later ``deepspeed="none"`` run in the same
    process into a DeepSpeed one; and a leaked RANK would make a child process join our
    rendezvous. So every ACCELERATE_* and rendezvous variable is put back as it was.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_") or k in DIST_VARS}
    if single_rank and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("ACCELERATE_") or k in DIST_VARS]:
            if key not in saved:
                del os.environ[key]
        os.environ.update(saved)


def _peak_memory_bytes(on_gpu: bool) -> int:
    if on_gpu:
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    ids = torch.as_tensor([row["input_ids"] for row in rows], dtype=torch.long)
    # CodeGen shifts labels inside forward; -100 is never needed because blocks are full.
    return {"input_ids": ids, "labels": ids.clone()}


# ───────────────────────────── in-process training ─────────────────────────────


def train(cfg: FinetuneConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Fine-tune ``cfg.base`` on the corpus shards; resume if ``output_dir`` holds a checkpoint.

    Runs in this process as one rank (or as one of the ranks the launcher started). Returns
    the :class:`TrainResult` and writes ``output_dir/train.json`` on rank 0. ``method="lora"``
    goes to :func:`trainer.lora.train_lora` (same data and progress, no DeepSpeed, an adapter out).
    """
    started = time.perf_counter()
    problems = cfg.problems()
    if problems:
        raise FinetuneError("cannot start fine-tuning:\n  - " + "\n  - ".join(problems))
    if cfg.method == "lora":
        from trainer.lora import train_lora

        return train_lora(cfg, progress, started)

    import torch

    use_cpu = cfg.use_cpu if cfg.use_cpu is not None else not torch.cuda.is_available()
    if cfg.precision == "fp16" and use_cpu:
        raise FinetuneError("precision='fp16' needs a GPU (PyTorch has no fp16 training on CPU); "
                            "use precision='bf16' or 'fp32' on CPU")
    from trainer import deepspeed_configs

    ds_config = deepspeed_configs.load(cfg.deepspeed)
    with _scoped_env(single_rank=ds_config is not None):
        try:
            return _train(cfg, progress, started, use_cpu, ds_config)
        except RuntimeError as exc:
            lost = peer_lost_error(cfg, exc)
            if lost is None:
                raise
            raise lost from exc


def _train(cfg: FinetuneConfig, progress: ProgressFn | None, started: float, use_cpu: bool,
           ds_config: dict | None) -> TrainResult:
    tokenizer, block_size, family = load_tokenizer(cfg)
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    args = _training_args(cfg, ckpt_dir, use_cpu, ds_config)  # also sets up the process group

    data = prepare_data(cfg, args, tokenizer, family, block_size, progress)
    model, embedding = load_model(cfg, tokenizer)
    check_token_range(data.max_token_id, embedding["rows"])
    fit = fit_model(cfg, args, model, data, block_size, progress)
    curves = fit.curves(data)
    fit.trainer.save_model(str(out))
    if args.should_save:
        tokenizer.save_pretrained(str(out))
    return fit.result(cfg, curves, started=started, use_cpu=use_cpu, block_size=block_size, embedding=embedding,
                      family=family, data=data,
                      extras={"num_nodes": int(os.environ.get("CROSS_SIZE") or 1),  # set by DeepSpeed's launcher
                              "deepspeed": cfg.deepspeed})


def _final_curves(trainer, reporter, *, has_heldout: bool) -> tuple[list[list[float]], list[list[float]]]:
    """(held-out curve, training-loss curve); evaluates once more unless the last step just did."""
    state = trainer.state
    heldout_curve = [[h["step"], h["eval_loss"]] for h in state.log_history if "eval_loss" in h]
    if has_heldout and (not heldout_curve or heldout_curve[-1][0] != state.global_step):
        final = trainer.evaluate()
        heldout_curve.append([state.global_step, final["eval_loss"]])
        reporter.emit({"heldout_loss": final["eval_loss"]}, state.global_step, state.max_steps)
    loss_curve = [[h["step"], h["loss"]] for h in state.log_history if "loss" in h]
    return heldout_curve, loss_curve


def _training_args(cfg: FinetuneConfig, ckpt_dir: Path, use_cpu: bool, ds_config: dict | None):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.per_device_batch,
        per_device_eval_batch_size=cfg.per_device_batch,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        deepspeed=ds_config,
        use_cpu=use_cpu,
        eval_strategy="steps" if cfg.heldout_files else "no",
        eval_steps=cfg.eval_every,
        eval_on_start=bool(cfg.heldout_files),
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=cfg.keep_checkpoints,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_timeout=cfg.dist_timeout_s,
    )


# ───────────────────────────── entry point for the launcher ─────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.finetune --config run.json``: one rank of a (launched) fine-tune."""
    parser = argparse.ArgumentParser(prog="python -m trainer.finetune", description=main.__doc__)
    parser.add_argument("--config", required=True, help="FinetuneConfig as JSON")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by launchers that pass it; LOCAL_RANK in the environment wins")
    args = parser.parse_args(argv)
    cfg = FinetuneConfig.from_json(args.config)
    try:
        result = train(cfg, progress=print_progress)
    except TrainerError as exc:  # FinetuneError, or a FamilyError (a sentinel the tokenizer lacks)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"REPOTUNE_RESULT {json.dumps(result.as_dict()['checkpoint'])}", flush=True)
    return 0


__all__ = [
    "FinetuneConfig",
    "TrainResult",
    "build_launch_command",
    "check_token_range",
    "effective_block_size",
    "last_complete_checkpoint",
    "launch",
    "main",
    "parse_progress_line",
    "train",
]

if __name__ == "__main__":
    sys.exit(main())
