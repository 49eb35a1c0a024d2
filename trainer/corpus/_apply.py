"""One corpus update inside its open manifest transaction, as a sequence of named phases.

:class:`CorpusUpdate` holds what the phases share (the connection, the rows in memory, the
snapshot of where each touched path was before) and :meth:`CorpusUpdate.run` calls them in
order: classify the changed paths → scan their blobs → index band keys and shards → write the
rows → pin held-out files → dedupe → resize the splits → choose the shards to rewrite → plan
their members → stage the new shard files → record the commit. Nothing here commits the
files: :func:`trainer.corpus.update._update_locked` renames the staged shards after COMMIT.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from durable import fsync_dir
from trainer.corpus import _pool, dedupe, filters, gitobjects, manifest, shards, split
from trainer.corpus._rows import Blob, Rows, bands, cross_repo, dup_status, process, process_many
from trainer.corpus.spec import CorpusResult, CorpusSpec
from trainer.errors import ShardCorrupt

SPLITS = ("train", "heldout")
Pending = list[tuple[str | None, str]]
"""Planned renames ``(temp name or None for a deletion, final shard file name)``."""


@dataclass
class CorpusUpdate:
    """The state one update's phases share; build it, then call :meth:`run` once."""

    spec: CorpusSpec
    home: Path
    cdir: Path
    repo: Path
    conn: sqlite3.Connection
    """The manifest, with ``BEGIN IMMEDIATE`` already issued."""
    commit: str
    old_commit: str | None
    version: int
    full: bool
    changes: list[gitobjects.Change]
    rules: list[filters.AttrRule]
    report: Callable[[dict], None]
    hook: Callable[[str], None]
    """Called at crash-relevant points (``staged``, ``before-commit``); tests SIGKILL there."""
    workers: int = 1
    """Processes for the per-file work when the update reads at least ``_pool.MIN_BYTES``."""

    # Filled by the phases, in the order run() calls them.
    old: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    """path -> (shard it sat in or None, blob) before this update, for every path it touches."""
    old_sigs: dict[str, bytes] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    """Shards per split: the last update's choice until :meth:`_resize_splits` settles it."""
    texts: dict[str, bytes] = field(default_factory=dict)
    """path -> the JSON line of its shard record (scrubbed text; ``shards.encode``)."""
    added: int = 0
    modified: int = 0
    deleted: int = 0
    new_rows: list[dict] = field(default_factory=list)
    to_read: list[tuple[str, str]] = field(default_factory=list)
    read_bytes: int = 0
    """Bytes of the blobs in ``to_read`` (a guess of 4 KB each where git gave no size)."""
    unsized: list[str] = field(default_factory=list)
    band_rows: list[tuple[int, str]] = field(default_factory=list)
    pinned_now: list[str] = field(default_factory=list)
    status_updates: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    resplit: dict[str, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
    old_shards: dict[str, str] = field(default_factory=dict)
    reusable: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    by_shard: dict[tuple[str, int], list] = field(default_factory=lambda: defaultdict(list))
    plan: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)
    pending: Pending = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sdir = self.cdir / "shards"
        self.rows = Rows(self.conn, self.full)

    def run(self) -> tuple[CorpusResult, Pending, dict]:
        """All phases in order; returns the result, the planned renames and the summary."""
        self._start()
        self._classify()
        self._scan()
        self._index()
        self._write_rows()
        self._pin_heldout()
        self._dedupe()
        self._resize_splits()
        self._choose_shards()
        self._plan()
        self._stage_shards()
        return self._record_commit(), self.pending, self.summary

    # ------------------------------------------------------------------ phases

    def _start(self) -> None:
        """Shard folder, the old locations (all of them for a full build), provisional counts."""
        conn = self.conn
        self.sdir.mkdir(parents=True, exist_ok=True)
        if self.full:
            self.old = {p: (shards.shard_name(sp, sh) if skip is None else None, blob) for p, sp, sh, skip, blob
                        in conn.execute("SELECT path, split, shard, skip, blob FROM files")}
        self.counts = {sp: int(manifest.get_meta(conn, f"shards_{sp}") or self.spec.num_shards)
                       for sp in SPLITS}
        conn.create_function("shard_of", 2, split.shard_of, deterministic=True)
        if self.full:
            conn.execute("DELETE FROM files")
            conn.execute("DELETE FROM bands")

    def _snapshot(self, path: str) -> None:
        """Remember where ``path`` was before this update (incremental: read lazily, once)."""
        if self.full or path in self.old:
            return
        r = self.conn.execute("SELECT split, shard, skip, blob, sig, eligible FROM files WHERE path=?",
                              (path,)).fetchone()
        if r is None:
            self.old[path] = (None, "")
        else:
            self.old[path] = (shards.shard_name(r[0], r[1]) if r[2] is None else None, r[3])
            if r[4] and r[5]:
                self.old_sigs[path] = r[4]

    def _classify(self) -> None:
        """A new row per added or modified path (path filters, split); deletions noted; the
        blobs still to read queued in ``to_read``."""
        spec = self.spec
        pins = {p for (p,) in self.conn.execute("SELECT path FROM pins")}
        for ch in self.changes:
            self._snapshot(ch.path)
            existed = self.old.get(ch.path, (None, ""))[1] != "" if not self.full else False
            if ch.new is None:
                self.deleted += 1
                self.rows.delete(ch.path)
                continue
            if existed:
                self.modified += 1
            else:
                self.added += 1
            e = ch.new
            heldout = split.is_heldout(spec.name, e.path, spec.heldout_fraction) or e.path in pins
            row = {"path": e.path, "blob": e.blob, "mode": e.mode, "lang": None, "bytes": 0,
                   "split": "heldout" if heldout else "train", "shard": 0, "skip": None,
                   "eligible": 0, "dup_of": None, "secrets": 0, "sig": None}
            attrs = filters.attributes(e.path, self.rules) if self.rules else {}
            row["skip"], lang = filters.path_verdict(e.path, e.mode, spec.include, spec.exclude, attrs)
            if row["skip"] is None:
                row["lang"] = lang
                if e.size is not None and e.size > spec.max_file_bytes:  # never read
                    row.update(skip="too-large", bytes=e.size)
                else:
                    self.to_read.append((e.path, e.blob))
                    self.read_bytes += e.size if e.size is not None else 4096
                    if e.size is None:  # diff-tree gives no sizes; ls-tree -l does
                        self.unsized.append(e.blob)
            self.new_rows.append(row)

    def _scan(self) -> None:
        """Read the queued blobs and run the content filters, secrets and signatures: in
        ``workers`` forked processes for a large update (:mod:`trainer.corpus._pool`), in this
        one otherwise; the results are the same and arrive in the same order either way."""
        by_path = {r["path"]: r for r in self.new_rows}
        ids = [b for _, b in self.to_read]
        if self.unsized:  # one process: sizes first, then only the blobs within max_file_bytes
            blob_iter = gitobjects.read_blobs_upto(self.repo, ids, self.spec.max_file_bytes)
        else:
            blob_iter = ((b, len(data), data) for b, data in gitobjects.read_blobs(self.repo, ids))
        sent: deque[list[str]] = deque()

        def batches() -> Iterator[list[Blob]]:
            paths, blobs, size = [], [], 0
            for (p, b), (_, nbytes, data) in zip(self.to_read, blob_iter, strict=True):
                if data is None:
                    by_path[p].update(skip="too-large", bytes=nbytes)
                    continue
                paths.append(p)
                blobs.append((data, p, by_path[p]["lang"], b))
                size += len(data)
                if len(paths) >= _pool.CHUNK_FILES or size >= _pool.CHUNK_BYTES:
                    sent.append(paths)
                    yield blobs
                    paths, blobs, size = [], [], 0
            if paths:
                sent.append(paths)
                yield blobs

        spec = self.spec
        workers = self.workers if self.read_bytes >= _pool.MIN_BYTES else 1
        with contextlib.ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(_pool.Pool(lambda blobs: process_many(blobs, spec), workers))
                results = pool.map(batches())
            else:
                results = (process_many(blobs, spec) for blobs in batches())
            self._collect(results, sent, by_path)

    def _collect(self, results: Iterator[list[dict]], sent: deque[list[str]], by_path: dict) -> None:
        """File each batch's results under its paths (``sent``, in the same order); report."""
        total, done, nbytes = len(self.to_read), 0, 0
        t0 = time.perf_counter()
        last = 0
        for fields_list in results:
            paths = sent.popleft()
            for p, fields in zip(paths, fields_list, strict=True):
                nbytes += fields["bytes"]
                line = fields.pop("line", None)
                if line is not None:
                    self.texts[p] = line
                by_path[p].update(fields)
            done += len(paths)
            if done - last >= 500:
                last = done
                dt = max(time.perf_counter() - t0, 1e-9)
                self.report({"stage": "scan", "done": done, "total": total, "files_per_s": done / dt,
                             "mb_per_s": nbytes / dt / 1e6})
        dt = max(time.perf_counter() - t0, 1e-9)
        self.report({"stage": "scan", "done": total, "total": total, "files_per_s": total / dt,
                     "mb_per_s": nbytes / dt / 1e6})

    def _index(self) -> None:
        """Band keys of the new rows, their shards, and the band rows to insert."""
        if self.full:  # a good guess of the final shard counts saves renumbering every row below
            for sp in SPLITS:
                self.counts[sp] = shards.shard_count(self.spec.num_shards, sum(
                    r["bytes"] for r in self.new_rows if r["eligible"] and r["split"] == sp))
        signed = [r for r in self.new_rows if r["eligible"] and r["sig"]]
        keys = dedupe.band_keys_many(np.frombuffer(b"".join(r["sig"] for r in signed), np.uint32))
        # Band rows in key order (cheap b-tree appends); in memory, only keys shared by 2+ files.
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        flat_sorted = flat[order]
        shared = np.flatnonzero(np.diff(flat_sorted) == 0)
        if self.full:
            # Only a file with a key another file shares can be a near-duplicate here (no
            # manifest rows to look up): the others get no key list at all, which spares
            # dedupe 16 lookups each and this phase 16 Python ints each.
            for r in signed:
                r["bands"] = []
            for i in np.unique(np.concatenate([order[shared], order[shared + 1]]) // dedupe.BANDS).tolist():
                signed[i]["bands"] = keys[i].tolist()
        else:
            for r, k in zip(signed, keys.tolist(), strict=True):
                r["bands"] = k
        for r in self.new_rows:
            r["shard"] = split.shard_of(r["path"], self.counts[r["split"]])
            self.rows.put(r, index_bands=False)
        paths = [r["path"] for r in signed]
        self.band_rows = list(zip(flat_sorted.tolist(), map(paths.__getitem__, (order // dedupe.BANDS).tolist()),
                                  strict=True))
        for i in shared.tolist():
            for k, p in self.band_rows[i:i + 2]:
                self.rows.by_band[k].add(p)

    def _write_rows(self) -> None:
        """Write rows; deletions and band index first (the transaction is still open)."""
        conn = self.conn
        if not self.full:
            conn.executemany("DELETE FROM files WHERE path=?",
                             [(p,) for p, r in self.rows.mem.items() if r is None])
            conn.executemany("DELETE FROM bands WHERE key=? AND path=?",
                             [(k, p) for p in self.rows.mem if p in self.old_sigs
                              for k in dedupe.band_keys(np.frombuffer(self.old_sigs[p], np.uint32))])
        cols = ", ".join(manifest.FILE_COLUMNS)
        conn.executemany(f"INSERT OR REPLACE INTO files({cols}) VALUES "
                         f"({', '.join('?' * len(manifest.FILE_COLUMNS))})",
                         [tuple(r[c] for c in manifest.FILE_COLUMNS) for r in self.new_rows])
        conn.executemany("INSERT OR IGNORE INTO bands(key, path) VALUES (?, ?)", self.band_rows)

    def _pin_heldout(self) -> None:
        """Pins: drop those of vanished/ineligible paths, add what the minimum needs."""
        conn, spec = self.conn, self.spec
        gone = [p for (p,) in conn.execute("DELETE FROM pins WHERE NOT EXISTS (SELECT 1 FROM files "
                                           "WHERE files.path = pins.path AND eligible=1) RETURNING path")]
        self._unpin(gone)
        held = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM files WHERE split='heldout' AND eligible=1 "
                            "LIMIT ?)", (spec.heldout_min,)).fetchone()[0]
        if held >= spec.heldout_min:
            return
        cands = [p for (p,) in conn.execute("SELECT path FROM files WHERE eligible=1 AND split='train'")]
        self.pinned_now = split.pins_needed(spec.name, held, cands, spec.heldout_min)
        for p in self.pinned_now:
            self._snapshot(p)
            r = dict(self.rows.get(p))
            r.update(split="heldout", shard=split.shard_of(p, self.counts["heldout"]))
            self.rows.put(r)
        conn.executemany("INSERT OR IGNORE INTO pins(path) VALUES (?)", [(p,) for p in self.pinned_now])
        conn.executemany("UPDATE files SET split='heldout', shard=? WHERE path=?",
                         [(split.shard_of(p, self.counts["heldout"]), p) for p in self.pinned_now])

    def _unpin(self, paths: list[str]) -> None:
        """A row whose pin was just dropped (its file became ineligible) takes the split its
        path hashes to, as a full build that never saw the pin gives it."""
        spec, moved = self.spec, []
        for p in paths:
            r = self.rows.get(p)
            if r is None or r["split"] != "heldout" or split.is_heldout(spec.name, p, spec.heldout_fraction):
                continue
            self._snapshot(p)
            r = dict(r)
            r.update(split="train", shard=split.shard_of(p, self.counts["train"]))
            self.rows.put(r)
            moved.append((r["shard"], p))
        self.conn.executemany("UPDATE files SET split='train', shard=? WHERE path=?", moved)

    def _affected(self, cross: dict[str, str]) -> set[str]:
        """Every path whose duplicate status this update can have changed."""
        rows, old = self.rows, self.old
        if self.full:
            return {r["path"] for r in self.new_rows}
        affected = set(rows.mem) | set(self.pinned_now) | set(cross)
        affected |= {p for (p,) in self.conn.execute(
            "SELECT path FROM files INDEXED BY files_xdup WHERE dup_of LIKE '%:%'")}
        for p in list(rows.mem) + self.pinned_now:
            for b in {old.get(p, (None, ""))[1], (rows.get(p) or {}).get("blob", "")} - {""}:
                affected |= rows.same_blob(b)
            new = rows.get(p)
            for keys in (dedupe.band_keys(np.frombuffer(self.old_sigs[p], np.uint32)) if p in self.old_sigs
                         else [], bands(new) if new else []):
                if keys:
                    affected |= rows.band_neighbors(keys)
        return affected

    def _dedupe(self) -> None:
        """Dedupe: recompute every path whose status can have changed."""
        self.report({"stage": "dedupe", "done": 0, "total": 0})
        cross = cross_repo(self.conn, self.home, self.spec)
        for p in sorted(self._affected(cross)):
            r = self.rows.get(p)
            if r is None or not r["eligible"]:
                continue
            self._snapshot(p)
            skip, dup_of = dup_status(p, self.rows, cross)
            if (skip, dup_of) != (r["skip"], r["dup_of"]):
                self.status_updates.append((skip, dup_of, p))
                r = dict(r)
                r.update(skip=skip, dup_of=dup_of)
                self.rows.mem[p] = r
        self.conn.executemany("UPDATE files SET skip=?, dup_of=? WHERE path=?", self.status_updates)

    def _resize_splits(self) -> None:
        """Shard counts follow the size of each split; a new count renumbers that split's rows."""
        self.summary = manifest.summary(self.conn)
        for sp in SPLITS:
            n = shards.shard_count(self.spec.num_shards, self.summary[f"{sp}_bytes"])
            if n != self.counts[sp]:
                self.conn.execute("UPDATE files SET shard = shard_of(path, ?) WHERE split = ?", (n, sp))
                self.counts[sp] = self.resplit[sp] = n

    def _choose_shards(self) -> None:
        """The shards to write (``touched``), against the checksums the manifest holds now."""
        self.old_shards = dict(self.conn.execute("SELECT name, sha256 FROM shards"))
        if self.full:
            self._touched_full()
        else:
            self._touched_incremental()

    def _touched_full(self) -> None:
        """A full build writes every shard its committed rows name (and empties every old one).

        The rows in the transaction are the truth, while the in-memory rows (``new_rows``)
        predate the pins and dedupe that moved or dropped some of them, and a full build keeps
        no ``old`` snapshot of those moves. Deriving the set from ``new_rows`` left a pinned
        file's held-out shard unwritten while the manifest counted the file. One query
        instead of one per shard.
        """
        for p, b, lang, sp, sh in self.conn.execute("SELECT path, blob, lang, split, shard FROM files "
                                                    "WHERE skip IS NULL ORDER BY path"):
            self.by_shard[(sp, sh)].append((p, b, lang))
        self.touched = set(self.old_shards) | {shards.shard_name(sp, sh) for sp, sh in self.by_shard}

    def _touched_incremental(self) -> None:
        """Where a record leaves, arrives, or changes content: every path whose row this update
        changed (new rows, pins, dedupe status) was snapshotted into ``old`` first. The old
        shards among them are checked against the manifest and their lines kept for reuse."""
        touched = self.touched
        for sp, n in self.resplit.items():
            touched |= {name for name in self.old_shards if name.startswith(f"{sp}-")}
            touched |= {shards.shard_name(sp, i) for i in range(n)}
        for p, (old_loc, old_blob) in self.old.items():
            r = self.rows.get(p)
            new_loc = shards.shard_name(r["split"], r["shard"]) if r and r["skip"] is None else None
            if old_loc != new_loc or (new_loc and r["blob"] != old_blob):
                touched |= {x for x in (old_loc, new_loc) if x}
        for r in self.new_rows:
            if r["skip"] is None:
                touched.add(shards.shard_name(r["split"], r["shard"]))
        for name in sorted(touched & set(self.old_shards)):
            data = (self.sdir / f"{name}{shards.SUFFIX}").read_bytes()
            if shards.checksum(data) != self.old_shards[name]:
                raise ShardCorrupt(f"shard {name} of corpus {self.spec.name} does not match its manifest "
                                   f"checksum; run `repotune corpus update {self.spec.name} --full` to rebuild it")
            for line in shards.decompress_lines(data, name):
                i = line.rfind(b'"path": ')
                meta = json.loads(b"{" + line[i:])
                self.reusable[meta["path"]] = (meta["sha"], line)

    def _plan(self) -> None:
        """Each touched shard's members, and a re-read of the texts neither scanned nor reusable."""
        reread: set[str] = set()
        for name in sorted(self.touched):
            sp, _, idx = name.rpartition("-")
            if self.full:
                members = self.by_shard.get((sp, int(idx)), [])
            else:
                members = self.conn.execute("SELECT path, blob, lang FROM files INDEXED BY files_shard "
                                            "WHERE skip IS NULL AND split=? AND shard=? ORDER BY path",
                                            (sp, int(idx))).fetchall()
            self.plan.append((name, members))
            for p, b, _lang in members:
                if p not in self.texts and self.reusable.get(p, ("",))[0] != b:
                    reread.add(p)
        if reread:
            want = [self.rows.get(p) for p in sorted(reread)]
            blobs = [r["blob"] for r in want]
            for r, (_, data) in zip(want, gitobjects.read_blobs(self.repo, blobs), strict=True):
                self.texts[r["path"]] = process((data, r["path"], r["lang"], r["blob"]), self.spec)["line"]

    def _stage_shards(self) -> None:
        """Write each changed shard to a hidden temp file, fsync them together, and record the
        renames in ``pending`` (performed after COMMIT) and the new checksums in ``shards``."""
        plan, conn = self.plan, self.conn
        self.report({"stage": "write", "done": 0, "total": len(plan)})
        tag = f"{self.commit[:12]}.{os.getpid()}"
        staged: list[Path] = []
        lines, reusable = self.texts, self.reusable
        jobs = ((f"{name}{shards.SUFFIX}",
                 [lines[p] if p in lines else reusable[p][1] for p, _b, _lang in members] if members else None,
                 self.old_shards.get(name)) for name, members in plan)
        threads = self.workers if len(plan) >= _pool.MIN_SHARDS_THREADED else 1
        with contextlib.closing(shards.stage_all(self.sdir, jobs, tag, threads)) as results:
            for i, ((name, members), done) in enumerate(zip(plan, results, strict=True)):
                final = f"{name}{shards.SUFFIX}"
                if done is None:
                    if name in self.old_shards:
                        self.pending.append((None, final))
                        conn.execute("DELETE FROM shards WHERE name=?", (name,))
                        self.written.append(name)
                    continue
                if done.tmp is None:  # the same bytes as the shard it would replace
                    continue
                staged.append(done.tmp)
                self.hook("staged")
                self.pending.append((done.tmp.name, final))
                self.written.append(name)
                conn.execute("INSERT OR REPLACE INTO shards(name, sha256, records, bytes) VALUES (?,?,?,?)",
                             (name, done.sha256, len(members), done.nbytes))
                self.report({"stage": "write", "done": i + 1, "total": len(plan)})
        shards.fsync_files(staged)  # durable before the commit point
        fsync_dir(self.sdir)

    def _record_commit(self) -> CorpusResult:
        """Planned renames and new meta into the manifest, then COMMIT: the commit point."""
        conn, spec = self.conn, self.spec
        changed = bool(self.written or self.status_updates
                       or self.changes and (self.added or self.modified or self.deleted)
                       or self.pinned_now or self.old_commit is None)
        new_version = self.version + 1 if changed else self.version
        now = datetime.now(UTC).isoformat(timespec="seconds")
        conn.executemany("INSERT INTO pending(tmp, final) VALUES (?, ?)", self.pending)
        manifest.set_meta(conn, commit=self.commit, previous_commit=self.old_commit, version=str(new_version),
                          fingerprint=spec.fingerprint(), spec=json.dumps(spec.public()),
                          name=spec.name, url=spec.url, updated_at=now,
                          created_at=manifest.get_meta(conn, "created_at") or now,
                          shards_train=str(self.counts["train"]), shards_heldout=str(self.counts["heldout"]))
        self.hook("before-commit")
        conn.execute("COMMIT")
        s = self.summary
        return CorpusResult(
            name=spec.name, commit=self.commit, previous_commit=self.old_commit, version=new_version,
            full=self.full, added=self.added, modified=self.modified, deleted=self.deleted,
            changed_paths=sorted(c.path for c in self.changes) if not self.full else [],
            train_files=s["train_files"], heldout_files=s["heldout_files"],
            bytes=s["train_bytes"] + s["heldout_bytes"], skipped=s["skipped"],
            secrets_redacted=s["secrets_redacted"], shards_touched=sorted(self.written))
