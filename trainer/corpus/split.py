"""Held-out membership: a stable function of (repo, path), plus sticky minimum-count pins.

Rule (see docs/corpus.md): a path is held out when ``u(repo, path) < heldout_fraction``,
where ``u`` is the path's 64-bit xxhash scaled to [0, 1). That never changes as the repo
evolves. Because no function of the path alone can guarantee a minimum count in a tiny repo,
when fewer than ``heldout_min`` eligible files are held out the corpus *pins* the eligible
train files with the smallest ``u`` as held-out; pins are stored in the manifest and kept for
as long as the path exists, so a pinned file never moves back to train either.
"""

from __future__ import annotations

import xxhash

_SCALE = float(2**64)


def unit(repo: str, path: str) -> float:
    """The path's position in [0, 1): uniform, stable across runs and machines."""
    return xxhash.xxh64_intdigest(f"{repo}\0{path}".encode()) / _SCALE


def is_heldout(repo: str, path: str, fraction: float) -> bool:
    """Held out by the hash rule alone."""
    return unit(repo, path) < fraction


def shard_of(path: str, num_shards: int) -> int:
    """Which shard of its split a path's record lives in (stable, independent of the split)."""
    return xxhash.xxh32_intdigest(path.encode(), seed=7) % num_shards


def pins_needed(repo: str, heldout: int, train_candidates: list[str], minimum: int) -> list[str]:
    """The train paths to pin so that at least ``minimum`` files are held out.

    ``heldout``: how many eligible paths are already held out (by hash or an earlier pin);
    ``train_candidates``: eligible paths currently in train. Smallest ``u`` first.
    """
    missing = minimum - heldout
    if missing <= 0:
        return []
    return sorted(train_candidates, key=lambda p: (unit(repo, p), p))[:missing]
