"""``repotune train`` (fine-tune on a corpus) and ``repotune model init-tiny`` (offline base model)."""

from __future__ import annotations

from pathlib import Path

import click

from bot.commands._common import home_option, progress_bar, resolve_home

DEEPSPEED_CHOICES = ["zero2-offload", "zero2", "zero3", "zero3-offload", "none"]


def _corpus_files(home: Path, name: str) -> tuple[list[Path], list[Path]]:
    from trainer.corpus import shard_files
    from trainer.errors import TrainerError

    try:
        train_files = shard_files(home, name, "train")
        heldout_files = shard_files(home, name, "heldout")
    except (TrainerError, OSError) as exc:
        raise click.ClickException(f"cannot read corpus {name!r} under {home}: {exc}. "
                                   f"Build it first: repotune corpus build <url> --name {name}") from exc
    if not train_files:
        raise click.ClickException(f"corpus {name!r} has no train shards; run `repotune corpus update {name}`")
    return train_files, heldout_files


@click.command("train")
@click.option("--corpus", "corpus_name", required=True, help="Corpus name (see `repotune corpus list`).")
@click.option("--base", required=True, help="Base model: local HF folder or hub id (Salesforce/codegen-350M-multi).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: final checkpoint, train.json, checkpoints/ (rerun to resume).")
@click.option("--deepspeed", "deepspeed", default="zero2-offload", show_default=True,
              help=f"DeepSpeed config: {', '.join(DEEPSPEED_CHOICES)} or a JSON file path.")
@click.option("--max-steps", type=int, default=-1, show_default=True, help="Optimizer steps (-1: --epochs decides).")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the corpus.")
@click.option("--block-size", type=int, default=2048, show_default=True, help="Tokens per block (capped at the model's context).")
@click.option("--lr", "learning_rate", type=float, default=2e-5, show_default=True, help="Peak learning rate.")
@click.option("--batch", "per_device_batch", type=int, default=1, show_default=True, help="Blocks per rank per step.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--eval-every", type=int, default=50, show_default=True, help="Held-out loss every N steps.")
@click.option("--save-every", type=int, default=200, show_default=True, help="Resumable checkpoint every N steps.")
@click.option("--gpus", type=int, default=None, help="Spawn the deepspeed launcher with N ranks per host.")
@click.option("--include", default=None, help="deepspeed --include, e.g. localhost:1,2 (launcher mode).")
@click.option("--hostfile", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="deepspeed --hostfile for multi-node runs (launcher mode).")
@click.option("--num-nodes", type=int, default=1, show_default=True,
              help="Machines in the run (launcher mode); with --node-rank each node runs this command itself.")
@click.option("--node-rank", type=int, default=None,
              help="This machine's place in 0..N-1: start only its ranks, no ssh (deepspeed --no_ssh).")
@click.option("--master-addr", default=None, help="Address of node 0 that every node can reach.")
@click.option("--master-port", type=int, default=None,
              help="Rendezvous port on node 0, the same on every node [default: 29500 multi-node].")
@click.option("--dist-timeout", "dist_timeout_s", type=int, default=1800, show_default=True,
              help="Seconds a rank waits for a silent peer before the run fails.")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE",
              help="Extra environment for the ranks (NCCL_DEBUG=INFO, NCCL_SHM_DISABLE=1 …).")
@click.option("--method", type=click.Choice(["full", "lora"]), default="full", show_default=True,
              help="full: every weight (DeepSpeed); lora: a small adapter over the frozen base (no DeepSpeed).")
@click.option("--lora-r", type=int, default=16, show_default=True, help="LoRA rank (--method lora).")
@click.option("--lora-alpha", type=int, default=32, show_default=True, help="LoRA scale numerator (alpha / r).")
@click.option("--lora-dropout", type=float, default=0.05, show_default=True, help="Dropout on the LoRA branch.")
@click.option("--lora-target", "lora_targets", multiple=True, metavar="MODULE",
              help="Module LoRA wraps (repeat); none: the architecture's attention and MLP projections.")
@home_option
def train_cmd(corpus_name: str, base: str, out_dir: Path, deepspeed: str, max_steps: int, epochs: float,
              block_size: int, learning_rate: float, per_device_batch: int, grad_accum: int, precision: str,
              eval_every: int, save_every: int, gpus: int | None, include: str | None, hostfile: Path | None,
              num_nodes: int, node_rank: int | None, master_addr: str | None, master_port: int | None,
              dist_timeout_s: int, env_pairs: tuple[str, ...], method: str, lora_r: int, lora_alpha: int,
              lora_dropout: float, lora_targets: tuple[str, ...], home: Path | None) -> None:
    """Fine-tune BASE on a corpus; in-process on CPU, or through the deepspeed launcher with
    --gpus/--include/--hostfile/--num-nodes. Rerunning with the same --out resumes from the last
    checkpoint. Multi-node without ssh: run the same command on every node with its own
    --node-rank and the same --master-addr/--master-port (docs/operations.md). With --method lora
    the output folder is an adapter (docs/training.md); `repotune model export-merged` makes it a
    full checkpoint."""
    from trainer.finetune import FinetuneConfig, launch, train

    home_dir = resolve_home(home)
    train_files, heldout_files = _corpus_files(home_dir, corpus_name)
    env = {}
    for pair in env_pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    cfg = FinetuneConfig(
        base=base, train_files=[str(p) for p in train_files], heldout_files=[str(p) for p in heldout_files],
        output_dir=str(out_dir.resolve()), block_size=block_size, learning_rate=learning_rate,
        num_epochs=epochs, max_steps=max_steps, per_device_batch=per_device_batch, grad_accum=grad_accum,
        precision=precision, deepspeed=deepspeed, eval_every=eval_every, save_every=save_every,
        cache_dir=str(home_dir / "corpus" / corpus_name / "tokenized"), num_nodes=num_nodes,
        node_rank=node_rank, master_addr=master_addr, master_port=master_port, dist_timeout_s=dist_timeout_s,
        method=method, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_target_modules=list(lora_targets),
    )
    launcher = gpus is not None or include is not None or hostfile is not None or num_nodes > 1 \
        or node_rank is not None
    # Nodes share --out (the shared volume): each keeps its own log.
    log_name = "train.log" if node_rank is None else f"train-node{node_rank}.log"
    with progress_bar(f"train {corpus_name}") as bar:
        if launcher:
            result = launch(cfg, gpus=gpus, include=include, hostfile=hostfile, env=env,
                            log_path=out_dir / "logs" / log_name, progress=bar)
        else:
            result = train(cfg, progress=bar)
    heldout = f"{result.heldout_loss:.4f}" if result.heldout_loss is not None else "n/a"
    first = f"{result.heldout_curve[0][1]:.4f} → " if len(result.heldout_curve) > 1 else ""
    resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
    click.echo(f"trained {result.steps} steps ({result.tokens:,} tokens) in {result.wall_time_s:.1f}s, "
               f"{result.tokens_per_s:,.0f} tokens/s; held-out loss {first}{heldout}; "
               f"peak memory {result.peak_memory_bytes / 2**20:,.0f} MiB{resumed}")
    click.echo(f"{'adapter' if method == 'lora' else 'checkpoint'}: {result.checkpoint}")


def _family_choices() -> list[str]:
    """Registry names plus ``trainer.tiny.FAMILY_ALIASES`` (spelled here: the CLI must not import trainer)."""
    from families import FAMILIES

    return [*FAMILIES, "llama"]


@click.group("model")
def model() -> None:
    """Models: bootstrap an offline tiny base (CodeGen or a FIM family); merge a LoRA adapter."""


@model.command("init-tiny")
@click.option("--corpus", "corpus_name", required=True, help="Corpus whose train shards train the tokenizer.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--vocab-size", type=int, default=1024, show_default=True)
@click.option("--context", "n_positions", type=int, default=256, show_default=True, help="Context window in tokens.")
@click.option("--family", type=click.Choice(_family_choices()), default="codegen", show_default=True,
              help="Model family: its architecture and special tokens (llama: DeepSeek-Coder's sentinels).")
@home_option
def init_tiny_cmd(corpus_name: str, out_dir: Path, vocab_size: int, n_positions: int, family: str,
                  home: Path | None) -> None:
    """Write a tiny random model of a family (BPE tokenizer trained on the corpus, every special
    token a single token) usable as --base offline."""
    from trainer.corpus import read_records
    from trainer.tiny import TinyModelConfig, init_tiny

    home_dir = resolve_home(home)
    train_files, _ = _corpus_files(home_dir, corpus_name)
    path = init_tiny((r["text"] for r in read_records(train_files)), out_dir,
                     TinyModelConfig(vocab_size=vocab_size, n_positions=n_positions), family=family)
    click.echo(f"tiny {family} model written to {path} (use it as --base)")


@model.command("export-merged")
@click.argument("adapter", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="The base's folder if it moved since training (its digest must still match).")
def export_merged_cmd(adapter: Path, out: Path, base: Path | None) -> None:
    """Fold a LoRA ADAPTER into its base and write a full checkpoint to OUT (a new folder), for
    backends that cannot apply adapters (FasterTransformer). The base is checked by digest first."""
    from trainer.lora import merge_adapter

    path = merge_adapter(adapter, out, base=base)
    click.echo(f"merged checkpoint written to {path}")


COMMANDS = [train_cmd, model]
