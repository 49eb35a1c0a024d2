"""Fill-in-the-middle training examples, made at token level before packing.

The recipe the FIM families were trained with (BigCode's Megatron arguments, santacoder's
``fim.py``, the "personal copilot" fine-tune): for each tokenised file, with probability
``fim_rate`` cut the tokens at two uniform positions into prefix / middle / suffix and
re-order them into the family's prefix-suffix-middle format or, with probability ``spm_rate``,
its suffix-prefix-middle format; otherwise keep the file left to right. The end-of-text token
is appended afterwards, so it always closes the middle, which is what teaches the model to stop.

Cutting token ids (not characters) means no re-tokenising and no chance of a cut inside a
multi-byte character; the price is that a cut never falls inside a token, which the published
recipes accept too.

Determinism: each file gets its own ``random.Random`` seeded from a SHA-256 of (seed, key,
document index), where ``key`` names the shard (its checksum); so the same corpus and seed
give the same examples whatever order shards are packed in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from families import (
    FAMILY_SETTING,
    MIDDLE,
    PLACEHOLDERS,
    PREFIX,
    SUFFIX,
    Family,
    get_family,
)
from trainer.errors import FamilyError


@dataclass(frozen=True)
class FimSettings:
    """How many training files become FIM examples, and in which family's format."""

    family: str
    """Registry name (:data:`trainer.families.FAMILIES`) whose sentinels and formats are used."""
    fim_rate: float = 0.5
    """Probability that a file is cut into a FIM example (0 keeps every file left to right)."""
    spm_rate: float = 0.5
    """Probability that a FIM example uses suffix-prefix-middle instead of prefix-suffix-middle
    (ignored for families trained with PSM only, e.g. DeepSeek-Coder)."""
    seed: int = 0
    """Seed of the per-file draws."""

    def problems(self) -> list[str]:
        """Every invalid setting, each naming the setting (empty when all are valid)."""
        found = []
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                found.append(f"{name}={value}: must be between 0 and 1")
        return found


@dataclass(frozen=True)
class FimIds:
    """A family's formats resolved to one tokenizer's ids.

    Each format is a tuple of pieces: a placeholder string (``{prefix}`` …) or a tuple of
    literal token ids (sentinels and spacing joined, so each literal group holds a sentinel).
    """

    family: str
    sentinel_ids: tuple[int, ...]
    """Ids of the prefix, suffix and middle sentinels, in that order."""
    psm: tuple[str | tuple[int, ...], ...]
    spm: tuple[str | tuple[int, ...], ...] | None

    @cached_property
    def sentinel_set(self) -> frozenset[int]:
        """The sentinel ids as a set (checked against every training file)."""
        return frozenset(self.sentinel_ids)

    @classmethod
    def from_tokenizer(cls, family: str | Family, tokenizer) -> FimIds:
        """Resolve ``family``'s formats with ``tokenizer``; every sentinel must be one token."""
        fam = get_family(family)
        if not fam.has_fim:
            raise FamilyError(f"family {fam.name!r} has no fill-in-the-middle sentinels, so fim_rate must be 0; "
                              f"set fim_rate = 0 or set family ({FAMILY_SETTING}) to a FIM family")
        sentinel_ids = tuple(_single_token_id(tokenizer, token, fam.name) for token in fam.sentinels)
        ids = dict(zip(fam.sentinels, sentinel_ids, strict=True))
        return cls(family=fam.name, sentinel_ids=sentinel_ids, psm=_resolve(fam.psm, ids, tokenizer),
                   spm=_resolve(fam.spm, ids, tokenizer) if fam.spm is not None else None)


def _single_token_id(tokenizer, token: str, family: str) -> int:
    encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
    token_id = tokenizer.convert_tokens_to_ids(token)
    if len(encoded) != 1 or encoded[0] != token_id:
        raise FamilyError(f"the tokenizer encodes the {family} sentinel {token!r} as {encoded}, not one token; "
                          "use the family's own tokenizer (or add the sentinel as a special token), or set "
                          f"family ({FAMILY_SETTING}) to the base model's real family")
    return int(token_id)


def _resolve(fmt: tuple[str, ...], ids: dict[str, int], tokenizer) -> tuple[str | tuple[int, ...], ...]:
    """Placeholders stay; runs of adjacent literals become one tuple of ids."""
    out: list[str | tuple[int, ...]] = []
    run: list[int] = []
    for piece in fmt:
        if piece in PLACEHOLDERS:
            if run:
                out.append(tuple(run))
                run = []
            out.append(piece)
        elif piece in ids:
            run.append(ids[piece])
        else:  # the family's spacing, tokenised as plain text
            run.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    if run:
        out.append(tuple(run))
    return tuple(out)


def fim_transform(ids: Sequence[int], rng: random.Random, fim_ids: FimIds, fim_rate: float,
                  spm_rate: float) -> tuple[list[int], str]:
    """One file's token ids (no end-of-text), maybe re-ordered into a FIM example.

    Returns the ids and the mode used: ``"psm"``, ``"spm"`` or ``"plain"`` (left unchanged).
    """
    if rng.random() >= fim_rate:
        return list(ids), "plain"
    low, high = sorted((rng.randint(0, len(ids)), rng.randint(0, len(ids))))
    parts = {PREFIX: ids[:low], MIDDLE: ids[low:high], SUFFIX: ids[high:]}
    use_spm = rng.random() < spm_rate and fim_ids.spm is not None
    fmt = fim_ids.spm if use_spm else fim_ids.psm
    out: list[int] = []
    for piece in fmt or ():
        out.extend(parts[piece] if isinstance(piece, str) else piece)
    return out, "spm" if use_spm else "psm"


def undo_fim(ids: Sequence[int], fim_ids: FimIds) -> list[int]:
    """The original file's ids from a FIM example (sentinels and spacing removed, order restored).

    A plain (left-to-right) example has no sentinel and comes back unchanged. The inverse of
    :func:`fim_transform`, used by the tests and to inspect a packed dataset.
    """
    ids = list(ids)
    if fim_ids.sentinel_ids[0] not in ids:
        return ids
    suffix_first = fim_ids.spm is not None and _matches_at(ids, fim_ids.spm[0], 0)
    fmt = fim_ids.spm if suffix_first else fim_ids.psm
    parts = _split(ids, fmt or (), fim_ids.sentinel_set)
    return [*parts[PREFIX], *parts[MIDDLE], *parts[SUFFIX]]


def _matches_at(ids: list[int], piece: str | tuple[int, ...], at: int) -> bool:
    return isinstance(piece, tuple) and tuple(ids[at:at + len(piece)]) == piece


def _split(ids: list[int], fmt: tuple[str | tuple[int, ...], ...], sentinels: frozenset[int]) -> dict[str, list[int]]:
    """Cut ``ids`` along ``fmt``: each literal group is found by its (unique) sentinel.

    Adjacent placeholders (SPM's prefix+middle) cannot be told apart and need not be: they are
    adjacent in the original file too, so the first takes the run and the others stay empty.
    """
    parts = dict.fromkeys(PLACEHOLDERS, [])
    cursor, pending = 0, []
    for piece in fmt:
        if isinstance(piece, str):
            pending.append(piece)
            continue
        start = _find_group(ids, piece, cursor, sentinels) if pending else cursor
        if not _matches_at(ids, piece, start):
            raise ValueError(f"not a FIM example of this format: expected {piece} at token {start}")
        if pending:
            parts[pending[0]] = ids[cursor:start]
            pending = []
        cursor = start + len(piece)
    if pending:
        parts[pending[0]] = ids[cursor:]
    return parts


def _find_group(ids: list[int], group: tuple[int, ...], cursor: int, sentinels: frozenset[int]) -> int:
    # Spacing tokens also occur inside code; a sentinel does not, so the group is found by its own.
    anchor = next(i for i, token in enumerate(group) if token in sentinels)
    try:
        return ids.index(group[anchor], cursor) - anchor
    except ValueError:
        raise ValueError(f"not a FIM example of this format: sentinel {group[anchor]} missing") from None


@dataclass
class FimApplier:
    """Applies :func:`fim_transform` document by document and counts what it did."""

    settings: FimSettings
    fim_ids: FimIds | None
    """``None`` when ``fim_rate`` is 0 (then the family needs no sentinels at all)."""
    counts: dict[str, int] = field(default_factory=lambda: {"plain": 0, "psm": 0, "spm": 0})
    added_tokens: int = 0
    with_sentinels: int = 0
    """Files whose own text already held a sentinel (e.g. code about FIM); kept left to right,
    because a second ``<fim_suffix>`` would make the example ambiguous to learn from."""

    @classmethod
    def create(cls, settings: FimSettings, tokenizer) -> FimApplier:
        """Validate ``settings`` and resolve the family's sentinels with ``tokenizer``."""
        problems = settings.problems()
        if problems:
            raise FamilyError("invalid fill-in-the-middle settings: " + "; ".join(problems))
        fam = get_family(settings.family)
        fim_ids = FimIds.from_tokenizer(fam, tokenizer) if settings.fim_rate > 0 else None
        return cls(settings=settings, fim_ids=fim_ids)

    def __call__(self, ids: Sequence[int], key: str, index: int) -> list[int]:
        """Transform document ``index`` of the shard named ``key`` (ids without end-of-text)."""
        if self.fim_ids is None:
            self.counts["plain"] += 1
            return list(ids)
        if not self.fim_ids.sentinel_set.isdisjoint(ids):
            self.with_sentinels += 1
            self.counts["plain"] += 1
            return list(ids)
        rng = random.Random(_seed_int(self.settings.seed, key, index))
        out, mode = fim_transform(ids, rng, self.fim_ids, self.settings.fim_rate, self.settings.spm_rate)
        self.counts[mode] += 1
        self.added_tokens += len(out) - len(ids)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-friendly record for ``train.json``: the settings and what they produced."""
        fam = get_family(self.settings.family)
        return {
            "family": fam.name,
            "fim_rate": self.settings.fim_rate,
            "spm_rate": self.settings.spm_rate if fam.spm is not None else 0.0,
            "seed": self.settings.seed,
            "documents": dict(self.counts),
            "sentinel_tokens_added": self.added_tokens,
            "files_with_sentinels": self.with_sentinels,
        }


def _seed_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")
