"""Reading trees and blobs straight from a bare repository, in bulk.

``ls-tree``/``diff-tree`` run once per update with ``-z`` output; blobs stream through one
``git cat-file --batch`` process (ids written by a thread so the pipe never deadlocks).
"""

from __future__ import annotations

import functools
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer.corpus.mirror import _git_env, git

ZERO = "0" * 40


@dataclass(frozen=True)
class Entry:
    """One path in a tree."""

    path: str
    mode: str
    blob: str
    size: int | None = None
    """Blob size in bytes when the listing gave it (``ls-tree -l``); None otherwise."""


@dataclass(frozen=True)
class Change:
    """One path changed between two trees; ``new`` is None for a deletion."""

    path: str
    new: Entry | None


def ls_tree(repo: Path, commit: str) -> list[Entry]:
    """Every path (recursively) in ``commit``'s tree, with blob sizes (no separate size query)."""
    out = git(repo, "ls-tree", "-r", "-z", "-l", "--full-tree", commit)
    entries = []
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, _, path = rec.partition(b"\t")
        mode, _type, sha, size = meta.decode().split()
        entries.append(Entry(path.decode("utf-8", "surrogateescape"), mode, sha,
                             int(size) if size != "-" else None))
    return entries


def diff_trees(repo: Path, old: str, new: str) -> list[Change]:
    """Paths that differ between two commits (any two; ancestry is not needed).

    Renames are reported as delete + add (``--no-renames``), and a type change (file <->
    symlink) as a modification of mode; both are exactly what the manifest needs.
    """
    out = git(repo, "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", old, new)
    parts = out.split(b"\0")
    changes: list[Change] = []
    i = 0
    while i + 1 < len(parts):
        meta = parts[i].decode()
        if not meta.startswith(":"):
            i += 1
            continue
        path = parts[i + 1].decode("utf-8", "surrogateescape")
        _old_mode, new_mode, _old_sha, new_sha, status = meta[1:].split(" ")
        if status == "D":
            changes.append(Change(path, None))
        else:
            changes.append(Change(path, Entry(path, new_mode, new_sha)))
        i += 2
    return changes


def blob_sizes(repo: Path, blobs: Iterable[str]) -> dict[str, int]:
    """Sizes of blobs without reading them (``cat-file --batch-check``)."""
    ids = list(dict.fromkeys(blobs))
    if not ids:
        return {}
    out = git(repo, "cat-file", "--batch-check=%(objectname) %(objectsize)",
              input=("\n".join(ids) + "\n").encode())
    sizes = {}
    for line in out.decode().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sizes[parts[0]] = int(parts[1])
    return sizes


def read_blobs_upto(repo: Path, blobs: Iterable[str], max_bytes: int) -> Iterator[tuple[str, int, bytes | None]]:
    """Stream ``(blob id, size, content)`` for each id, in order, through one ``cat-file
    --batch-command`` process: sizes first, then the contents of blobs of at most ``max_bytes``
    (content None for larger ones: never read)."""
    ids = list(blobs)
    if not ids:
        return
    if not _has_batch_command():  # git < 2.36: a size query, then the small blobs
        sizes = blob_sizes(repo, ids)
        small = iter(read_blobs(repo, [b for b in ids if sizes.get(b, 0) <= max_bytes]))
        for b in ids:
            n = sizes.get(b, 0)
            yield (b, n, None) if n > max_bytes else (b, n, next(small)[1])
        return
    proc = subprocess.Popen(["git", f"--git-dir={repo}", "cat-file", "--batch-command", "--buffer"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=_git_env(None), bufsize=1 << 20)
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout
    try:
        writer = _feed(proc, "".join(f"info {b}\n" for b in ids) + "flush\n", close=False)
        sizes = []
        for _ in ids:
            header = out.readline().split()
            if len(header) != 3:
                raise OSError(f"git cat-file: unexpected reply {header!r}")
            sizes.append(int(header[2]))
        writer.join()
        small = [b for b, n in zip(ids, sizes, strict=True) if n <= max_bytes]
        writer = _feed(proc, "".join(f"contents {b}\n" for b in small), close=True)
        for b, n in zip(ids, sizes, strict=True):
            if n > max_bytes:
                yield b, n, None
                continue
            header = out.readline().split()
            if len(header) != 3 or header[0].decode() != b:
                raise OSError(f"git cat-file: unexpected reply {header!r}")
            data = out.read(n)
            out.read(1)
            yield b, n, data
        writer.join()
    finally:
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.stdout.close()
        proc.wait()


@functools.lru_cache(maxsize=1)
def _has_batch_command() -> bool:
    """Whether this git has ``cat-file --batch-command`` (2.36+)."""
    out = subprocess.run(["git", "version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (2, 36)


def _feed(proc: subprocess.Popen, text: str, close: bool) -> threading.Thread:
    """Write ``text`` to the child's stdin from a thread (so the pipes never deadlock)."""

    def run() -> None:
        try:
            proc.stdin.write(text.encode())
            if close:
                proc.stdin.close()
            else:
                proc.stdin.flush()
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_blobs(repo: Path, blobs: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """Stream ``(blob id, content)`` for each id, in order, through one cat-file process."""
    ids = list(blobs)
    if not ids:
        return
    # --buffer: git writes its output in large blocks instead of flushing after every object
    # (fewer pipe round trips; it matters when git and Python share one core).
    proc = subprocess.Popen(["git", f"--git-dir={repo}", "cat-file", "--batch", "--buffer"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=_git_env(None), bufsize=1 << 20)
    assert proc.stdin is not None and proc.stdout is not None

    def feed() -> None:
        try:
            proc.stdin.write(("\n".join(ids) + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = proc.stdout
    try:
        for _ in ids:
            header = out.readline().split()
            if len(header) != 3:
                raise OSError(f"git cat-file: unexpected reply {header!r}")
            size = int(header[2])
            data = out.read(size)
            out.read(1)
            yield header[0].decode(), data
    finally:
        writer.join()
        proc.stdout.close()
        proc.wait()
