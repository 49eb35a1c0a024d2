"""A small fork-based process pool for the per-file work of a large update.

Why not :mod:`multiprocessing`: its workers inherit every file descriptor of the updating
process, among them the corpus lock (an ``flock`` lives as long as any copy of its descriptor)
and the manifest's sqlite file; and a ``Pool`` worker whose parent is SIGKILLed waits forever
on a queue it holds both ends of. A leftover worker would then hold the corpus lock and block
every later update. Spawned interpreters would avoid that, but importing the corpus package
costs ~0.25 s CPU per worker, a fifth of the scan it is meant to share.

So each worker here is a plain ``os.fork()`` of the updating process (the code is already
imported and the spec already in memory) that at once closes every descriptor but its two
pipes, then loops: read a framed request, run the function, write a framed reply. It leaves
when its request pipe reaches end of file, which happens when the parent closes it or dies in
any way (the parent holds the only write end), and exits without running the parent's atexit
handlers or flushing its buffers (``os._exit``). The parent keeps up to two requests in flight
per worker over non-blocking pipes and yields the results in submission order, so callers see
exactly what an in-process ``map`` would give. Linux/POSIX only, like the corpus lock itself.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import struct
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from trainer.errors import CorpusError

MIN_BYTES = 2_000_000
"""An update reads at least this many bytes of blobs before it starts workers: below that (a
push of a few files) the scan takes milliseconds and stays in the updating process."""
MIN_SHARDS_THREADED = 32
"""An update that writes at least this many shards compresses and writes them on ``workers`` threads
(:func:`trainer.corpus.shards.stage_all`); a small update's few shards stay on one."""
CHUNK_FILES = 64
CHUNK_BYTES = 256 * 1024
"""A request holds up to this many files and bytes: enough to amortise the pickling and the
batched signatures (:func:`trainer.corpus.dedupe.signatures`), small enough to stay in cache."""
IN_FLIGHT = 2
"""Requests queued per worker: one being worked on, one waiting, so a worker never idles
while the parent reads its last reply."""
_HEADER = struct.Struct("<Q")
_READ = 1 << 20


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Worker:
    """The parent's end of one worker: its pid, pipes, and the requests it holds."""

    pid: int
    send_fd: int
    recv_fd: int
    outbox: bytearray = field(default_factory=bytearray)
    inbox: bytearray = field(default_factory=bytearray)
    waiting: deque[int] = field(default_factory=deque)
    """Sequence numbers of the requests sent (or queued in ``outbox``) and not yet answered."""


def _frame(obj: object) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file (the parent closed the pipe)."""
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, _READ))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _serve(fn: Callable, recv_fd: int, send_fd: int) -> None:
    """The worker's loop: requests in, ``(ok, result or traceback)`` out, until end of file."""
    while (head := _read_exact(recv_fd, _HEADER.size)) is not None:
        body = _read_exact(recv_fd, _HEADER.unpack(head)[0])
        if body is None:
            return
        try:
            reply = (True, fn(pickle.loads(body)))
        except Exception:  # sent to the parent, which raises it as a CorpusError
            reply = (False, traceback.format_exc())
        data = memoryview(_frame(reply))
        while data:
            data = data[os.write(send_fd, data):]


def _child(fn: Callable, recv_fd: int, send_fd: int) -> None:
    """Run in the forked worker: keep only the two pipes (and stderr), serve, exit."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the worker with its parent
        keep = sorted({recv_fd, send_fd})
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.closerange(3, keep[0])
        for a, b in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(a + 1, b)
        _serve(fn, recv_fd, send_fd)
    except BrokenPipeError:  # the parent went away mid-reply
        code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


class Pool:
    """``workers`` forked processes running ``fn``; use as a context manager, then :meth:`map`.

    Leaving the ``with`` block closes the request pipes (the workers exit) and reaps them; on
    an exception (Ctrl-C included) the workers are killed first, so none outlives the update.
    """

    def __init__(self, fn: Callable, workers: int) -> None:
        self.fn = fn
        self.size = workers
        self.workers: list[_Worker] = []

    def __enter__(self) -> Pool:
        try:
            for _ in range(self.size):
                self.workers.append(self._fork())
        except BaseException:
            self.close(kill=True)
            raise
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(kill=kind is not None)

    def _fork(self) -> _Worker:
        to_child, from_parent = os.pipe()[::-1]  # (write end for the parent, read end for the child)
        from_child, to_parent = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            _child(self.fn, from_parent, to_parent)
        os.close(from_parent)
        os.close(to_parent)
        os.set_blocking(to_child, False)
        os.set_blocking(from_child, False)
        return _Worker(pid, to_child, from_child)

    def close(self, kill: bool = False) -> None:
        """Close every pipe (workers exit at end of file) and reap; ``kill``: SIGKILL first."""
        for w in self.workers:
            if kill:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for fd in (w.send_fd, w.recv_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for w in self.workers:
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
        self.workers = []

    def map(self, items: Iterable[object]) -> Iterator[object]:
        """``fn(item)`` for each item, in order, computed by the workers."""
        todo = iter(items)
        sent = answered = 0
        done: dict[int, object] = {}
        exhausted = False
        with selectors.DefaultSelector() as sel:
            while True:
                for w in self.workers:  # top every worker up to IN_FLIGHT requests
                    while not exhausted and len(w.waiting) < IN_FLIGHT:
                        item = next(todo, _END)
                        if item is _END:
                            exhausted = True
                            break
                        w.outbox += _frame(item)
                        w.waiting.append(sent)
                        sent += 1
                while answered in done:
                    yield done.pop(answered)
                    answered += 1
                if exhausted and answered == sent:
                    return
                self._pump(sel, done)

    def _pump(self, sel: selectors.BaseSelector, done: dict[int, object]) -> None:
        """Wait until some pipe is ready, then write what it takes and read what it has."""
        for w in self.workers:
            events = (selectors.EVENT_WRITE if w.outbox else 0) | (selectors.EVENT_READ if w.waiting else 0)
            for fd, ev in ((w.send_fd, events & selectors.EVENT_WRITE), (w.recv_fd, events & selectors.EVENT_READ)):
                key = sel.get_map().get(fd)
                if ev and key is None:
                    sel.register(fd, ev, w)
                elif not ev and key is not None:
                    sel.unregister(fd)
        for key, ev in sel.select():
            w = key.data
            if ev & selectors.EVENT_WRITE:
                try:
                    n = os.write(w.send_fd, w.outbox[:_READ])
                except BrokenPipeError:
                    self._lost(w)
                del w.outbox[:n]
            if ev & selectors.EVENT_READ:
                self._receive(w, done)

    def _receive(self, w: _Worker, done: dict[int, object]) -> None:
        """Read what ``w`` sent; file each complete reply under its request's number."""
        chunk = os.read(w.recv_fd, _READ)
        if not chunk:
            self._lost(w)
        w.inbox += chunk
        while len(w.inbox) >= _HEADER.size:
            size = _HEADER.unpack_from(w.inbox)[0]
            if len(w.inbox) < _HEADER.size + size:
                return
            ok, value = pickle.loads(w.inbox[_HEADER.size:_HEADER.size + size])
            del w.inbox[:_HEADER.size + size]
            if not ok:
                raise CorpusError(f"a corpus scan worker failed:\n{value}Run the update again with "
                                  "workers=1 to see the error in the updating process.")
            done[w.waiting.popleft()] = value

    @staticmethod
    def _lost(w: _Worker) -> None:
        """A worker's pipe closed while it owed replies: say so (close() reaps it)."""
        raise CorpusError(f"a corpus scan worker (pid {w.pid}) exited with {len(w.waiting)} request(s) "
                          "unanswered; run the update again, with workers=1 to scan in one process")


_END = object()
