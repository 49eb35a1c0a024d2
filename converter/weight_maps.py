"""Weight-name maps as data: (source name pattern, target name template, transform).

Patterns are full-match regular expressions; ``{0}``, ``{1}`` in a target refer to the
pattern's groups (layer index, ``weight``/``bias``). A name that no row maps and no drop
pattern matches is an error (:func:`lookup` raises), never a silent skip: a new tensor in a
checkpoint means the map must be extended on purpose.

CodeGen → GPT-J (Hugging Face names on both sides) renames nothing; the one rewrite is the
fused ``qkv_proj`` (rows grouped in ``mp`` blocks of Q, V, K) split into ``q_proj``,
``k_proj``, ``v_proj``.

GPT-J → FasterTransformer names the raw files of ``<N>-gpu/``; ``split`` says how a tensor is
cut across the N ranks (``None``: every rank reads one shared file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from converter.errors import CheckpointError


@dataclass(frozen=True)
class MapRow:
    """One row of a weight map."""

    pattern: str
    """Full-match regular expression on the source tensor name."""
    target: str | tuple[str, ...]
    """Target name template(s); ``{0}``… are the pattern's groups."""
    transform: str
    """What to do to the tensor: ``copy``, ``split_qkv``, ``qkv``, ``transpose`` …"""
    split: str | None = None
    """FasterTransformer only: ``cols`` (last axis), ``rows`` (first axis) or ``None`` (shared)."""


CODEGEN_TO_GPTJ: tuple[MapRow, ...] = (
    MapRow(r"transformer\.wte\.weight", "transformer.wte.weight", "copy"),
    MapRow(r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", "transformer.h.{0}.ln_1.{1}", "copy"),
    MapRow(r"transformer\.h\.(\d+)\.attn\.qkv_proj\.weight",
           ("transformer.h.{0}.attn.q_proj.weight", "transformer.h.{0}.attn.k_proj.weight",
            "transformer.h.{0}.attn.v_proj.weight"), "split_qkv"),
    MapRow(r"transformer\.h\.(\d+)\.attn\.out_proj\.weight", "transformer.h.{0}.attn.out_proj.weight",
           "copy"),
    MapRow(r"transformer\.h\.(\d+)\.mlp\.(fc_in|fc_out)\.(weight|bias)",
           "transformer.h.{0}.mlp.{1}.{2}", "copy"),
    MapRow(r"transformer\.ln_f\.(weight|bias)", "transformer.ln_f.{0}", "copy"),
    MapRow(r"lm_head\.(weight|bias)", "lm_head.{0}", "copy"),
)
"""Every CodeGenForCausalLM parameter and its GPT-J name."""

CODEGEN_DROP: tuple[str, ...] = (
    r"transformer\.h\.\d+\.attn\.(causal_mask|masked_bias|bias)",  # buffers of old checkpoints
    r"transformer\.h\.\d+\.attn\.embed_positions",  # rotary table, recomputed by the model
)
"""Non-parameter buffers some CodeGen checkpoints carry; GPT-J rebuilds them."""

GPTJ_TO_FT: tuple[MapRow, ...] = (
    MapRow(r"transformer\.wte\.weight", "model.wte.bin", "copy"),
    MapRow(r"lm_head\.weight", "model.lm_head.weight.bin", "copy"),
    MapRow(r"lm_head\.bias", "model.lm_head.bias.bin", "copy"),
    MapRow(r"transformer\.ln_f\.(weight|bias)", "model.final_layernorm.{0}.bin", "copy"),
    MapRow(r"transformer\.h\.(\d+)\.ln_1\.(weight|bias)", "model.layers.{0}.input_layernorm.{1}.bin",
           "copy"),
    MapRow(r"transformer\.h\.(\d+)\.attn\.(q|k|v)_proj\.weight",
           "model.layers.{0}.attention.query_key_value.weight.{rank}.bin", "qkv", "cols"),
    MapRow(r"transformer\.h\.(\d+)\.attn\.out_proj\.weight",
           "model.layers.{0}.attention.dense.weight.{rank}.bin", "transpose", "rows"),
    MapRow(r"transformer\.h\.(\d+)\.mlp\.fc_in\.weight",
           "model.layers.{0}.mlp.dense_h_to_4h.weight.{rank}.bin", "transpose", "cols"),
    MapRow(r"transformer\.h\.(\d+)\.mlp\.fc_in\.bias",
           "model.layers.{0}.mlp.dense_h_to_4h.bias.{rank}.bin", "copy", "cols"),
    MapRow(r"transformer\.h\.(\d+)\.mlp\.fc_out\.weight",
           "model.layers.{0}.mlp.dense_4h_to_h.weight.{rank}.bin", "transpose", "rows"),
    MapRow(r"transformer\.h\.(\d+)\.mlp\.fc_out\.bias", "model.layers.{0}.mlp.dense_4h_to_h.bias.bin",
           "copy"),
)
"""Every GPT-J parameter and the FasterTransformer file(s) it becomes."""

GPTJ_DROP: tuple[str, ...] = (
    r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",
    r"transformer\.h\.\d+\.attn\.embed_positions",
)
"""GPT-J buffers FasterTransformer recomputes."""


def lookup(name: str, table: tuple[MapRow, ...], drop: tuple[str, ...],
           what: str = "checkpoint") -> tuple[MapRow, tuple[str, ...]] | None:
    """The row mapping ``name`` and the pattern's groups; ``None`` for a dropped name.

    Raises :class:`CheckpointError` for a name nothing maps.
    """
    for row in table:
        match = re.fullmatch(row.pattern, name)
        if match:
            return row, match.groups()
    if any(re.fullmatch(p, name) for p in drop):
        return None
    raise CheckpointError(
        f"tensor {name!r} of the {what} is not in RepoTune's weight map; it is not a plain "
        "CodeGen/GPT-J checkpoint (adapters? another architecture?). Merge adapters first or "
        "extend converter/weight_maps.py on purpose.")


def target_names(row: MapRow, groups: tuple[str, ...]) -> tuple[str, ...]:
    """The target names of ``row`` for a match's ``groups`` (``{rank}`` left in place)."""
    targets = row.target if isinstance(row.target, tuple) else (row.target,)
    return tuple(t.replace("{rank}", "\0").format(*groups).replace("\0", "{rank}") for t in targets)
