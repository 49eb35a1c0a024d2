"""Bootstrap a tiny CodeGen model offline: a byte-level BPE tokenizer trained on the corpus
plus a small, randomly initialised CodeGen, saved in Hugging Face format.

It is RepoTune's embedded default base model, so the whole loop (train, evaluate, convert,
serve) runs on a machine with no model hub. Real deployments point ``base`` at
``Salesforce/codegen-350M-multi`` or a local copy instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny CodeGen. Defaults train at ~30 ms/step on one CPU core."""

    vocab_size: int = 1024
    """Target BPE vocabulary (the tokenizer may end slightly smaller)."""
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    rotary_dim: int = 8
    """Rotary dimensions per head (CodeGen applies rotary to the first ``rotary_dim`` dims)."""
    n_positions: int = 256
    """Context window in tokens."""
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=None,
    )


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def init_tiny(texts: Iterable[str], out_dir: Path, config: TinyModelConfig | None = None) -> Path:
    """Write a tiny CodeGen (weights + tokenizer) trained-tokenizer-first on ``texts``.

    Returns ``out_dir``. The model's ``vocab_size`` equals the tokenizer length, so no token
    id can fall outside the embedding rows.
    """
    import torch
    from transformers import CodeGenConfig, CodeGenForCausalLM

    config = config or TinyModelConfig()
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, config.vocab_size)
    tokenizer.model_max_length = config.n_positions
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    torch.manual_seed(config.seed)
    model_config = CodeGenConfig(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_ctx=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        rotary_dim=config.rotary_dim,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    model = CodeGenForCausalLM(model_config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
