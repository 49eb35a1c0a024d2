"""CodeGen → GPT-J: same weights, one rewrite (the fused qkv projection), a GPT-J config.

CodeGen stores Q, K and V in one ``qkv_proj`` matrix [3E, E] whose rows are grouped in ``mp``
blocks (4 for every CodeGen-1 model, 8 for codegen2-1B and -3.7B); inside each block the order
is **Q, V, K**. Splitting with the wrong order or block count still loads and still produces
plausible text — garbage — which is why the tests compare logits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from converter._checkpoint import TensorReader, copy_tokenizer, read_config
from converter.errors import CheckpointError, ConversionError
from converter.weight_maps import CODEGEN_DROP, CODEGEN_TO_GPTJ, lookup, target_names

QKV_SLOTS = {"q": 0, "v": 1, "k": 2}
"""Position of each projection inside one block of CodeGen's fused qkv rows."""

EIGHT_BLOCK_MODELS = re.compile(r"codegen2-(1b|3[._]7b)", re.IGNORECASE)
"""Checkpoints known to group qkv rows in 8 blocks (the rest of the family uses 4)."""

GPTJ_CONFIG_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim",
                    "n_inner", "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                    "layer_norm_epsilon", "initializer_range", "bos_token_id", "eos_token_id")
"""Fields copied from the CodeGen config into the GPT-J one."""


def infer_qkv_blocks(config: dict[str, Any]) -> int:
    """Block count of the fused qkv rows: ``qkv_blocks``/``mp_num`` in the config if present,
    8 for codegen2-1B/3.7B (recognised by name), else 4 (every CodeGen-1 model)."""
    for key in ("qkv_blocks", "mp_num"):
        if isinstance(config.get(key), int):
            return int(config[key])
    names = " ".join(str(config.get(k, "")) for k in ("_name_or_path", "name_or_path", "model_name"))
    return 8 if EIGHT_BLOCK_MODELS.search(names) else 4


def split_qkv(weight, mp: int, n_head: int):
    """Split a fused CodeGen qkv weight [3E, E] into (q, k, v), each [E, E].

    ``weight.view(mp, 3, E // mp, E)[:, slot]`` with slot 0 = Q, 1 = V, 2 = K.
    """
    rows, n_embd = weight.shape
    if rows != 3 * n_embd:
        raise CheckpointError(f"qkv_proj has shape {tuple(weight.shape)}, expected [3E, E]")
    if n_embd % mp or n_head % mp:
        raise ConversionError(f"cannot split qkv in {mp} blocks: n_embd {n_embd} and n_head {n_head} "
                              "must both be divisible by it; pass mp= explicitly (4 or 8)")
    blocks = weight.reshape(mp, 3, n_embd // mp, n_embd)
    return tuple(blocks[:, QKV_SLOTS[p]].reshape(n_embd, n_embd).contiguous() for p in "qkv")


def pack_qkv(q, k, v, mp: int):
    """Inverse of :func:`split_qkv` (used to build test checkpoints of a given layout)."""
    import torch

    n_embd = q.shape[0]
    parts = [x.reshape(mp, n_embd // mp, n_embd) for x in (q, v, k)]
    return torch.stack(parts, dim=1).reshape(3 * n_embd, n_embd).contiguous()


def gptj_config_from_codegen(config: dict[str, Any], *, vocab_size: int | None = None) -> dict[str, Any]:
    """A GPT-J ``config.json`` dict with the CodeGen config's shape (vocab from the tensors)."""
    out: dict[str, Any] = {"model_type": "gptj", "architectures": ["GPTJForCausalLM"],
                           "tie_word_embeddings": False}
    for key in GPTJ_CONFIG_KEYS:
        if key in config:
            out[key] = config[key]
    missing = [k for k in ("n_embd", "n_layer", "n_head", "rotary_dim", "n_positions") if k not in out]
    if missing:
        raise CheckpointError(f"the CodeGen config lacks {missing}; is this a CodeGen checkpoint?")
    if vocab_size is not None:
        out["vocab_size"] = vocab_size
    out["n_inner"] = out.get("n_inner") or 4 * out["n_embd"]
    return out


def gptj_tensors(reader: TensorReader, config: dict[str, Any], *, mp: int | None = None
                 ) -> Iterator[tuple[str, Any]]:
    """Yield (GPT-J name, tensor) for every tensor of a CodeGen checkpoint, one at a time."""
    blocks = mp or infer_qkv_blocks(config)
    n_head = int(config["n_head"])
    for name in reader.keys():  # noqa: SIM118
        hit = lookup(name, CODEGEN_TO_GPTJ, CODEGEN_DROP, "CodeGen checkpoint")
        if hit is None:
            continue
        row, groups = hit
        names = target_names(row, groups)
        tensor = reader.get(name)
        if row.transform == "split_qkv":
            yield from zip(names, split_qkv(tensor, blocks, n_head), strict=True)
        else:
            yield names[0], tensor


def codegen_to_gptj(src: str | Path, dst: str | Path, mp: int | None = None) -> Path:
    """Convert the CodeGen checkpoint ``src`` to a GPT-J checkpoint in ``dst``.

    Tensors are read one at a time; peak memory is about one model copy (the output dict
    handed to safetensors). ``mp`` overrides the inferred qkv block count. The tokenizer
    files are copied alongside. Returns ``dst``.
    """
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    if config.get("model_type") != "codegen":
        raise CheckpointError(f"{src} is a {config.get('model_type')!r} model, not CodeGen")
    dst.mkdir(parents=True, exist_ok=True)
    with TensorReader(src) as reader:
        tensors = dict(gptj_tensors(reader, config, mp=mp))
        vocab = tuple(tensors["transformer.wte.weight"].shape)[0]
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    gptj_cfg = gptj_config_from_codegen(config, vocab_size=vocab)
    (dst / "config.json").write_text(json.dumps(gptj_cfg, indent=2) + "\n", encoding="utf-8")
    copy_tokenizer(src, dst)
    return dst
