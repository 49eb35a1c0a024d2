"""The base model of a fine-tuning run: tokenizer, block size, family, weights and embedding rows.

Split from :mod:`trainer.finetune` so that module keeps to the stages of a run; everything here
is what "load the base" means, including the two checks that make a wrong tokenizer fail early
(:func:`check_token_range`) and a family that cannot be told apart fail with the setting to use
(:func:`base_family`).
"""

from __future__ import annotations

import math
import typing as t
from typing import Any

from families import Family, FamilyError, detect_family
from trainer.errors import FinetuneError, TokenOutOfRange

if t.TYPE_CHECKING:
    from trainer.finetune import FinetuneConfig

EMBEDDING_MULTIPLE = 64
"""Embedding rows are padded up to a multiple of this when the tokenizer outgrows them."""


def effective_block_size(requested: int, n_positions: int | None) -> int:
    """The requested block size, capped at the model's context window."""
    return min(requested, n_positions) if n_positions else requested


def padded_rows(n: int, multiple: int = EMBEDDING_MULTIPLE) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (embedding rows GPUs multiply fast)."""
    return int(math.ceil(n / multiple) * multiple)


def check_token_range(max_token_id: int, rows: int, *, where: str = "the corpus") -> None:
    """Raise :class:`TokenOutOfRange` if any token id cannot index the embedding matrix."""
    if max_token_id >= rows:
        raise TokenOutOfRange(
            f"{where} contains token id {max_token_id} but the model has only {rows} embedding rows "
            f"(valid ids 0..{rows - 1}). The tokenizer does not match the base model: use the tokenizer "
            "saved with the base checkpoint, or allow resize_embeddings so rows are added (never removed)."
        )


def load_tokenizer(cfg: FinetuneConfig) -> tuple[Any, int, Family]:
    """The base model's tokenizer, the block size its context allows and its family."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.base)
        model_config = AutoConfig.from_pretrained(cfg.base)
    except OSError as exc:
        raise FinetuneError(f"cannot load base model {cfg.base!r}: {exc}. Give a local folder with "
                            "config.json and tokenizer files, or a hub id with network access") from exc
    n_positions = getattr(model_config, "n_positions", None) or getattr(model_config, "max_position_embeddings", None)
    return tokenizer, effective_block_size(cfg.block_size, n_positions), base_family(cfg, tokenizer, model_config)


def base_family(cfg: FinetuneConfig, tokenizer, model_config) -> Family:
    """``cfg.family``, or the family the base's ``model_type`` and vocabulary identify (hub ids too)."""
    vocab = set(tokenizer.get_vocab()) | set(tokenizer.all_special_tokens)
    try:
        return detect_family(getattr(model_config, "model_type", None), vocab, explicit=cfg.family)
    except FamilyError as exc:
        raise FinetuneError(f"cannot tell which family base model {cfg.base!r} is: {exc}") from exc


def load_model(cfg: FinetuneConfig, tokenizer) -> tuple[Any, dict[str, Any]]:
    """Load the base model and make its embedding rows cover the tokenizer (never shrink)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.float32)
    rows = model.get_input_embeddings().num_embeddings
    info: dict[str, Any] = {"rows": rows, "tokenizer_len": len(tokenizer), "resized_from": None}
    if len(tokenizer) > rows and cfg.resize_embeddings:
        # Growing is safe; shrinking to len(tokenizer) is what broke the original recipe's
        # converted model (CodeGen-350M has 51200 rows for a 50295-token tokenizer).
        new_rows = padded_rows(len(tokenizer))
        model.resize_token_embeddings(new_rows, mean_resizing=False)
        info.update(rows=new_rows, resized_from=rows)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    return model, info
