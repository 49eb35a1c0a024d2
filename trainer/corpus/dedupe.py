"""Deduplication: exact (git blob id) and near-duplicate (MinHash + LSH bands).

The rule is order independent, so an incremental update and a full build agree:
a file is dropped as a duplicate when *another eligible file with a smaller key* has the
same content (exact) or an estimated Jaccard similarity >= :data:`THRESHOLD` (near), whether
or not that other file is itself kept. The key is ``(split != "heldout", path)``: held-out
files sort first, so a held-out file's duplicate is never the one kept in train.

MinHash here is one-permutation hashing over byte 8-grams (vectorised with numpy, ~1 GB/s)
instead of k independent hash functions: :data:`NUM_PERM` bins of one 64-bit hash, empty
bins filled from the next non-empty one. Signatures of 128 uint32 are stored in the manifest;
:data:`BANDS` x :data:`ROWS` bands feed the LSH index (a sqlite table); their keys are
computed for a whole batch of signatures in one broadcast (:func:`band_keys_many`).
"""

from __future__ import annotations

import threading

import numpy as np

NUM_PERM = 128
BANDS = 16
ROWS = NUM_PERM // BANDS
THRESHOLD = 0.85
"""Estimated Jaccard similarity at or above which two files are near-duplicates."""
MIN_BYTES = 200
"""Files shorter than this get no signature (too few shingles to judge); exact dedupe only."""
_K = 8
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_EMPTY = np.uint32(0xFFFFFFFF)


def signature(data: bytes) -> np.ndarray | None:
    """One-permutation MinHash of the byte 8-grams of ``data`` (uint32[NUM_PERM]), or None."""
    return signatures([data])[0]


def signatures(datas: list[bytes]) -> list[np.ndarray | None]:
    """:func:`signature` of each of ``datas``, computed for all of them at once.

    Why batched: for a 4 KB file, numpy's per-call overhead (a dozen small array operations
    and one ``minimum.at``) cost as much as the hashing itself. Here the 8-grams of the
    concatenated texts are hashed in one go; each gram's bin is offset by 128 x its file's
    index, and the 7 grams that straddle a file boundary go to one spare bin, so every file
    gets exactly the signature it would get alone.
    """
    out: list[np.ndarray | None] = [None] * len(datas)
    keep = [i for i, d in enumerate(datas) if len(d) >= MIN_BYTES]
    if not keep:
        return out
    buf, h, tmp, vals = _scratch(sum(len(datas[i]) for i in keep))
    start = 0
    for i in keep:
        buf[start:start + len(datas[i])] = datas[i]
        start += len(datas[i])
    n = start - _K + 1
    h, tmp, vals = h[:n], tmp[:n], vals[:n]
    grams = np.ndarray(shape=(n,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    files = len(keep)
    np.multiply(grams, _MUL, out=h)
    np.right_shift(h, np.uint64(31), out=tmp)
    h ^= tmp
    h *= _MUL2
    np.right_shift(h, np.uint64(29), out=tmp)
    h ^= tmp
    np.copyto(vals, h, casting="unsafe")  # the low 32 bits
    h >>= np.uint64(57)  # top 7 bits: 128 bins
    slot = h.view(np.intp)
    start = 0
    for f, i in enumerate(keep):  # file f's grams go to bins 128 f ..; its last 7 straddle
        end = start + len(datas[i])
        slot[start:end - _K + 1] += f * NUM_PERM
        slot[end - _K + 1:end] = files * NUM_PERM
        start = end
    sigs = np.full((files + 1) * NUM_PERM, _EMPTY, dtype=np.uint32)
    np.minimum.at(sigs, slot, vals)
    sigs = sigs[:files * NUM_PERM].reshape(files, NUM_PERM)
    for row in np.flatnonzero((sigs == _EMPTY).any(axis=1)).tolist():
        _densify(sigs[row])
    for row, i in enumerate(keep):
        out[i] = sigs[row]
    return out


_local = threading.local()


def _scratch(nbytes: int) -> tuple[bytearray, np.ndarray, np.ndarray, np.ndarray]:
    """This thread's reusable buffers for :func:`signatures`, at least ``nbytes`` long: fresh
    multi-megabyte arrays per batch cost more in page faults (system time) than the hashing."""
    have = getattr(_local, "buffers", None)
    if have is None or len(have[0]) < nbytes:
        size = max(nbytes, 1 << 18)
        have = _local.buffers = (bytearray(size), np.empty(size, np.uint64), np.empty(size, np.uint64),
                                 np.empty(size, np.uint32))
    return have


def _densify(sig: np.ndarray) -> None:
    """Fill empty bins in place: each borrows from the next non-empty bin (cyclically)."""
    empty = sig == _EMPTY
    full = np.flatnonzero(~empty)
    idx = np.flatnonzero(empty)
    nxt = full[np.searchsorted(full, idx) % len(full)]
    sig[idx] = sig[nxt] ^ np.uint32(0x5BD1E995) * (idx.astype(np.uint32) + 1)


def band_keys_many(sigs: np.ndarray) -> np.ndarray:
    """LSH bucket keys of many signatures at once: int64[n, BANDS], each >= 0 (sqlite-friendly).

    A band's key mixes its ROWS values (xor, multiply, xorshift per value) from a start that
    depends on the band, so equal bands of different band numbers never share a key.
    """
    v = np.asarray(sigs, dtype=np.uint32).reshape(-1, BANDS, ROWS).astype(np.uint64)
    h = np.full(v.shape[:2], _MUL, dtype=np.uint64) ^ np.arange(BANDS, dtype=np.uint64)
    for j in range(ROWS):
        h ^= v[:, :, j]
        h *= _MUL2
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(1)).astype(np.int64)


def band_keys(sig: np.ndarray) -> list[int]:
    """The LSH bucket keys of one signature (see :func:`band_keys_many`)."""
    return band_keys_many(sig[None, :])[0].tolist()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.count_nonzero(a == b)) / NUM_PERM


def sort_key(split: str, path: str) -> tuple[bool, str]:
    """Canonical order: held-out first, then path; the smaller key of a duplicate pair wins."""
    return (split != "heldout", path)
