"""Completion telemetry: what the proxy served and what editors did with it.

Two append-only JSON-lines streams under the telemetry folder (in RepoTune's home):

- ``completions-YYYY-MM-DD[.N].jsonl`` — one line per served completion: ``id``, ``time``,
  ``model``, ``version``, ``language``, ``route``, ``choices``, ``prompt_tokens`` (what the model
  read, suffix and sentinels included), ``suffix_tokens`` (the request's suffix; 0 when the
  family ignored it), ``completion_chars`` (per choice), ``latency_ms`` and ``client`` (a salted
  hash of the API key or session). The code itself (``prompt``, ``suffix``, ``texts``) only when
  ``store_code`` is on.
- ``events-YYYY-MM-DD[.N].jsonl`` — one line per accepted editor event (Tabby's view / select /
  dismiss, or the plain feedback endpoint), enriched with the completion's model, version,
  language and client, so :mod:`serving.acceptance` needs nothing else.

Why a background thread: a completion must never wait on a disk. The request path only builds a
dict and puts it on a bounded queue (:meth:`TelemetryWriter.submit`); a full queue drops the
record and counts it. The writer thread appends, flushes and fsyncs once per batch, starts a new
file past ``max_file_bytes`` (``.1``, ``.2`` …) and deletes files older than ``retention_days``.
A crash can lose the last batch or leave a torn last line, which readers skip.

Events are checked against :class:`ServedIndex`, the completions served by this proxy within
the retention window (rebuilt from the completion files at start): an unknown id is a 404, the
same event twice a 409, and either changes nothing.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import difflib
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.completions import ApiError

log = logging.getLogger(__name__)

COMPLETIONS = "completions"
"""Stream (file prefix) of served completions."""
EVENTS = "events"
"""Stream (file prefix) of editor events."""
RETENTION_DAYS = 30
"""Days a telemetry file is kept (by its date) before the writer deletes it."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Size at which the writer starts the day's next file."""
QUEUE_SIZE = 10_000
"""Records waiting for the writer; one more is dropped (and counted), never waited for."""
INDEX_WINDOW_S = 24 * 3600
"""How long a served completion accepts events (seconds): older ids are unknown (404)."""
INDEX_MAX = 200_000
"""Most completions remembered for events (oldest forgotten first)."""
EVENT_FIELDS = ("type", "completion_id", "choice_index", "select_kind", "view_id", "elapsed")
"""The fields of a Tabby event that are kept: whatever else a client sends (it may be code) is not."""
MAX_KEPT_CHARS = 100_000
"""Longest ``text`` a feedback may send (the comparison with the completion is quadratic)."""

_FILE = re.compile(r"^(?P<stream>[a-z]+)-(?P<day>\d{4}-\d{2}-\d{2})(?:\.(?P<part>\d+))?\.jsonl$")


def load_salt(path: str | Path) -> bytes:
    """The secret salt of client hashes, created (32 random bytes, hex, mode 0600) if missing.

    Kept in a file so hashes stay comparable across restarts, and secret so a hash cannot be
    reversed by trying the few API keys a company has."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip().encode()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_text(encoding="ascii").strip().encode()


def client_hash(salt: bytes, credential: str) -> str:
    """A short keyed hash of an API key or session identifier (never the value itself)."""
    return hmac.new(salt, credential.encode(), hashlib.sha256).hexdigest()[:16]


def telemetry_files(folder: str | Path, stream: str, since: float | None = None) -> list[Path]:
    """The files of ``stream`` in ``folder``, oldest first; only days on or after ``since``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    first = _day(since) if since is not None else ""
    found = []
    for path in folder.iterdir():
        m = _FILE.match(path.name)
        if m and m["stream"] == stream and m["day"] >= first:
            found.append((m["day"], int(m["part"] or 0), path))
    return [p for _, _, p in sorted(found)]


def read_lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """The JSON objects of ``paths``; a torn or foreign line (a crash mid-write) is skipped."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def _day(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d")


class TelemetryWriter:
    """Appends records to the day's file of their stream from one background thread."""

    def __init__(self, folder: str | Path, *, max_file_bytes: int = MAX_FILE_BYTES,
                 retention_days: int = RETENTION_DAYS, queue_size: int = QUEUE_SIZE,
                 on_drop: Callable[[], None] = lambda: None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = max_file_bytes
        self.retention_days = retention_days
        self.dropped = 0
        self._on_drop = on_drop
        self._queue: queue.Queue[tuple[str, dict[str, Any], Callable[[], dict[str, Any]] | None] | None] = \
            queue.Queue(maxsize=queue_size)
        self._parts: dict[tuple[str, str], int] = {}
        self._swept = ""
        self._thread = threading.Thread(target=self._run, name="repotune-telemetry", daemon=True)
        self._thread.start()

    def submit(self, stream: str, record: dict[str, Any],
               later: Callable[[], dict[str, Any]] | None = None) -> bool:
        """Queue ``record`` (``later()``'s keys are merged in on the writer thread: work such as
        tokenizing that the request should not wait for). False when the queue was full."""
        try:
            self._queue.put_nowait((stream, record, later))
            return True
        except queue.Full:
            self.dropped += 1
            self._on_drop()
            return False

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is on disk (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([b for b in batch if b is not None])
            except Exception:  # a full disk must not kill the thread: log, drop the batch, go on
                log.exception("telemetry: could not write %d records to %s", len(batch), self.folder)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if any(b is None for b in batch):
                return

    def _write(self, batch: list[tuple[str, dict[str, Any], Callable[[], dict[str, Any]] | None]]) -> None:
        lines: dict[str, list[str]] = {}
        for stream, record, later in batch:
            if later is not None:
                try:
                    record = {**record, **later()}
                except Exception as exc:  # a derived figure is not worth losing the record
                    log.warning("telemetry: %s", exc)
            lines.setdefault(stream, []).append(json.dumps(record, sort_keys=True, default=str) + "\n")
        now = time.time()
        for stream, chunk in lines.items():
            path = self._path(stream, _day(now))
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(chunk))
                f.flush()
                os.fsync(f.fileno())
        self._sweep(now)

    def _path(self, stream: str, day: str) -> Path:
        key = (stream, day)
        if key not in self._parts:  # first write of the day (or after a restart): the last part
            parts = [int(m["part"] or 0) for p in self.folder.iterdir()
                     if (m := _FILE.match(p.name)) and m["stream"] == stream and m["day"] == day]
            self._parts[key] = max(parts, default=0)
        path = self._name(stream, day, self._parts[key])
        if path.exists() and path.stat().st_size >= self.max_file_bytes:
            self._parts[key] += 1
            path = self._name(stream, day, self._parts[key])
        return path

    def _name(self, stream: str, day: str, part: int) -> Path:
        return self.folder / (f"{stream}-{day}.jsonl" if part == 0 else f"{stream}-{day}.{part}.jsonl")

    def _sweep(self, now: float) -> None:
        """Delete files whose day is older than the retention (once per day)."""
        today = _day(now)
        if self._swept == today:
            return
        self._swept = today
        oldest = _day(now - self.retention_days * 86400)
        for path in self.folder.iterdir():
            m = _FILE.match(path.name)
            if m and m["day"] < oldest:
                path.unlink(missing_ok=True)
        self._parts = {k: v for k, v in self._parts.items() if k[1] == today}


@dataclass
class Served:
    """A completion the proxy served, as events need it."""

    time: float
    model: str
    version: int
    language: str
    client: str
    choices: int
    chars: tuple[int, ...] = ()
    """Characters of each choice."""
    texts: tuple[str, ...] | None = None
    """The choices' texts (kept in memory only, to measure what a feedback kept)."""
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    """Event keys already recorded (a second one is a replay)."""


class ServedIndex:
    """Completion ids served within ``window_s`` (at most ``max_entries``), oldest first."""

    def __init__(self, window_s: float = INDEX_WINDOW_S, max_entries: int = INDEX_MAX) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, cid: str, served: Served) -> None:
        with self._lock:
            self._items[cid] = served
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def get(self, cid: str, now: float) -> Served | None:
        with self._lock:
            while self._items:
                first = next(iter(self._items.values()))
                if now - first.time <= self.window_s:
                    break
                self._items.popitem(last=False)
            served = self._items.get(cid)
        return served if served is not None and now - served.time <= self.window_s else None

    def mark(self, served: Served, key: tuple[Any, ...]) -> bool:
        """Record ``key`` as seen; False when it already was (a replay)."""
        with self._lock:
            if key in served.seen:
                return False
            served.seen.add(key)
            return True

    def load(self, folder: str | Path, now: float) -> int:
        """Remember the completions (and the events seen) in ``folder``'s files of the window."""
        since = now - self.window_s
        n = 0
        for rec in read_lines(telemetry_files(folder, COMPLETIONS, since)):
            if isinstance(rec.get("id"), str) and float(rec.get("time", 0)) >= since:
                texts = rec.get("texts")
                self.add(rec["id"], Served(float(rec["time"]), str(rec.get("model", "")), int(rec.get("version", 0)),
                                           str(rec.get("language", "unknown")), str(rec.get("client", "")),
                                           int(rec.get("choices", 1)), tuple(rec.get("completion_chars") or ()),
                                           tuple(texts) if isinstance(texts, list) else None))
                n += 1
        for ev in read_lines(telemetry_files(folder, EVENTS, since)):
            served = self._items.get(str(ev.get("completion_id")))
            if served is not None and isinstance(ev.get("key"), list):
                served.seen.add(tuple(ev["key"]))
        return n


def kept_chars(completion: str, kept: str) -> int:
    """Characters of ``completion`` still present, in order, in the text the user kept."""
    matcher = difflib.SequenceMatcher(None, completion, kept, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


@dataclass(frozen=True)
class TelemetryHooks:
    """Where telemetry reports counts (the proxy wires Prometheus series here)."""

    served: Callable[[str, str, int], None] = lambda version, language, chars: None
    """A completion was recorded: its version, language and total characters."""
    event: Callable[[str], None] = lambda kind: None
    """An event was accepted: view, select, dismiss, accepted or rejected (feedback)."""
    rejected: Callable[[str], None] = lambda reason: None
    """An event was refused: unknown, replay or malformed."""
    dropped: Callable[[], None] = lambda: None
    """A record was dropped because the writer's queue was full."""


class Telemetry:
    """The proxy's telemetry: records completions and checks and records events."""

    def __init__(self, folder: str | Path, salt: bytes, *, store_code: bool = False,
                 hooks: TelemetryHooks | None = None, window_s: float = INDEX_WINDOW_S,
                 retention_days: int = RETENTION_DAYS, max_file_bytes: int = MAX_FILE_BYTES,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.folder = Path(folder)
        self.salt = salt
        self.store_code = store_code
        self.hooks = hooks or TelemetryHooks()
        self.index = ServedIndex(window_s)
        self.index.load(self.folder, time.time())
        self.writer = TelemetryWriter(self.folder, max_file_bytes=max_file_bytes, retention_days=retention_days,
                                      queue_size=queue_size, on_drop=self.hooks.dropped)
        atexit.register(self.writer.flush, 2.0)  # a clean exit writes what is queued

    def client(self, credential: str) -> str:
        return client_hash(self.salt, credential) if credential else ""

    def completion(self, *, cid: str, model: str, version: int, language: str, route: str, client: str,
                   prompt_tokens: int, texts: list[str], latency_s: float, suffix: str = "",
                   prompt: str = "", count_suffix: Callable[[str], int] | None = None) -> None:
        """Record one served completion (the request path: a dict and a queue put)."""
        now = time.time()
        chars = [len(t) for t in texts]
        record: dict[str, Any] = {"id": cid, "time": now, "model": model, "version": version,
                                  "language": language, "route": route, "client": client,
                                  "choices": len(texts), "prompt_tokens": prompt_tokens,
                                  "completion_chars": chars, "latency_ms": round(latency_s * 1000, 3)}
        if self.store_code:
            record.update(prompt=prompt, suffix=suffix, texts=list(texts))
        self.index.add(cid, Served(now, model, version, language, client, len(texts), tuple(chars), tuple(texts)))
        later = None
        if suffix and count_suffix is not None:
            later = lambda: {"suffix_tokens": count_suffix(suffix)}  # noqa: E731 - tokenized off the request path
        else:
            record["suffix_tokens"] = 0
        self.writer.submit(COMPLETIONS, record, later)
        self.hooks.served(str(version), language, sum(chars))

    def event(self, event: Mapping[str, Any], client: str = "") -> dict[str, Any]:
        """Record a validated Tabby event; 404 for an unknown completion, 409 for a replay.

        Events without a completion (Tabby's ``completion``/``chat_completion`` kinds) are
        stored as they are."""
        event = {k: event[k] for k in EVENT_FIELDS if k in event}
        if "completion_id" not in event:
            record = {**event, "time": time.time(), "client": client}
            self.writer.submit(EVENTS, record)
            self.hooks.event(str(event.get("type")))
            return record
        key = (event["completion_id"], event["choice_index"], event["type"],
               str(event.get("select_kind") or ""), str(event.get("view_id") or ""))
        served = self._served(event["completion_id"], event["choice_index"])
        return self._record(served, key, event, event["type"])

    def feedback(self, cid: str, body: Any, client: str = "") -> dict[str, Any]:
        """``POST /v1/completions/<id>/feedback``: ``{"accepted": bool, "choice_index"?: int,
        "text"?: str}`` where ``text`` is what the user kept after editing (measured against the
        completion, never stored unless ``store_code``)."""
        if not isinstance(body, dict):
            self.hooks.rejected("malformed")
            raise ApiError(400, "the feedback must be a JSON object like {\"accepted\": true}")
        accepted, index, kept = body.get("accepted"), body.get("choice_index", 0), body.get("text")
        problem = ("accepted must be true or false" if not isinstance(accepted, bool) else
                   "choice_index must be a non-negative integer"
                   if isinstance(index, bool) or not isinstance(index, int) or index < 0 else
                   "text must be a string (what was kept of the completion)"
                   if kept is not None and not isinstance(kept, str) else
                   f"text may be at most {MAX_KEPT_CHARS} characters: send the lines around the completion"
                   if kept is not None and len(kept) > MAX_KEPT_CHARS else None)
        if problem:
            self.hooks.rejected("malformed")
            raise ApiError(400, problem, param=problem.split(" ", 1)[0])
        served = self._served(cid, index)
        record: dict[str, Any] = {"type": "feedback", "completion_id": cid, "choice_index": index,
                                  "accepted": accepted}
        if kept is not None and accepted:
            text = served.texts[index] if served.texts and index < len(served.texts) else None
            record["kept_chars"] = kept_chars(text, kept) if text is not None else None
            if self.store_code:
                record["kept_text"] = kept
        return self._record(served, (cid, index, "feedback"), record, "accepted" if accepted else "rejected")

    def _served(self, cid: str, index: int) -> Served:
        served = self.index.get(cid, time.time())
        if served is None:
            self.hooks.rejected("unknown")
            raise ApiError(404, f"completion {cid!r} was not served by this proxy in the last "
                                f"{self.index.window_s / 3600:g} h; send events for completions it served",
                           param="completion_id", code="unknown_completion")
        if index >= served.choices:
            self.hooks.rejected("malformed")
            raise ApiError(400, f"choice_index {index} is out of range: completion {cid} had "
                                f"{served.choices} choice(s)", param="choice_index")
        return served

    def _record(self, served: Served, key: tuple[Any, ...], record: dict[str, Any], kind: str) -> dict[str, Any]:
        if not self.index.mark(served, key):
            self.hooks.rejected("replay")
            raise ApiError(409, f"this event was already recorded for completion {key[0]} (a replay); "
                                "it changed nothing", code="duplicate_event")
        record = {**record, "time": time.time(), "model": served.model, "version": served.version,
                  "language": served.language, "client": served.client, "key": list(key),
                  "completion_chars": served.chars[key[1]] if key[1] < len(served.chars) else None}
        self.writer.submit(EVENTS, record)
        self.hooks.event(kind)
        return record

    def close(self) -> None:
        self.writer.close()
