"""LoRA fine-tuning: a small adapter trained over a frozen base, and the merged export.

Same stages as :mod:`trainer.finetune` — tokenizer and block size → tokenise/pack (the same
cached :func:`trainer.data.prepare`, FIM transform for a FIM family) → model → train → held-out
loss → save — with three differences:

* the base's weights are frozen and wrapped by ``peft``: only the low-rank matrices
  (``lora_r`` × (in + out) values per targeted linear layer) get gradients and optimizer state,
  so a run fits where full training does not, and needs no DeepSpeed (a plain ``Trainer``);
* embedding rows are never grown: the adapter must apply to the base exactly as it is on disk,
  so a corpus with token ids past the rows fails (:class:`~trainer.errors.TokenOutOfRange`);
* the output folder is an adapter (:mod:`families.adapters`): peft's ``adapter_config.json`` and
  ``adapter_model.safetensors``, the tokenizer, and ``repotune-adapter.json`` naming the base by
  path and content digest, written last so a half-written folder is never taken for an adapter.

:func:`merge_adapter` folds an adapter into a full checkpoint for backends that cannot apply
adapters (FasterTransformer, the CodeGen → GPT-J conversion); :func:`load_adapted` is what
evaluation uses (merged in memory: no per-token adapter overhead).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import typing as t
from pathlib import Path
from typing import Any

from durable import fsync_dir, fsync_tree
from families.adapters import (
    AdapterError,
    AdapterManifest,
    checkpoint_digest,
    resolve_base,
    write_manifest,
)
from trainer.errors import FinetuneError

if t.TYPE_CHECKING:
    from trainer.finetune import FinetuneConfig, TrainResult
    from trainer.progress import ProgressFn

METHODS = ("full", "lora")
"""Values of ``FinetuneConfig.method``."""

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    # model_type → module names (peft matches the last name component), attention first, then MLP.
    "gpt2": ("c_attn", "c_proj", "c_fc"),  # Conv1D layers; c_proj is both attention out and MLP out
    "codegen": ("qkv_proj", "out_proj", "fc_in", "fc_out"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
}
"""The attention and MLP projections LoRA wraps per architecture when ``lora_target_modules`` is
empty. Embeddings, norms and the LM head are left out: they are large (the head alone is
vocab × hidden) and adapting them buys little for completing code in a known language."""


def lora_problems(cfg: t.Any) -> list[str]:
    """The method and LoRA settings' problems (part of :meth:`FinetuneConfig.problems`).

    ``cfg`` is a FinetuneConfig or anything with its ``method`` and ``lora_*`` fields (the bot's
    ``[training]`` settings, checked when the configuration is loaded rather than hours later)."""
    found = []
    if cfg.method not in METHODS:
        found.append(f"method={cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.method != "lora":
        return found
    if not isinstance(cfg.lora_r, int) or cfg.lora_r < 1:
        found.append(f"lora_r={cfg.lora_r!r}: must be an integer of at least 1 (16 is the default)")
    if not cfg.lora_alpha > 0:
        found.append(f"lora_alpha={cfg.lora_alpha!r}: must be greater than 0 (usually 2 x lora_r)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        found.append(f"lora_dropout={cfg.lora_dropout!r}: must be in [0, 1) (0.05 is the default)")
    if not all(isinstance(m, str) and m for m in cfg.lora_target_modules):
        found.append(f"lora_target_modules={cfg.lora_target_modules!r}: must be module names "
                     "(e.g. q_proj) or empty for the architecture's default")
    return found


def target_modules(cfg: FinetuneConfig, model_type: str | None) -> list[str]:
    """``cfg.lora_target_modules``, or the default of the base's architecture."""
    if cfg.lora_target_modules:
        return list(cfg.lora_target_modules)
    found = DEFAULT_TARGET_MODULES.get(model_type or "")
    if found is None:
        raise FinetuneError(
            f"no default LoRA target modules for model_type {model_type!r} (known: "
            f"{', '.join(DEFAULT_TARGET_MODULES)}); set lora_target_modules to its attention and MLP "
            "linear layer names")
    return list(found)


def lora_settings(cfg: FinetuneConfig, targets: list[str]) -> dict[str, Any]:
    """What ``repotune-adapter.json`` records of how the adapter was trained."""
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "target_modules": targets}


def local_base(base: str) -> Path:
    """The base as a local folder (a hub id resolves to its snapshot in the HF cache).

    An adapter names its base by path and digest, so the base must be files on disk."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base))
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot find base model {base!r} as a folder or in the hub cache: {exc}. "
                            "LoRA needs the base on disk: give a local folder or a reachable hub id") from exc


# ───────────────────────────── training ─────────────────────────────


def _peft_model(cfg: FinetuneConfig, base: Path, tokenizer) -> tuple[Any, dict[str, Any], list[str]]:
    """The base (rows as on disk) wrapped by peft; (model, embedding info, target modules)."""
    from peft import LoraConfig, get_peft_model

    from trainer._base_model import load_model

    model, embedding = load_model(dataclasses.replace(cfg, base=str(base), resize_embeddings=False), tokenizer)
    targets = target_modules(cfg, getattr(model.config, "model_type", None))
    lora_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
    try:
        return get_peft_model(model, lora_config), embedding, targets
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise FinetuneError(f"lora_target_modules={targets}: {exc}. Name the base's linear layers "
                            f"(print(model) lists them) or leave it empty for the default") from exc


def train_lora(cfg: FinetuneConfig, progress: ProgressFn | None, started: float | None = None) -> TrainResult:
    """Train a LoRA adapter of ``cfg.base`` on the corpus; ``output_dir`` becomes an adapter folder.

    Called by :func:`trainer.finetune.train` for ``method="lora"`` (config already checked).
    Resumes from ``output_dir/checkpoints`` like full training. Returns the usual TrainResult,
    whose ``checkpoint`` is the adapter folder and whose ``extras["lora"]`` counts parameters.
    """
    import torch

    from trainer._base_model import check_token_range, load_tokenizer
    from trainer._fit import fit_model, prepare_data
    from trainer.finetune import _training_args

    started = time.perf_counter() if started is None else started
    use_cpu = cfg.use_cpu if cfg.use_cpu is not None else not torch.cuda.is_available()
    if cfg.precision == "fp16" and use_cpu:
        raise FinetuneError("precision='fp16' needs a GPU; use precision='bf16' or 'fp32' on CPU")
    base = local_base(cfg.base)
    base_digest = checkpoint_digest(base)  # before training: the base the adapter is trained on
    tokenizer, block_size, family = load_tokenizer(dataclasses.replace(cfg, base=str(base)))
    out = Path(cfg.output_dir)
    args = _training_args(cfg, out / "checkpoints", use_cpu, None)
    args.label_names = ["labels"]  # a PeftModel's forward hides them from the Trainer's signature check

    data = prepare_data(cfg, args, tokenizer, family, block_size, progress)
    model, embedding, targets = _peft_model(cfg, base, tokenizer)
    check_token_range(data.max_token_id, embedding["rows"],
                      where="the corpus (LoRA never grows the base's embedding rows)")
    trainable, total = model.get_nb_trainable_parameters()

    fit = fit_model(cfg, args, model, data, block_size, progress)
    curves = fit.curves(data)
    lora = lora_settings(cfg, targets)
    if args.process_index == 0:
        fit.trainer.model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        write_manifest(out, AdapterManifest(base=str(base), base_digest=base_digest, family=family.name,
                                            method="lora", lora=lora))
    return fit.result(cfg, curves, started=started, use_cpu=use_cpu, block_size=block_size, embedding=embedding,
                      family=family, data=data,
                      extras={"method": "lora", "deepspeed": "none", "base": str(base), "base_digest": base_digest,
                              "lora": {**lora, "trainable_params": trainable, "total_params": total}})


# ───────────────────────────── applying and merging ─────────────────────────────


def load_adapted(adapter_dir: str | Path, *, base: str | Path | None = None, device: str = "cpu"):
    """(model with the adapter merged in, the adapter's tokenizer), base checked by digest.

    ``base`` overrides the manifest's base path (a moved base; its digest must still match).
    Raises :class:`families.adapters.AdapterError` for a missing or changed base, OSError or
    ValueError for unreadable files: callers say what to do in their own terms.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_base(adapter_dir, base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    return model.to(device).eval(), tokenizer


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, base: str | Path | None = None) -> Path:
    """Write base + adapter as one full HF checkpoint (safetensors + tokenizer) at ``out_dir``.

    For backends that cannot apply adapters. The base is verified by digest first; the folder
    is assembled beside ``out_dir`` and renamed into place, so ``out_dir`` is complete or absent.
    An existing ``out_dir`` is refused rather than overwritten.
    """
    out = Path(out_dir)
    if out.exists():
        raise FinetuneError(f"{out} already exists; choose a new folder for the merged checkpoint")
    try:
        model, tokenizer = load_adapted(adapter_dir, base=base)
    except AdapterError as exc:
        raise FinetuneError(f"cannot merge adapter {adapter_dir}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot load adapter {adapter_dir} (peft files or tokenizer): {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        fsync_tree(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return out


__all__ = [
    "DEFAULT_TARGET_MODULES",
    "METHODS",
    "load_adapted",
    "local_base",
    "lora_problems",
    "merge_adapter",
    "target_modules",
    "train_lora",
]
