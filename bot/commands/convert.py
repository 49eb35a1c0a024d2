"""``repotune convert``: a fine-tuned checkpoint → a servable artifact, numerically verified.

    repotune convert <hf-ckpt> --to fastertransformer --gpus 2 --out <artifact> [--dtype fp16]
    repotune convert <hf-ckpt> --to python --out <artifact>
    repotune convert <hf-ckpt> --to vllm --out <model-folder> [--adapter NAME=DIR ...]
    repotune convert verify <N-gpu dir or artifact> --reference <hf-ckpt>
    repotune convert check <artifact>

``convert`` takes a path *or* a subcommand: a first argument that is not a subcommand name is
the checkpoint (write ``./verify`` for a checkpoint folder literally named ``verify``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from bot.commands._common import progress_bar

SUBCOMMANDS_HELP = "Subcommands: verify (check FT files against a checkpoint), check (re-check an artifact)."


class _CheckpointOrSubcommand(click.Group):
    """A group whose first argument is a checkpoint path unless it names a subcommand."""

    default_command = "checkpoint"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        elif args and args[0] == self.default_command:
            raise click.UsageError(f"{self.default_command!r} is not a checkpoint path", ctx)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        command = self.commands[self.default_command]
        with click.Context(command, info_name=ctx.info_name, parent=ctx.parent) as sub:
            command.format_help(sub, formatter)
        formatter.write_paragraph()
        formatter.write_text(SUBCOMMANDS_HELP)


@click.group("convert", cls=_CheckpointOrSubcommand)
def convert_group() -> None:
    """Convert a checkpoint for serving, or verify converted files."""


@convert_group.command("checkpoint", hidden=True)
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--to", "to", type=click.Choice(["python", "fastertransformer", "vllm"]), default="python",
              show_default=True, help="Serving backend the artifact is for (vllm: Triton's vLLM backend, GPU).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Artifact folder to create (must not exist or be empty).")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(1, 64),
              help="FasterTransformer tensor-parallel ranks.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16", "auto"]), default=None,
              help="Inference precision; default fp32 (python, fastertransformer) or auto (vllm). "
                   "bf16/auto: vllm only. With --schema v1.1 weights stay fp32 on disk, is_half=1.")
@click.option("--model-name", default="codegen", show_default=True,
              help="Triton model name (the engine editors ask for).")
@click.option("--schema", type=click.Choice(["v1.1", "v1.2"]), default="v1.1", show_default=True,
              help="FasterTransformer backend config format (v1.2 = backend v1.2 and later).")
@click.option("--mp", type=click.IntRange(1, 64), default=None,
              help="Override the qkv block count (4 for CodeGen-1, 8 for codegen2-1B/3.7B).")
@click.option("--model-mount", default="/model", show_default=True,
              help="Where the Triton container mounts the model repository.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="--to python: run the model on the CPU, or on GPUs 0..--gpus-1 (KIND_GPU instances).")
@click.option("--no-verify", is_flag=True, help="Skip the logits comparison (not recommended).")
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]DIR",
              help="vllm: a LoRA adapter trained on CHECKPOINT, served by NAME (default: the folder "
                   "name). Repeat for several.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0.05, 1.0), default=0.9, show_default=True,
              help="vllm: share of GPU memory the engine takes.")
@click.option("--max-model-len", type=click.IntRange(1), default=None,
              help="vllm: context length. Default: the checkpoint's max_position_embeddings.")
def convert_checkpoint(checkpoint: Path, to: str, out: Path, gpus: int, dtype: str | None,
                       model_name: str, schema: str, mp: int | None, model_mount: str,
                       no_verify: bool, adapters: tuple[str, ...], gpu_memory_utilization: float,
                       max_model_len: int | None, device: str) -> None:
    """Convert the Hugging Face CodeGen CHECKPOINT into a servable artifact.

    `--to fastertransformer` does CodeGen → GPT-J → FasterTransformer for --gpus ranks, writes
    config.pbtxt (vocab size from the converted tensors) and the tokenizer, then compares
    logits of an independent NumPy forward pass over the written files with the checkpoint.
    `--to python` packages the checkpoint for RepoTune's Triton python-backend model.
    `--to vllm` writes a Triton model folder for Triton's vLLM backend (config.pbtxt,
    1/model.json, 1/multi_lora.json with --adapter); it needs a GPU Triton to serve.
    """
    from converter import convert
    from converter.convert import VLLM_DTYPE
    from converter.vllm import VllmOptions

    if adapters and to != "vllm":
        raise click.UsageError("--adapter needs --to vllm (other backends serve merged checkpoints)")
    dtype = dtype or ("auto" if to == "vllm" else "fp32")
    options = None
    if to == "vllm":
        options = VllmOptions(dtype=VLLM_DTYPE.get(dtype, dtype), gpu_memory_utilization=gpu_memory_utilization,
                              tensor_parallel=gpus, max_model_len=max_model_len, model_mount=model_mount)
    with progress_bar("convert") as progress:
        result = convert(checkpoint, out, to=to, gpus=gpus, dtype=dtype,
                         model_name=model_name, verify=not no_verify, progress=progress,
                         schema=schema, mp=mp, model_mount=model_mount,
                         adapters=[parse_adapter(a) for a in adapters], vllm_options=options,
                         device=device)
    click.echo(f"artifact: {result.artifact}")
    if to == "vllm":
        meta = json.loads((result.artifact / "artifact.json").read_text(encoding="utf-8"))
        click.echo(f"adapters: {', '.join(meta['adapters']) or 'none'}  max_model_len: {meta['max_model_len']}")
    click.echo(f"backend: {result.backend}  tensor_parallel: {result.tensor_parallel}  "
               f"vocab_size: {result.vocab_size}  time: {result.duration_s:.1f}s")
    if result.verify:
        diffs = ", ".join(f"{d:.2e}" for d in result.verify["max_abs_diff"])
        click.echo(f"verified: max |Δ logit| per input [{diffs}] "
                   f"(tolerance {result.verify['tolerance']:.2e})")
    elif to == "vllm":
        click.echo("files checked against the vLLM backend's format; not run (vLLM needs a GPU)")
    else:
        click.echo("verification skipped")


def parse_adapter(value: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after its folder) → ``(name, folder)``."""
    name, sep, folder = value.partition("=")
    path = Path(folder if sep else value).expanduser()
    if not path.is_dir():
        raise click.BadParameter(f"{path} is not a folder", param_hint="--adapter")
    return (name if sep else path.resolve().name), path


@convert_group.command("verify")
@click.argument("ft_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reference", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The Hugging Face checkpoint the files were converted from.")
def verify_command(ft_dir: Path, reference: Path) -> None:
    """Compare FasterTransformer files (an <N>-gpu folder or an artifact) with a checkpoint."""
    from converter import verify

    report = verify(ft_dir, reference)
    click.echo(json.dumps(report.as_dict() | {"inputs": len(report.inputs)}, indent=2))


@convert_group.command("check")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check_command(artifact: Path) -> None:
    """Re-check an artifact: every FT file's size and config.pbtxt against config.ini."""
    from converter import check_artifact

    meta = check_artifact(artifact)
    click.echo(f"ok: {meta['backend']} artifact, vocab_size {meta['vocab_size']}, "
               f"tensor_parallel {meta['tensor_parallel']}")


COMMANDS = [convert_group]
