"""zstd JSONL shards: record encoding, atomic writes, checksums and reading.

A shard is one zstd frame of JSON lines sorted by path, so the same records always give the
same bytes (an incremental update and a full build write identical files). Files are written
to a hidden temp name in the same folder, fsynced, and later renamed into place by the
manifest's commit protocol (see :mod:`trainer.corpus.update`). That staging is kept apart from
:func:`durable.write_atomic` on purpose: an update writes many shards, fsyncs them together
(:func:`fsync_files`), and renames them only after the manifest commits. Single files
(``corpus.json``) and folder fsyncs go through :mod:`durable`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_str
from pathlib import Path

import zstandard

from trainer.errors import ShardCorrupt

LEVEL = 3
"""zstd level: ~380 MB/s on one core and 4.1x on source code (level 1: 470 MB/s, 3.9x)."""
SUFFIX = ".jsonl.zst"
_LOCAL = threading.local()  # one reused zstd context per thread (a context is not thread-safe)
_DECOMPRESSOR = zstandard.ZstdDecompressor()


TARGET_SHARD_BYTES = 128 * 1024
"""A split gets more shards once its records exceed this many bytes per shard (see
:func:`shard_count`): an update rewrites ~one shard per changed file, so this bounds its cost."""
MAX_SHARDS = 1 << 16


def shard_count(minimum: int, split_bytes: int) -> int:
    """Shards of a split holding ``split_bytes`` of records: ``minimum`` doubled until each
    shard holds at most :data:`TARGET_SHARD_BYTES` on average.

    A pure function of the corpus state (so an incremental update and a full build agree);
    a power-of-two multiple, so a change of count splits (or merges) shards in halves.
    """
    n = max(1, minimum)
    while split_bytes > n * TARGET_SHARD_BYTES and n < MAX_SHARDS:
        n *= 2
    return n


def shard_name(split: str, index: int) -> str:
    """``train-03``: the file name without suffix, used as the manifest key."""
    return f"{split}-{index:02d}"


def encode(text: str, path: str, repo: str, lang: str, sha: str) -> bytes:
    """One JSON line (with its newline) for a record: exactly ``json.dumps`` of the dict
    (``ensure_ascii=False``), built from the C string encoder without the generic walk. A scan
    worker encodes each file's line, so the updating process only joins bytes."""
    q = _json_str
    return (f'{{"text": {q(text)}, "path": {q(path)}, "repo": {q(repo)}, "lang": {q(lang)}, '
            f'"sha": {q(sha)}}}\n').encode()


def compress(lines: Iterable[bytes]) -> bytes:
    """The shard file's bytes for these lines."""
    ctx = getattr(_LOCAL, "compressor", None)
    if ctx is None:
        ctx = _LOCAL.compressor = zstandard.ZstdCompressor(level=LEVEL)
    return ctx.compress(b"".join(lines))


@dataclass(frozen=True)
class Staged:
    """One shard :func:`stage_all` handled: its checksum and size, and the temp file holding
    it (None when its bytes equal the shard's current ones, so nothing was written)."""

    sha256: str
    nbytes: int
    tmp: Path | None


StageJob = tuple[str, list[bytes] | None, str | None]
"""``(final file name, the shard's lines or None for no records, its current checksum or None)``."""


def stage_all(folder: Path, jobs: Iterable[StageJob], tag: str, threads: int) -> Iterator[Staged | None]:
    """For each job, in order: compress its lines, checksum them and, unless they equal the
    current shard, write them to a hidden temp file (not fsynced: see :func:`fsync_files`);
    None for a job without lines. Runs on up to ``threads`` threads, which zstd, hashing and
    file writes all let run beside the calling thread's encoding of the next shards (creating
    a file costs 0.1-1 ms on a busy disk, a thousand shards a second or more). At most
    ``2 x threads`` shards are held at once. Close the iterator (``contextlib.closing``) before
    removing temp files after an error: a thread may still be writing one until then."""

    def one(job: StageJob) -> Staged:
        final, lines, current = job
        data = compress(lines or ())
        digest = checksum(data)
        if digest == current:
            return Staged(digest, len(data), None)
        return Staged(digest, len(data), write_temp(folder, final, data, tag, sync=False))

    if threads <= 1:
        yield from (None if job[1] is None else one(job) for job in jobs)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="shard-stage") as pool:
        queued: deque = deque()
        try:
            for job in jobs:
                queued.append(None if job[1] is None else pool.submit(one, job))
                while len(queued) > 2 * threads:
                    done = queued.popleft()
                    yield None if done is None else done.result()
            while queued:
                done = queued.popleft()
                yield None if done is None else done.result()
        finally:
            for job in queued:
                if job is not None:
                    job.cancel()


def decompress_lines(data: bytes, where: str) -> list[bytes]:
    """The JSON lines (each with its newline) of a shard's bytes; ShardCorrupt if unreadable."""
    try:
        raw = _DECOMPRESSOR.decompress(data)
    except zstandard.ZstdError as exc:
        raise ShardCorrupt(f"shard {where} cannot be decompressed ({exc}); rebuild the corpus "
                           "with `repotune corpus update NAME --full`") from exc
    return raw.splitlines(keepends=True)


def checksum(data: bytes) -> str:
    """sha256 hex of a shard file's bytes, as stored in the manifest."""
    return hashlib.sha256(data).hexdigest()


def write_temp(folder: Path, final_name: str, data: bytes, tag: str, sync: bool = True) -> Path:
    """Write ``data`` to a hidden temp file next to ``final_name`` and fsync it (unless the
    caller makes many files durable at once with :func:`fsync_files`)."""
    tmp = folder / f".{final_name}.{tag}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def fsync_files(paths: list[Path]) -> None:
    """Make many written files durable: concurrent fsyncs share the filesystem's journal
    commits (unlike one ``os.sync()``, this never waits for other programs' dirty data)."""

    def one(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if len(paths) <= 2:
        for p in paths:
            one(p)
        return
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        list(pool.map(one, paths))


def read_records(paths: Iterable[str | os.PathLike[str]]) -> Iterator[dict]:
    """Yield the records of the given shard files, in file order then line order."""
    for p in paths:
        data = Path(p).read_bytes()
        for line in decompress_lines(data, str(p)):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ShardCorrupt(f"shard {p} holds a line that is not JSON ({exc}); rebuild with "
                                   "`repotune corpus update NAME --full`") from exc
