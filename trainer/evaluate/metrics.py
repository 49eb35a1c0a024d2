"""Completion metrics: pure functions of (prediction, target) strings and loss sums.

All string metrics compare ``strip()``-ed text, so a trailing newline or a different
indentation of a single line does not decide the score; each returns a float in [0, 1].
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Iterable, Mapping, Sequence

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keywords of the languages a company repo is mostly made of: they are syntax, not the
# in-house names (functions, classes, fields) that identifier match is meant to measure.
KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset({
    "async", "await", "break", "case", "catch", "chan", "class", "const", "continue", "default",
    "defer", "delete", "do", "else", "enum", "export", "extends", "fallthrough", "false", "final",
    "for", "func", "function", "go", "goto", "if", "implements", "import", "in", "instanceof",
    "interface", "let", "map", "new", "nil", "null", "package", "private", "protected", "public",
    "range", "return", "select", "static", "struct", "super", "switch", "this", "throw", "throws",
    "true", "try", "type", "typeof", "undefined", "var", "void", "while", "yield",
})

STRING_METRICS = ("exact_match", "edit_similarity", "identifier_match")
"""Per-task metrics computed from strings (means over tasks)."""


def exact_match(prediction: str, target: str) -> float:
    """1.0 when the stripped prediction equals the stripped target, else 0.0."""
    return 1.0 if prediction.strip() == target.strip() else 0.0


def edit_similarity(prediction: str, target: str) -> float:
    """``1 - Levenshtein(prediction, target) / max(len)`` on stripped text; two empty strings give 1.0."""
    from rapidfuzz.distance import Levenshtein

    a, b = prediction.strip(), target.strip()
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - Levenshtein.distance(a, b) / longest


def identifiers(text: str) -> set[str]:
    """The identifiers in ``text`` (word tokens starting with a letter or ``_``), keywords excluded."""
    return {word for word in _IDENTIFIER.findall(text) if word not in KEYWORDS}


def identifier_match(prediction: str, target: str) -> float:
    """Share of the target's distinct identifiers that appear in the prediction.

    A target without identifiers (``return 0``) scores as :func:`exact_match`.
    """
    wanted = identifiers(target)
    if not wanted:
        return exact_match(prediction, target)
    return len(wanted & identifiers(prediction)) / len(wanted)


def score_completion(prediction: str, target: str) -> dict[str, float]:
    """All string metrics of one completion."""
    return {
        "exact_match": exact_match(prediction, target),
        "edit_similarity": edit_similarity(prediction, target),
        "identifier_match": identifier_match(prediction, target),
    }


def mean_scores(rows: Sequence[Mapping[str, float]], names: Iterable[str] = STRING_METRICS) -> dict[str, float]:
    """Mean of each named metric over ``rows`` (NaN when there are none)."""
    names = list(names)
    if not rows:
        return dict.fromkeys(names, math.nan)
    return {name: sum(row[name] for row in rows) / len(rows) for name in names}


def aggregate_loss(parts: Iterable[tuple[float, int]]) -> dict[str, float]:
    """Token-weighted loss from (summed negative log-likelihood in nats, token count) pairs.

    Returns ``loss`` (nats per token), ``perplexity`` (``exp(loss)``) and ``tokens``.
    """
    total_nll, total_tokens = 0.0, 0
    for nll, tokens in parts:
        total_nll += nll
        total_tokens += tokens
    if total_tokens == 0:
        return {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
    loss = total_nll / total_tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": total_tokens}


def breakdown(rows: Sequence[Mapping[str, object]], outer: str = "kind", inner: str = "lang",
              names: Iterable[str] = STRING_METRICS) -> dict[str, dict[str, dict[str, float]]]:
    """Mean of each named metric per ``outer`` value and, within it, per ``inner`` value.

    ``rows`` are scored tasks (``{"kind", "lang", "exact_match", …}``). Each group also carries
    ``n_tasks``; ``"*"`` under an outer value is that value over every ``inner`` value. The
    FIM report reads it as per task kind, per language: where a model fills a hole inside a
    line well but a missing block badly, the overall mean would hide it.
    """
    names = list(names)
    groups: dict[str, dict[str, list[Mapping[str, object]]]] = {}
    for row in rows:
        by_inner = groups.setdefault(str(row.get(outer, "unknown")), {})
        by_inner.setdefault(str(row.get(inner, "unknown")), []).append(row)
        by_inner.setdefault("*", []).append(row)
    return {
        out_key: {in_key: {**mean_scores(members, names), "n_tasks": len(members)}
                  for in_key, members in sorted(by_inner.items())}
        for out_key, by_inner in sorted(groups.items())
    }
