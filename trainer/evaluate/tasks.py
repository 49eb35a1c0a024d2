"""Completion tasks cut from held-out records: pure and deterministic.

A task is (prompt, target): the code before a cut point and what a developer typed next.

- ``line``: cut inside a line after at least ``min_prefix_chars`` non-indent characters;
  the target is the rest of that line.
- ``next_line``: the prompt ends at a line break; the target is the next non-blank line
  (blank lines in between stay in the prompt).
- ``block``: like ``next_line`` but the target is up to ``block_lines`` lines.

Fill-in-the-middle kinds (:data:`FIM_TASK_KINDS`) cut a hole the way editors ask for one, and
carry the real code after the hole as ``suffix`` (``prompt + target + suffix`` is the file):

- ``fim_inline``: the cursor inside a line; the hole is part of that line and the rest of the
  line (``)``, ``, timeout=5)``) is in the suffix.
- ``fim_line_end``: the cursor after some characters of a line; the hole is the rest of it.
- ``fim_line``: a whole missing line (the prompt ends at a line break).
- ``fim_block``: up to ``block_lines`` missing lines.

A FIM task needs non-blank code on both sides of the hole. The left-to-right kinds are
untouched by them (CodeGen keeps exactly today's tasks); a FIM model is asked both.

Targets without a letter or digit (blank, ``}``, ``)``, ``]);``) are skipped: any model gets
them right and they would only dilute the differences we measure.

Determinism: each (record, kind) gets its own ``random.Random`` seeded from a SHA-256 of
(seed, corpus version, repo, path, kind) — never Python's salted ``hash()`` — which shuffles
that file's eligible lines. Tasks are then dealt round-robin over files (every file's first
candidate, in an order fixed by a hash of the task id, then every file's second …), so the
result does not depend on the order records arrive in, and the first ``n`` tasks of a larger
draw are the ``n``-task draw.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from trainer.evaluate.config import TASK_KINDS

FIM_TASK_KINDS = ("fim_inline", "fim_line_end", "fim_line", "fim_block")
"""Fill-in-the-middle task kinds, in the order they are dealt (for FIM families only)."""
ALL_TASK_KINDS = TASK_KINDS + FIM_TASK_KINDS

_NONTRIVIAL = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class Task:
    """One completion task: the model sees ``prompt`` and should produce ``target``."""

    task_id: str
    """Stable id: ``repo:path:kind:line:column``."""
    kind: str
    """``line``, ``next_line``, ``block`` or one of :data:`FIM_TASK_KINDS`."""
    prompt: str
    """Code before the cut (left-truncated to the model context when a tokenizer was given)."""
    target: str
    """The reference completion (no trailing newline; ``block`` targets join lines with ``\\n``)."""
    path: str
    lang: str
    repo: str
    line: int
    """0-based line of the cut."""
    suffix: str = ""
    """FIM kinds: the code after the hole (right-truncated when a tokenizer was given); else empty."""

    @property
    def target_lines(self) -> int:
        """How many lines the target spans (generation stops after as many)."""
        return self.target.count("\n") + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_trivial(target: str) -> bool:
    """True for targets a model cannot meaningfully miss: blank or punctuation only."""
    return _NONTRIVIAL.search(target) is None


def _seed_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _line_starts(lines: list[str]) -> list[int]:
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    return starts


@dataclass(frozen=True)
class _Cut:
    """A candidate task without its prompt (prompts are sliced only for the tasks chosen)."""

    task_id: str
    kind: str
    record: int
    offset: int
    target: str
    line: int
    end: int = 0
    """FIM kinds: offset where the suffix starts (``offset + len(target)``)."""


def _file_candidates(record: Mapping[str, Any], index: int, kind: str, *, seed: int, corpus_version: str,
                     block_lines: int, min_prefix_chars: int, limit: int) -> list[_Cut]:
    """Up to ``limit`` eligible cuts of one kind in one file, in that file's seeded order."""
    text = record["text"]
    repo, path = record.get("repo", ""), record["path"]
    rng = random.Random(_seed_int(seed, corpus_version, repo, path, kind))
    lines = text.split("\n")
    starts = _line_starts(lines)
    order = list(range(len(lines)))
    rng.shuffle(order)
    found: list[_Cut] = []
    for i in order:
        if len(found) >= limit:
            break
        line = lines[i]
        if kind in FIM_TASK_KINDS:
            cut = _fim_cut(kind, lines, i, rng, block_lines, min_prefix_chars)
            if cut is None:
                continue
            col, target = cut
            offset = starts[i] + col
            if is_trivial(target) or not text[:offset].strip() or not text[offset + len(target):].strip():
                continue
            found.append(_Cut(task_id=f"{repo}:{path}:{kind}:{i}:{col}", kind=kind, record=index,
                              offset=offset, target=target, line=i, end=offset + len(target)))
            continue
        if kind == "line":
            indent = len(line) - len(line.lstrip())
            body = len(line) - indent
            if body < min_prefix_chars + 2:
                continue
            col = indent + rng.randint(min_prefix_chars, body - 1)
            target = line[col:]
        else:
            if i == 0 or not line.strip():
                continue
            col = 0
            target = "\n".join(lines[i:i + block_lines]) if kind == "block" else line
        target = target.rstrip()
        if is_trivial(target) or not text[:starts[i] + col].strip():
            continue
        found.append(_Cut(task_id=f"{repo}:{path}:{kind}:{i}:{col}", kind=kind, record=index,
                          offset=starts[i] + col, target=target, line=i))
    return found


def _fim_cut(kind: str, lines: list[str], i: int, rng: random.Random, block_lines: int,
             min_prefix_chars: int) -> tuple[int, str] | None:
    """(column, hole text) of a FIM cut on line ``i``, or ``None`` when the line does not fit the kind.

    The hole is an exact slice of the file (only trailing blanks are left to the suffix), so
    ``prompt + target + suffix`` reproduces the file.
    """
    line = lines[i].rstrip()
    indent = len(line) - len(line.lstrip())
    body = len(line) - indent
    if kind == "fim_inline":
        if body < min_prefix_chars + 3:
            return None
        col = indent + rng.randint(min_prefix_chars, body - 2)
        return col, line[col:rng.randint(col + 1, len(line) - 1)]
    if kind == "fim_line_end":
        if body < min_prefix_chars + 2:
            return None
        col = indent + rng.randint(min_prefix_chars, body - 1)
        return col, line[col:]
    if i == 0 or not line.strip():
        return None
    if kind == "fim_line":
        return 0, line
    return 0, "\n".join(lines[i:i + block_lines]).rstrip()


def build_tasks(records: Iterable[Mapping[str, Any]], *, seed: int, n: int, corpus_version: str | int,
                kinds: tuple[str, ...] = TASK_KINDS, block_lines: int = 5, min_prefix_chars: int = 3,
                tokenizer: Any = None, max_prompt_tokens: int | None = None,
                max_suffix_tokens: int | None = None) -> list[Task]:
    """Draw ``n`` tasks (split as evenly as possible over ``kinds``) from ``records``.

    ``records`` are corpus lines (``{"text", "path", "lang", "repo", "sha"}``). The same
    records, seed and corpus version always give the same tasks in the same order. With a
    ``tokenizer`` and ``max_prompt_tokens``, each prompt keeps only its last
    ``max_prompt_tokens`` tokens (cut on a token boundary of the original text); with
    ``max_suffix_tokens``, a FIM task's suffix keeps only its first ``max_suffix_tokens`` tokens.
    A kind with too few candidates leaves its share to the others.
    """
    unknown = [k for k in kinds if k not in ALL_TASK_KINDS]
    if unknown:
        raise ValueError(f"unknown task kinds {unknown}; use a subset of {ALL_TASK_KINDS}")
    ordered = sorted((r for r in records if isinstance(r.get("text"), str)),
                     key=lambda r: (r.get("repo", ""), r["path"]))
    version = str(corpus_version)
    pools: dict[str, list[_Cut]] = {}
    for kind in kinds:
        ranked: list[tuple[int, int, _Cut]] = []
        for index, record in enumerate(ordered):
            # A file's candidate of rank >= n can never be dealt (n others come first).
            found = _file_candidates(record, index, kind, seed=seed, corpus_version=version,
                                     block_lines=block_lines, min_prefix_chars=min_prefix_chars, limit=n)
            ranked.extend((rank, _seed_int(seed, version, c.task_id), c) for rank, c in enumerate(found))
        ranked.sort(key=lambda item: (item[0], item[1]))
        pools[kind] = [c for _, _, c in ranked]
    tasks = []
    for cut in _deal(pools, kinds, n):
        record = ordered[cut.record]
        prompt = record["text"][:cut.offset]
        if tokenizer is not None and max_prompt_tokens is not None:
            prompt = truncate_left(prompt, tokenizer, max_prompt_tokens)
        suffix = record["text"][cut.end:] if cut.kind in FIM_TASK_KINDS else ""
        if suffix and tokenizer is not None and max_suffix_tokens is not None:
            suffix = truncate_right(suffix, tokenizer, max_suffix_tokens)
        tasks.append(Task(task_id=cut.task_id, kind=cut.kind, prompt=prompt, target=cut.target,
                          path=record["path"], lang=record.get("lang", "unknown"),
                          repo=record.get("repo", ""), line=cut.line, suffix=suffix))
    return tasks


def _deal(pools: dict[str, list[_Cut]], kinds: tuple[str, ...], n: int) -> list[_Cut]:
    """Take tasks kind by kind in turn until ``n`` are taken or every pool is empty."""
    taken: list[_Cut] = []
    cursors = dict.fromkeys(kinds, 0)
    while len(taken) < n:
        progressed = False
        for kind in kinds:
            if len(taken) >= n:
                break
            if cursors[kind] < len(pools[kind]):
                taken.append(pools[kind][cursors[kind]])
                cursors[kind] += 1
                progressed = True
        if not progressed:
            break
    return taken


def truncate_left(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The longest suffix of ``text`` starting on a token boundary with at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    # Tokenising a bounded window keeps this linear in the context, not in the file size.
    window = text[-max_tokens * 16:]
    enc = tokenizer(window, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        if len(window) == len(text):
            return text
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets, window = enc["offset_mapping"], text
        if len(offsets) <= max_tokens:
            return text
    start = offsets[len(offsets) - max_tokens][0]
    return window[start:]


def truncate_right(text: str, tokenizer: Any, max_tokens: int) -> str:
    """The longest prefix of ``text`` ending on a token boundary with at most ``max_tokens`` tokens."""
    if max_tokens <= 0:
        return ""
    window = text[:max_tokens * 16]
    offsets = tokenizer(window, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= max_tokens and len(window) == len(text):
        return text
    if len(offsets) <= max_tokens:  # a window of long tokens: look at the whole text
        window = text
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(offsets) <= max_tokens:
            return text
    return window[:offsets[max_tokens - 1][1]]
