"""Bootstrap a tiny code model offline: a byte-level BPE tokenizer trained on the corpus
plus a small, randomly initialised model, saved in Hugging Face format.

It is RepoTune's embedded default base model, so the whole loop (train, evaluate, convert,
serve) runs on a machine with no model hub. Real deployments point ``base`` at
``Salesforce/codegen-350M-multi`` or a local copy instead.

The default is CodeGen (left to right, byte-identical to before families existed). Any other
family of :data:`trainer.families.FAMILIES` gets its own architecture (``Starcoder2Config``,
``Qwen2Config``, ``LlamaConfig``, ``GemmaConfig``) and a tokenizer whose FIM sentinels,
separators and end-of-text token are single special tokens, so
:func:`trainer.families.detect_checkpoint_family` recognises the result and
:mod:`trainer.fim` can train it to fill in the middle. ``llama`` is accepted as an alias of
``deepseek-coder`` (the Llama architecture with sentinels that need no spacing rules).
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


FAMILY_ALIASES = {"llama": "deepseek-coder"}
"""Architecture names accepted where a family is meant (``init_tiny(family="llama")``)."""


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                    special_tokens: tuple[str, ...] = (EOS_TOKEN,)):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``.

    ``special_tokens[0]`` is the end-of-text token (also used as bos, unk and pad); every entry
    becomes one token that BPE never splits or merges into.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    eos = special_tokens[0]
    extra = {"additional_special_tokens": list(special_tokens[1:])} if len(special_tokens) > 1 else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=None,
        **extra,
    )


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def init_tiny(texts: Iterable[str], out_dir: Path, config: TinyModelConfig | None = None, *,
              family: str = "codegen") -> Path:
    """Write a tiny ``family`` model (weights + tokenizer), the tokenizer trained first on ``texts``.

    Returns ``out_dir``. The model's ``vocab_size`` equals the tokenizer length, so no token
    id can fall outside the embedding rows. ``family`` is a registry name (or ``llama``);
    an unknown one raises :class:`trainer.errors.FamilyError` naming the setting.
    """
    import torch

    from families import get_family

    fam = get_family(FAMILY_ALIASES.get(family, family))
    config = config or TinyModelConfig()
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, config.vocab_size, fam.special_tokens)
    tokenizer.model_max_length = config.n_positions
    eos_id = tokenizer.convert_tokens_to_ids(fam.eos_token)
    torch.manual_seed(config.seed)
    model = _tiny_model(fam.architecture, config, len(tokenizer), eos_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _tiny_model(architecture: str, config: TinyModelConfig, vocab_size: int, eos_id: int):
    """A randomly initialised causal LM of ``architecture`` with the tiny dimensions."""
    import transformers

    ids = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id, "tie_word_embeddings": False}
    if architecture == "CodeGenConfig":
        model_config = transformers.CodeGenConfig(
            vocab_size=vocab_size, n_positions=config.n_positions, n_ctx=config.n_positions,
            n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head, rotary_dim=config.rotary_dim,
            **ids)
        return transformers.CodeGenForCausalLM(model_config)
    # Gemma's default head_dim (256) would dwarf the tiny width; derive it like the others do.
    extra = {"head_dim": config.n_embd // config.n_head} if architecture == "GemmaConfig" else {}
    model_config = getattr(transformers, architecture)(
        vocab_size=vocab_size, hidden_size=config.n_embd, intermediate_size=4 * config.n_embd,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head, max_position_embeddings=config.n_positions, **extra, **ids)
    return transformers.AutoModelForCausalLM.from_config(model_config)
