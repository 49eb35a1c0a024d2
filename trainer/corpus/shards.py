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
    (``ensure_ascii=False``), built from the C string encoder without the generic walk."""
    return encode_quoted(quote(text), path, repo, lang, sha)


def quote(text: str) -> bytes:
    """``text`` as a JSON string literal, UTF-8: the costly part of :func:`encode`, which a
    scan worker does so the updating process only joins bytes."""
    return _json_str(text).encode()


def encode_quoted(quoted: bytes, path: str, repo: str, lang: str, sha: str) -> bytes:
    """:func:`encode` of the text whose :func:`quote` is ``quoted`` (the same bytes)."""
    q = _json_str
    return (b'{"text": ' + quoted
            + f', "path": {q(path)}, "repo": {q(repo)}, "lang": {q(lang)}, "sha": {q(sha)}}}\n'.encode())


def compress(lines: Iterable[bytes]) -> bytes:
    """The shard file's bytes for these lines."""
    ctx = getattr(_LOCAL, "compressor", None)
    if ctx is None:
        ctx = _LOCAL.compressor = zstandard.ZstdCompressor(level=LEVEL)
    return ctx.compress(b"".join(lines))


def compress_all(shard_lines: Iterable[list[bytes] | None], threads: int) -> Iterator[bytes | None]:
    """:func:`compress` of each shard's lines (None stays None), in order, on up to ``threads``
    threads: zstd releases the GIL, so a full build's compression overlaps the encoding of the
    next shards in the calling thread. At most ``2 x threads`` shards are held at once."""
    if threads <= 1:
        yield from (None if lines is None else compress(lines) for lines in shard_lines)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="shard-zstd") as pool:
        queued: deque = deque()
        for lines in shard_lines:
            queued.append(None if lines is None else pool.submit(compress, lines))
            while len(queued) > 2 * threads:
                job = queued.popleft()
                yield None if job is None else job.result()
        while queued:
            job = queued.popleft()
            yield None if job is None else job.result()


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
