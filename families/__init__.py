"""Code-model families as data: sentinels, prompt formats, stop tokens, context, backends.

One :class:`Family` row per family RepoTune can fine-tune and serve. Everything that differs
between families (which special tokens mark fill-in-the-middle, in which order and with which
spaces they are joined, which tokens end a completion) lives in the rows of :data:`FAMILIES`,
so training (:mod:`trainer.fim`), evaluation and the completion proxy read the same table
instead of each hard-coding StarCoder's spelling.

A prompt format is a tuple of pieces: :data:`PREFIX`, :data:`SUFFIX` and :data:`MIDDLE` are
placeholders for the code, every other string is literal (a sentinel, or a family's spacing,
e.g. CodeLlama's ``"<PRE> "``). The same tuple builds an inference prompt
(:func:`build_fim_prompt`, middle left empty) and a training example (:func:`trainer.fim.fim_transform`,
at token level).

A family is found from a base checkpoint (:func:`detect_family`): the ``model_type`` of its
``config.json`` narrows the candidates, the tokenizer vocabulary's sentinels decide between
families that share an architecture (``llama`` is both DeepSeek-Coder and CodeLlama). An explicit
name (``[training] family`` / ``model.family``) always wins.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path


class FamilyError(ValueError):
    """An unknown or undetectable model family, or a family lacking what was asked (FIM).

    ``trainer.errors.FamilyError`` subclasses it, so ``except TrainerError`` catches what the
    trainer raises, and the CLI shows either without a traceback."""

PREFIX = "{prefix}"
"""Placeholder piece: the code before the cursor."""
SUFFIX = "{suffix}"
"""Placeholder piece: the code after the cursor."""
MIDDLE = "{middle}"
"""Placeholder piece: the code that fills the hole (empty at inference: the model writes it)."""
PLACEHOLDERS = (PREFIX, SUFFIX, MIDDLE)

BACKENDS = ("python", "fastertransformer", "vllm")
"""Serving backends a family may list (Triton python backend, FasterTransformer GPT-J, vLLM)."""

FAMILY_SETTING = "`[training] family` / `model.family`"
"""Where a user names a family explicitly; every family error points there."""


@dataclass(frozen=True)
class Family:
    """Everything RepoTune needs to know about one code-model family."""

    name: str
    """Registry key and the value of the ``family`` setting (``starcoder2``, ``codegen`` …)."""
    model_types: tuple[str, ...]
    """Hugging Face ``config.json`` ``model_type`` values of this family's checkpoints."""
    architecture: str
    """The ``transformers`` config class a tiny model of this family is built from."""
    eos_token: str
    """End-of-text token: separates packed files in training, ends a completion."""
    fim_prefix: str | None = None
    fim_suffix: str | None = None
    fim_middle: str | None = None
    fim_pad: str | None = None
    """Padding sentinel some families reserve (never emitted by the transform)."""
    repo_name_token: str | None = None
    """Repository-level marker (``<repo_name>name``) where the family was trained with one."""
    file_sep_token: str | None = None
    """File separator in repository-level prompts."""
    extra_stop_tokens: tuple[str, ...] = ()
    """Stop tokens beyond the end-of-text token and the sentinels (CodeLlama's ``<EOT>``)."""
    psm: tuple[str, ...] | None = None
    """Prefix-suffix-middle format, pieces joined as they stand (spacing included)."""
    spm: tuple[str, ...] | None = None
    """Suffix-prefix-middle format; ``None`` where the family was not trained with it."""
    context_length: int = 2048
    """Tokens the published checkpoints were trained to attend over."""
    backends: tuple[str, ...] = ("python",)
    """Serving backends that can serve this family (a subset of :data:`BACKENDS`)."""
    published_fim_rate: float = 0.0
    """Share of documents the family's authors trained with FIM (for reference; not a default)."""

    @property
    def has_fim(self) -> bool:
        """True when the family was trained to fill in the middle."""
        return self.psm is not None

    @property
    def sentinels(self) -> tuple[str, ...]:
        """The three FIM sentinels (prefix, suffix, middle); empty for left-to-right families."""
        found = (self.fim_prefix, self.fim_suffix, self.fim_middle)
        return tuple(t for t in found if t is not None)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Every special token of the family, end-of-text first (the tiny tokenizer's order)."""
        found = (self.eos_token, *self.sentinels, self.fim_pad, self.repo_name_token, self.file_sep_token,
                 *self.extra_stop_tokens)
        return tuple(dict.fromkeys(t for t in found if t is not None))


def _psm(pre: str, suf: str, mid: str) -> tuple[str, ...]:
    return (pre, PREFIX, suf, SUFFIX, mid, MIDDLE)


def _spm(pre: str, suf: str, mid: str) -> tuple[str, ...]:
    # The SPM variant of santacoder/StarCoder training: both sentinels first, then S, middle, P+M
    # (so the prefix flows straight into the middle, as in a left-to-right model).
    return (pre, suf, SUFFIX, mid, PREFIX, MIDDLE)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="codegen", model_types=("codegen",), architecture="CodeGenConfig",
           eos_token="<|endoftext|>", context_length=2048, backends=("python", "fastertransformer")),
    Family(name="starcoder2", model_types=("starcoder2",), architecture="Starcoder2Config",
           eos_token="<|endoftext|>", fim_prefix="<fim_prefix>", fim_suffix="<fim_suffix>",
           fim_middle="<fim_middle>", fim_pad="<fim_pad>", repo_name_token="<repo_name>",
           file_sep_token="<file_sep>", psm=_psm("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
           spm=_spm("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), context_length=16384,
           backends=("python", "vllm"), published_fim_rate=0.5),
    Family(name="qwen2.5-coder", model_types=("qwen2",), architecture="Qwen2Config",
           eos_token="<|endoftext|>", fim_prefix="<|fim_prefix|>", fim_suffix="<|fim_suffix|>",
           fim_middle="<|fim_middle|>", fim_pad="<|fim_pad|>", repo_name_token="<|repo_name|>",
           file_sep_token="<|file_sep|>", psm=_psm("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
           spm=_spm("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), context_length=32768,
           backends=("python", "vllm"), published_fim_rate=0.5),
    # DeepSeek-Coder v1 published PSM only: no SPM format, the transform emits PSM whatever spm_rate.
    Family(name="deepseek-coder", model_types=("llama",), architecture="LlamaConfig",
           eos_token="<｜end▁of▁sentence｜>", fim_prefix="<｜fim▁begin｜>", fim_suffix="<｜fim▁hole｜>",
           fim_middle="<｜fim▁end｜>", psm=_psm("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
           context_length=16384, backends=("python", "vllm"), published_fim_rate=0.5),
    # CodeLlama's SentencePiece format carries spaces: "<PRE> P <SUF>S <MID>" (paper §2.3).
    Family(name="codellama", model_types=("llama",), architecture="LlamaConfig", eos_token="</s>",
           fim_prefix="<PRE>", fim_suffix="<SUF>", fim_middle="<MID>", extra_stop_tokens=("<EOT>",),
           psm=("<PRE>", " ", PREFIX, " ", "<SUF>", SUFFIX, " ", "<MID>", MIDDLE),
           spm=("<PRE>", " ", "<SUF>", SUFFIX, " ", "<MID>", PREFIX, MIDDLE), context_length=16384,
           backends=("python", "vllm"), published_fim_rate=0.9),
    Family(name="codegemma", model_types=("gemma",), architecture="GemmaConfig", eos_token="<eos>",
           fim_prefix="<|fim_prefix|>", fim_suffix="<|fim_suffix|>", fim_middle="<|fim_middle|>",
           file_sep_token="<|file_separator|>",
           psm=_psm("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
           spm=_spm("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), context_length=8192,
           backends=("python", "vllm"), published_fim_rate=0.9),
)}
"""The registry, keyed by family name."""


def get_family(family: str | Family) -> Family:
    """The registry row for ``family`` (a :class:`Family` passes through).

    Raises :class:`FamilyError` naming the ``family`` setting and the known names.
    """
    if isinstance(family, Family):
        return family
    try:
        return FAMILIES[family]
    except KeyError:
        raise FamilyError(f"unknown family {family!r}; set family ({FAMILY_SETTING}) to one of "
                          f"{', '.join(FAMILIES)}") from None


def build_fim_prompt(family: str | Family, prefix: str, suffix: str, *, spm: bool = False) -> str:
    """The inference prompt that asks ``family`` to fill the hole between ``prefix`` and ``suffix``.

    PSM unless ``spm`` is asked for and the family was trained with it. The model's answer is
    the middle; stop it on :func:`stop_tokens`. A left-to-right family (CodeGen) has no such
    prompt: the error says to send the prefix alone.
    """
    fam = get_family(family)
    fmt = fam.spm if spm and fam.spm is not None else fam.psm
    if fmt is None:
        raise FamilyError(f"family {fam.name!r} cannot fill in the middle (it has no FIM sentinels); "
                          "send the prefix alone as a left-to-right prompt, or set family "
                          f"({FAMILY_SETTING}) to a FIM family")
    values = {PREFIX: prefix, SUFFIX: suffix, MIDDLE: ""}
    return "".join(values.get(piece, piece) for piece in fmt)


def stop_tokens(family: str | Family) -> tuple[str, ...]:
    """Strings that end a completion for ``family``: end-of-text, every sentinel, separators.

    A model that emits any of them has finished the hole (or started a new file); the proxy
    cuts the text there and never shows the token to the editor.
    """
    fam = get_family(family)
    return fam.special_tokens


def families_for_model_type(model_type: str) -> tuple[Family, ...]:
    """Registry rows whose checkpoints carry ``model_type``."""
    return tuple(f for f in FAMILIES.values() if model_type in f.model_types)


def detect_family(model_type: str | None, vocabulary: Collection[str], explicit: str | None = None) -> Family:
    """Which family a checkpoint belongs to (pure: no file is read).

    ``explicit`` (the ``family`` setting) wins. Otherwise ``model_type`` narrows the candidates and
    the vocabulary decides: a FIM family matches only when all three of its sentinels are tokens.
    Raises :class:`FamilyError` when nothing or more than one family matches.
    """
    if explicit:
        return get_family(explicit)
    candidates = families_for_model_type(model_type or "")
    if not candidates:
        raise FamilyError(f"model_type {model_type!r} is not a known code-model family; set family "
                          f"({FAMILY_SETTING}) to one of {', '.join(FAMILIES)}")
    vocab = set(vocabulary)
    matches = [f for f in candidates if all(t in vocab for t in f.sentinels)]
    if len(matches) > 1:  # a left-to-right family matches any vocabulary: prefer one with sentinels
        matches = [f for f in matches if f.has_fim] or matches
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(f.name for f in candidates)
    why = "none of their FIM sentinels are" if not matches else "the sentinels of several are"
    raise FamilyError(f"model_type {model_type!r} could be {names}, but {why} in the tokenizer vocabulary; "
                      f"set family ({FAMILY_SETTING}) explicitly")


def detect_checkpoint_family(path: Path | str, explicit: str | None = None, tokenizer=None) -> Family:
    """:func:`detect_family` for a checkpoint folder: reads ``config.json`` and the vocabulary.

    The vocabulary comes from ``tokenizer`` when given (``get_vocab()`` plus added tokens), else
    from the folder's ``tokenizer.json`` / ``tokenizer_config.json`` without loading transformers.
    """
    if explicit:
        return get_family(explicit)
    folder = Path(path)
    config = _read_json(folder / "config.json")
    if config is None:
        raise FamilyError(f"{folder / 'config.json'} is missing or not JSON, so the family cannot be detected; "
                          f"point at a Hugging Face checkpoint folder or set family ({FAMILY_SETTING})")
    vocab = _tokenizer_vocabulary(tokenizer) if tokenizer is not None else _folder_vocabulary(folder)
    return detect_family(config.get("model_type"), vocab)


def _read_json(path: Path) -> Mapping | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _tokenizer_vocabulary(tokenizer) -> set[str]:
    vocab = set(tokenizer.get_vocab())
    vocab.update(str(t) for t in getattr(tokenizer, "all_special_tokens", ()))
    return vocab


def _folder_vocabulary(folder: Path) -> set[str]:
    vocab: set[str] = set()
    tok = _read_json(folder / "tokenizer.json") or {}
    model_vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update(model_vocab)
    elif isinstance(model_vocab, list):  # Unigram: [[piece, score], …]
        vocab.update(str(item[0]) for item in model_vocab if item)
    vocab.update(t["content"] for t in tok.get("added_tokens", ()) if isinstance(t, dict) and "content" in t)
    cfg = _read_json(folder / "tokenizer_config.json") or {}
    decoder = cfg.get("added_tokens_decoder") or {}
    vocab.update(t["content"] for t in decoder.values() if isinstance(t, dict) and "content" in t)
    return vocab
