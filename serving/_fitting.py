"""Building the prompt a model sees and fitting it into the context window.

Editors send whole files and ask for ``max_tokens`` of 500 (Copilot) or 4096 (Continue); a
model with a 2,048-token window would answer them all with a 400. Instead the prompt is
trimmed the way an editor's own context builder would: the END of the prefix (the code just
before the cursor) and the START of the suffix (the code just after it) are kept, cut at line
boundaries, other files' chunks go first, and ``max_tokens`` is clamped to what is left while
keeping at least a quarter of the window for the answer. :class:`Fitted` says what was cut so
the proxy can tell the client in a header. ``strict`` restores OpenAI's 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from families import Family, build_fim_prompt
from serving.completions import ApiError


@dataclass(frozen=True)
class Fitted:
    """One prompt as sent to the model, and what fitting it into the window cost."""

    text: str
    ids: list[int]
    max_tokens: int
    trimmed_prefix: int = 0
    """Characters cut from the start of the prefix."""
    trimmed_suffix: int = 0
    """Characters cut from the end of the suffix."""
    dropped_extra: int = 0
    """Other files' chunks left out."""


def render(family: Family | None, prefix: str, suffix: str, extra: Sequence[tuple[str, str]], fim: bool) -> str:
    """The model's prompt: other files' chunks (behind the family's file separator where it has
    one, else as plain text before the prefix), then the FIM prompt or the prefix alone."""
    context = ""
    if extra:
        sep = family.file_sep_token if family is not None else None
        if sep:
            context = "".join(f"{sep}{name}\n{text}" + ("" if text.endswith("\n") else "\n") for name, text in extra)
        else:
            prefix = "".join(text + ("" if text.endswith("\n") else "\n") for _, text in extra) + prefix
    if fim and family is not None:
        return context + build_fim_prompt(family, prefix, suffix)
    return context + prefix


def encode(tok: Any, text: str) -> list[int]:
    return list(tok(text)["input_ids"]) or [tok.eos_token_id or 0]


def fit(tok: Any, family: Family | None, prefix: str, suffix: str, extra: Sequence[tuple[str, str]], *,
        fim: bool, max_tokens: int, window: int, strict: bool) -> Fitted:
    """The prompt for one completion, trimmed (or refused when ``strict``) to fit ``window``."""
    suffix = suffix if fim else ""
    text = render(family, prefix, suffix, extra, fim)
    ids = encode(tok, text)
    if len(ids) + max_tokens <= window:
        return Fitted(text, ids, max_tokens)
    if strict:
        raise ApiError(400, f"this model's maximum context length is {window} tokens, but the prompt "
                            f"has {len(ids)} tokens and max_tokens is {max_tokens} "
                            f"({len(ids) + max_tokens} in total); shorten the prompt or lower "
                            "max_tokens", param="max_tokens", code="context_length_exceeded")
    new_max = max(1, min(max_tokens, max(window - len(ids), window // 4)))
    budget = window - new_max
    dropped = 0
    if len(ids) > budget and extra:
        dropped, extra = len(extra), ()
        text = render(family, prefix, suffix, extra, fim)
        ids = encode(tok, text)
    kept_prefix, kept_suffix = prefix, suffix
    overhead = len(encode(tok, render(family, "", "", (), fim))) if fim else 0
    room = budget - overhead
    prefix_ids = len(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
    suffix_ids = len(tok(suffix, add_special_tokens=False)["input_ids"]) if suffix else 0
    for _ in range(4):
        if len(ids) <= budget:
            break
        # The suffix gets a third of the room, or what the prefix leaves unused.
        keep_s = min(suffix_ids, max(max(0, room) // 3, room - prefix_ids))
        kept_suffix = keep_start(tok, suffix, keep_s) if suffix else ""
        kept_prefix = keep_end(tok, prefix, max(0, room - keep_s))
        text = render(family, kept_prefix, kept_suffix, extra, fim)
        ids = encode(tok, text)
        room -= max(1, len(ids) - budget)
    if len(ids) > budget:  # joins tokenized differently: cut tokens, never overflow the window
        ids = ids[len(ids) - budget:]
        text = tok.decode(ids)
    return Fitted(text, ids, new_max, len(prefix) - len(kept_prefix), len(suffix) - len(kept_suffix), dropped)


def _offsets(tok: Any, text: str) -> list[tuple[int, int]]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(o) for o in enc["offset_mapping"]]


def keep_end(tok: Any, text: str, tokens: int) -> str:
    """The last ``tokens`` tokens of ``text``, starting at a line start (mid-line only when one
    line is longer than that)."""
    if tokens <= 0 or not text:
        return ""
    offsets = _offsets(tok, text)
    if len(offsets) <= tokens:
        return text
    start = offsets[len(offsets) - tokens][0]
    if start > 0 and text[start - 1] != "\n":
        nl = text.find("\n", start)
        start = nl + 1 if 0 <= nl < len(text) - 1 else start
    return text[start:]


def keep_start(tok: Any, text: str, tokens: int) -> str:
    """The first ``tokens`` tokens of ``text``, ending at a line end where one is inside them."""
    if tokens <= 0 or not text:
        return ""
    offsets = _offsets(tok, text)
    if len(offsets) <= tokens:
        return text
    end = offsets[tokens - 1][1]
    nl = text.rfind("\n", 0, end)
    return text[: nl + 1] if nl >= 0 else text[:end]
