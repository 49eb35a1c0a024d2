"""Incremental corpus update: fetch, diff from the last ingested commit, filter, scrub,
dedupe, split, rewrite only the touched shards, commit.

Crash safety (SIGKILL at any point leaves a usable corpus; the next update completes it):

1. every manifest change of an update happens inside one sqlite transaction;
2. new shard contents are first written to hidden temp files (fsynced) next to the shards;
3. the transaction records the planned renames in ``pending`` and COMMITs: the commit point;
4. the temp files are renamed over the shards, ``corpus.json`` is rewritten, ``pending`` cleared.

A crash before 3 leaves the old manifest and old shards (stray temp files are deleted by the
next :func:`recover`); a crash after 3 is rolled forward by :func:`recover`, which every
public entry point runs first under the corpus lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from trainer.corpus import dedupe, filters, gitobjects, manifest, mirror, shards, split
from trainer.corpus.secrets import scrub
from trainer.corpus.spec import CorpusResult, CorpusSpec
from trainer.errors import CorpusError, RepositoryError, ShardCorrupt

Progress = Callable[[dict], None]
SPLITS = ("train", "heldout")
_test_hook: Callable[[str], None] | None = None
"""Called with a stage name at each crash-relevant point; tests use it to SIGKILL the process."""


def _hook(stage: str) -> None:
    if _test_hook is not None:
        _test_hook(stage)


def corpus_dir(home: Path, name: str) -> Path:
    return Path(home) / "corpus" / name


def mirror_dir(home: Path, name: str) -> Path:
    return Path(home) / "mirrors" / f"{name}.git"


@contextmanager
def _locked(cdir: Path) -> Iterator[None]:
    cdir.mkdir(parents=True, exist_ok=True)
    with open(cdir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- recovery

def recover(cdir: Path, summary: bool = False, conn=None) -> None:
    """Roll a committed update forward and delete temp files of an uncommitted one
    (on ``conn`` if given, else on a connection of its own)."""
    db = cdir / "manifest.sqlite"
    if conn is None:
        if not db.exists():
            return
        with contextlib.closing(manifest.connect(db)) as own:
            return recover(cdir, summary, own)
    pending = conn.execute("SELECT tmp, final FROM pending").fetchall()
    _finish(conn, cdir, pending, None if (summary or pending or not (cdir / "corpus.json").exists())
            else False)


def _stray_temps(sdir: Path) -> list[Path]:
    """Hidden temp files in the shard folder (scandir: no per-entry pathlib objects)."""
    try:
        with os.scandir(sdir) as it:
            return [Path(e.path) for e in it if e.name.startswith(".") and e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _finish(conn, cdir: Path, pending: list[tuple[str | None, str]], summary: dict | None | bool,
            strays: bool = True) -> None:
    """Apply the committed renames, remove stray temp files (unless ``strays`` is False: the
    update that just committed cleared them at its start, under the same lock), rewrite
    ``corpus.json`` (from ``summary``, or recomputed when None; not at all when False) and
    clear ``pending``."""
    sdir = cdir / "shards"
    keep = set()
    changed = False
    for tmp, final in pending:
        if tmp is None:
            (sdir / final).unlink(missing_ok=True)
            changed = True
        elif (sdir / tmp).exists():
            os.replace(sdir / tmp, sdir / final)
            changed = True
        keep.add(tmp)
    for stray in _stray_temps(sdir) if strays else ():
        if stray.name not in keep:
            stray.unlink(missing_ok=True)
            changed = True
    if changed:
        shards.fsync_dir(sdir)
    if summary is not False:
        _write_summary(conn, cdir, summary)
    if pending:
        conn.execute("DELETE FROM pending")


def _write_summary(conn, cdir: Path, s: dict | None = None) -> dict:
    if manifest.get_meta(conn, "commit") is None:
        return {}
    s = s if s is not None else manifest.summary(conn)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    data = {
        "name": meta.get("name"),
        "url": mirror.redact_url(meta.get("url") or ""),
        "branch": json.loads(meta.get("spec") or "{}").get("branch"),
        "commit": meta.get("commit"),
        "previous_commit": meta.get("previous_commit"),
        "version": int(meta.get("version") or "0"),
        **s,
        "bytes": s["train_bytes"] + s["heldout_bytes"],
        "shards": {n: {"sha256": h, "records": r, "bytes": b} for n, h, r, b in
                   conn.execute("SELECT name, sha256, records, bytes FROM shards ORDER BY name")},
        "created_at": meta.get("created_at"),
        "updated_at": meta.get("updated_at"),
    }
    # One line per key: json's C encoder only runs without indent=, and the pure-Python one
    # costs ~20 ms for a few hundred shard entries, a third of a small update.
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
    shards.atomic_write(cdir / "corpus.json", ("{\n" + body + "\n}\n").encode())
    return data


# --------------------------------------------------------------------------- processing

def _process(data: bytes, spec: CorpusSpec) -> dict:
    """Content filters, secrets and signature for one blob: the row fields it decides
    (``text`` is carried along, not stored in the row)."""
    skip = filters.content_skip(data, spec.max_file_bytes)
    if skip:
        return {"skip": skip, "eligible": 0, "bytes": len(data)}
    text, found = scrub(data.decode("utf-8"))
    if found and spec.secrets == "drop":
        return {"skip": "secret", "eligible": 0, "bytes": len(data), "secrets": found}
    raw = text.encode("utf-8") if found else data
    sig = dedupe.signature(raw)
    return {"skip": None, "eligible": 1, "bytes": len(raw), "secrets": found, "text": text,
            "sig": sig.tobytes() if sig is not None else None}


def _bands(row: dict) -> list[int]:
    """A row's LSH band keys (computed when it was processed, else from its stored sig)."""
    keys = row.get("bands")
    if keys is None:
        keys = dedupe.band_keys(np.frombuffer(row["sig"], np.uint32)) if row.get("sig") else []
    return keys


def _attr_rules(repo: Path, entries: dict[str, str]) -> list[filters.AttrRule]:
    """linguist rules from every .gitattributes (``entries``: path -> blob), shallow first."""
    paths = sorted((p for p in entries if p == ".gitattributes" or p.endswith("/.gitattributes")),
                   key=lambda p: (p.count("/"), p))
    if not paths:
        return []
    texts = dict(gitobjects.read_blobs(repo, [entries[p] for p in paths]))
    rules: list[filters.AttrRule] = []
    for p in paths:
        base = p.rpartition("/")[0]
        rules += filters.parse_gitattributes(base, texts[entries[p]].decode("utf-8", "replace"))
    return rules


class _Rows:
    """The new state's rows: changed rows in memory over the manifest (or memory only: full)."""

    def __init__(self, conn, full: bool) -> None:
        self.conn = conn
        self.full = full
        self.mem: dict[str, dict | None] = {}
        self.by_blob: dict[str, set[str]] = defaultdict(set)
        self.by_band: dict[int, set[str]] = defaultdict(set)

    def put(self, row: dict, index_bands: bool = True) -> None:
        """Add or replace a row (``index_bands=False``: the caller indexes its band keys)."""
        self.mem[row["path"]] = row
        if row["eligible"]:
            self.by_blob[row["blob"]].add(row["path"])
            if index_bands:
                for k in _bands(row):
                    self.by_band[k].add(row["path"])

    def delete(self, path: str) -> None:
        self.mem[path] = None

    def get(self, path: str) -> dict | None:
        if path in self.mem or self.full:
            return self.mem.get(path)
        r = self.conn.execute(f"SELECT {', '.join(manifest.FILE_COLUMNS)} FROM files WHERE path=?",
                              (path,)).fetchone()
        return dict(zip(manifest.FILE_COLUMNS, r, strict=True)) if r else None

    def same_blob(self, blob: str) -> set[str]:
        found = set(self.by_blob.get(blob, ()))
        if not self.full:
            found |= {p for (p,) in self.conn.execute(
                "SELECT path FROM files WHERE blob=? AND eligible=1", (blob,))}
        return {p for p in found if (r := self.get(p)) and r["eligible"] and r["blob"] == blob}

    def band_neighbors(self, keys: list[int]) -> set[str]:
        found: set[str] = set()
        for k in keys:
            found |= self.by_band.get(k, set())
        if not self.full and keys:
            q = f"SELECT path FROM bands WHERE key IN ({','.join('?' * len(keys))})"
            found |= {p for (p,) in self.conn.execute(q, keys)}
        return found


def _dup_status(path: str, rows: _Rows, cross: dict[str, str]) -> tuple[str | None, str | None]:
    """(skip reason, dup_of) for an eligible row under the order-independent rule."""
    row = rows.get(path)
    assert row is not None
    key = dedupe.sort_key(row["split"], path)
    twins = rows.same_blob(row["blob"])
    if len(twins) > 1:
        better = [q for q in twins if q != path and dedupe.sort_key(rows.get(q)["split"], q) < key]
        if better:
            return "duplicate", min(better, key=lambda q: dedupe.sort_key(rows.get(q)["split"], q))
    if path in cross:
        return "duplicate", cross[path]
    if row.get("sig"):
        sig = None
        cands = []
        for q in rows.band_neighbors(_bands(row)):
            other = rows.get(q)
            if q == path or not other or not other["eligible"] or not other.get("sig"):
                continue
            okey = dedupe.sort_key(other["split"], q)
            if okey < key:
                sig = np.frombuffer(row["sig"], np.uint32) if sig is None else sig
                if dedupe.similarity(sig, np.frombuffer(other["sig"], np.uint32)) >= dedupe.THRESHOLD:
                    cands.append((okey, q))
        if cands:
            return "near-duplicate", min(cands)[1]
    return None, None


def _cross_repo(conn, home: Path, spec: CorpusSpec) -> dict[str, str]:
    """Eligible paths here whose exact content another corpus under ``home`` holds with a
    smaller key ``(split != heldout, repo, path)``: path -> ``repo:path`` of that copy."""
    root = Path(home) / "corpus"
    others = list(root.glob("*/manifest.sqlite")) + list(root.glob("*/*/manifest.sqlite"))
    others = [db for db in others if db.parent.relative_to(root).as_posix() != spec.name]
    if not others:
        return {}
    mine: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for path, blob, sp in conn.execute("SELECT path, blob, split FROM files WHERE eligible=1"):
        mine[blob].append((path, sp))
    found: dict[str, tuple] = {}
    for db in others:
        other_name = db.parent.relative_to(root).as_posix()
        try:
            other = manifest.connect(db, readonly=True)
            try:
                theirs = other.execute("SELECT blob, path, split FROM files WHERE eligible=1").fetchall()
            finally:
                other.close()
        except sqlite3.Error:  # an unreadable neighbour must not block this corpus
            continue
        for blob, opath, osp in theirs:
            for path, sp in mine.get(blob, ()):
                okey = (osp != "heldout", other_name, opath)
                if okey < (sp != "heldout", spec.name, path) and (path not in found or okey < found[path]):
                    found[path] = okey
    return {p: f"{k[1]}:{k[2]}" for p, k in found.items()}


# --------------------------------------------------------------------------- update

def update(spec: CorpusSpec, home: str | os.PathLike[str], to_rev: str | None = None, *,
           full: bool = False, progress: Progress | None = None) -> CorpusResult:
    """Bring the corpus of ``spec`` to ``to_rev`` (default: the tracked branch's head).

    Diffs from the last ingested commit recorded in the manifest; with no state, a changed
    spec, a vanished old commit or ``full=True`` the whole tree is processed. Raises
    :class:`RepositoryError` (remote/revision), :class:`ShardCorrupt`, :class:`CorpusError`
    (e.g. disk full); in every case the last good corpus stays as it was.
    """
    home = Path(home)
    cdir = corpus_dir(home, spec.name)
    started = time.perf_counter()
    report = progress or (lambda event: None)
    with _locked(cdir):
        report({"stage": "fetch", "done": 0, "total": 1})
        repo = mirror.sync(spec.url, mirror_dir(home, spec.name), spec.token)
        report({"stage": "fetch", "done": 1, "total": 1})
        commit = mirror.resolve(repo, to_rev, spec.branch)
        conn = None
        try:
            conn = manifest.connect(cdir / "manifest.sqlite")
            recover(cdir, conn=conn)
            return _update_locked(spec, home, cdir, repo, conn, commit, full, report, started)
        except (OSError, sqlite3.Error) as exc:
            raise CorpusError(f"corpus {spec.name} update to {commit[:12]} failed: {exc}. The last "
                              "good corpus is intact; free disk space and run the update again.") from exc
        finally:
            if conn is not None:
                conn.close()


def _update_locked(spec, home, cdir, repo, conn, commit, full, report, started) -> CorpusResult:
    old_commit = manifest.get_meta(conn, "commit")
    version = int(manifest.get_meta(conn, "version", "0"))
    full = full or old_commit is None or manifest.get_meta(conn, "fingerprint") != spec.fingerprint()
    if not full and old_commit == commit:
        s = manifest.summary(conn)
        return CorpusResult(spec.name, commit, manifest.get_meta(conn, "previous_commit"), version,
                            False, train_files=s["train_files"], heldout_files=s["heldout_files"],
                            bytes=s["train_bytes"] + s["heldout_bytes"], skipped=s["skipped"],
                            secrets_redacted=s["secrets_redacted"],
                            duration_s=time.perf_counter() - started)
    changes: list[gitobjects.Change] = []
    if not full:
        try:
            changes = gitobjects.diff_trees(repo, old_commit, commit)
        except RepositoryError:
            if mirror.has_commit(repo, old_commit):
                raise
            full = True  # a force push + gc dropped the last ingested commit
    if not full and any(c.path.rsplit("/", 1)[-1] == ".gitattributes" for c in changes):
        full = True  # attributes may change any file's status
    tree_blobs: dict[str, str] = {}
    if full:
        entries = gitobjects.ls_tree(repo, commit)
        changes = [gitobjects.Change(e.path, e) for e in entries]
        tree_blobs = {e.path: e.blob for e in entries}
    else:
        tree_blobs = {p: b for p, b in conn.execute(
            "SELECT path, blob FROM files INDEXED BY files_attrs WHERE path LIKE '%.gitattributes'")}
    rules = _attr_rules(repo, tree_blobs)

    conn.execute("BEGIN IMMEDIATE")
    try:
        result, pending, summary = _apply(spec, home, cdir, repo, conn, commit, old_commit, version,
                                          full, changes, rules, report)
    except BaseException:
        conn.execute("ROLLBACK")
        for stray in _stray_temps(cdir / "shards"):
            stray.unlink(missing_ok=True)
        raise
    _hook("committed")
    _finish(conn, cdir, pending, summary, strays=False)
    result.duration_s = time.perf_counter() - started
    report({"stage": "done", "done": 1, "total": 1})
    return result


def _old_locations(conn, full: bool) -> dict[str, tuple[str | None, str]]:
    """path -> (shard name it sits in or None, blob), for every row (full) — else lazily."""
    if not full:
        return {}
    return {p: (shards.shard_name(sp, sh) if skip is None else None, blob)
            for p, sp, sh, skip, blob in conn.execute("SELECT path, split, shard, skip, blob FROM files")}


def _apply(spec, home, cdir, repo, conn, commit, old_commit, version, full, changes, rules,
           report) -> tuple[CorpusResult, list[tuple[str | None, str]], dict]:
    sdir = cdir / "shards"
    sdir.mkdir(parents=True, exist_ok=True)
    cols = ", ".join(manifest.FILE_COLUMNS)
    old: dict[str, tuple[str | None, str]] = _old_locations(conn, full)
    old_sigs: dict[str, bytes] = {}
    # Shards per split: what the last update chose (provisional; settled after dedupe).
    counts = {sp: int(manifest.get_meta(conn, f"shards_{sp}") or spec.num_shards) for sp in SPLITS}
    conn.create_function("shard_of", 2, split.shard_of, deterministic=True)

    def snapshot(path: str) -> None:
        if full or path in old:
            return
        r = conn.execute("SELECT split, shard, skip, blob, sig, eligible FROM files WHERE path=?",
                         (path,)).fetchone()
        if r is None:
            old[path] = (None, "")
        else:
            old[path] = (shards.shard_name(r[0], r[1]) if r[2] is None else None, r[3])
            if r[4] and r[5]:
                old_sigs[path] = r[4]

    if full:
        conn.execute("DELETE FROM files")
        conn.execute("DELETE FROM bands")
    rows = _Rows(conn, full)
    pins = {p for (p,) in conn.execute("SELECT path FROM pins")}
    texts: dict[str, str] = {}
    added = modified = deleted = 0
    new_rows: list[dict] = []
    to_read: list[tuple[str, str]] = []
    unsized: list[str] = []
    for ch in changes:
        snapshot(ch.path)
        existed = old.get(ch.path, (None, ""))[1] != "" if not full else False
        if ch.new is None:
            deleted += 1
            rows.delete(ch.path)
            continue
        added, modified = (added, modified + 1) if existed else (added + 1, modified)
        e = ch.new
        heldout = split.is_heldout(spec.name, e.path, spec.heldout_fraction) or e.path in pins
        row = {"path": e.path, "blob": e.blob, "mode": e.mode, "lang": None, "bytes": 0,
               "split": "heldout" if heldout else "train", "shard": 0, "skip": None,
               "eligible": 0, "dup_of": None, "secrets": 0, "sig": None}
        attrs = filters.attributes(e.path, rules) if rules else {}
        row["skip"] = filters.path_skip(e.path, e.mode, spec.include, spec.exclude, attrs)
        if row["skip"] is None:
            row["lang"] = filters.language_of(e.path)
            if e.size is not None and e.size > spec.max_file_bytes:  # never read
                row.update(skip="too-large", bytes=e.size)
            else:
                to_read.append((e.path, e.blob))
                if e.size is None:  # diff-tree gives no sizes; ls-tree -l does
                    unsized.append(e.blob)
        new_rows.append(row)
    by_path = {r["path"]: r for r in new_rows}
    total = len(to_read)
    t0 = time.perf_counter()
    ids = [b for _, b in to_read]
    if unsized:  # one process: sizes first, then only the blobs within max_file_bytes
        blob_iter = gitobjects.read_blobs_upto(repo, ids, spec.max_file_bytes)
    else:
        blob_iter = ((b, len(data), data) for b, data in gitobjects.read_blobs(repo, ids))
    nbytes = 0
    for i, ((p, _b), (_, size, data)) in enumerate(zip(to_read, blob_iter, strict=True)):
        if data is None:
            by_path[p].update(skip="too-large", bytes=size)
            continue
        fields = _process(data, spec)
        nbytes += len(data)
        text = fields.pop("text", None)
        if text is not None:
            texts[p] = text
        by_path[p].update(fields)
        if i % 500 == 0 or i + 1 == total:
            dt = max(time.perf_counter() - t0, 1e-9)
            report({"stage": "scan", "done": i + 1, "total": total, "files_per_s": (i + 1) / dt,
                    "mb_per_s": nbytes / dt / 1e6})
    if full:  # a good guess of the final shard counts saves renumbering every row below
        for sp in SPLITS:
            counts[sp] = shards.shard_count(spec.num_shards, sum(
                r["bytes"] for r in new_rows if r["eligible"] and r["split"] == sp))
    signed = [r for r in new_rows if r["eligible"] and r["sig"]]
    keys = dedupe.band_keys_many(np.frombuffer(b"".join(r["sig"] for r in signed), np.uint32))
    for r, k in zip(signed, keys.tolist(), strict=True):
        r["bands"] = k
    for r in new_rows:
        r["shard"] = split.shard_of(r["path"], counts[r["split"]])
        rows.put(r, index_bands=False)
    # Band rows in key order (cheap b-tree appends); in memory, only keys shared by 2+ files.
    flat = keys.ravel()
    order = np.argsort(flat, kind="stable")
    band_rows = list(zip(flat[order].tolist(), [signed[i // dedupe.BANDS]["path"] for i in order.tolist()],
                         strict=True))
    for i in np.flatnonzero(np.diff(flat[order]) == 0).tolist():
        for k, p in band_rows[i:i + 2]:
            rows.by_band[k].add(p)

    # Write rows; deletions and band index first (the transaction is still open).
    if not full:
        conn.executemany("DELETE FROM files WHERE path=?", [(p,) for p, r in rows.mem.items() if r is None])
        conn.executemany("DELETE FROM bands WHERE key=? AND path=?",
                         [(k, p) for p in rows.mem if p in old_sigs
                          for k in dedupe.band_keys(np.frombuffer(old_sigs[p], np.uint32))])
    conn.executemany(f"INSERT OR REPLACE INTO files({cols}) VALUES ({', '.join('?' * len(manifest.FILE_COLUMNS))})",
                     [tuple(r[c] for c in manifest.FILE_COLUMNS) for r in new_rows])
    conn.executemany("INSERT OR IGNORE INTO bands(key, path) VALUES (?, ?)", band_rows)

    # Pins: drop those of vanished/ineligible paths, add what the minimum needs.
    conn.execute("DELETE FROM pins WHERE NOT EXISTS "
                 "(SELECT 1 FROM files WHERE files.path = pins.path AND eligible=1)")
    held = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM files WHERE split='heldout' AND eligible=1 "
                        "LIMIT ?)", (spec.heldout_min,)).fetchone()[0]
    pinned_now: list[str] = []
    if held < spec.heldout_min:
        cands = [p for (p,) in conn.execute("SELECT path FROM files WHERE eligible=1 AND split='train'")]
        pinned_now = split.pins_needed(spec.name, held, cands, spec.heldout_min)
        for p in pinned_now:
            snapshot(p)
            r = dict(rows.get(p))
            r.update(split="heldout", shard=split.shard_of(p, counts["heldout"]))
            rows.put(r)
        conn.executemany("INSERT OR IGNORE INTO pins(path) VALUES (?)", [(p,) for p in pinned_now])
        conn.executemany("UPDATE files SET split='heldout', shard=? WHERE path=?",
                         [(split.shard_of(p, counts["heldout"]), p) for p in pinned_now])

    # Dedupe: recompute every path whose status can have changed.
    report({"stage": "dedupe", "done": 0, "total": 0})
    cross = _cross_repo(conn, home, spec)
    if full:
        affected = {r["path"] for r in new_rows}
    else:
        affected = set(rows.mem) | set(pinned_now) | set(cross)
        affected |= {p for (p,) in conn.execute(
            "SELECT path FROM files INDEXED BY files_xdup WHERE dup_of LIKE '%:%'")}
        for p in list(rows.mem) + pinned_now:
            for b in {old.get(p, (None, ""))[1], (rows.get(p) or {}).get("blob", "")} - {""}:
                affected |= rows.same_blob(b)
            new = rows.get(p)
            for keys in (dedupe.band_keys(np.frombuffer(old_sigs[p], np.uint32)) if p in old_sigs else [],
                         _bands(new) if new else []):
                if keys:
                    affected |= rows.band_neighbors(keys)
    status_updates = []
    for p in sorted(affected):
        r = rows.get(p)
        if r is None or not r["eligible"]:
            continue
        snapshot(p)
        skip, dup_of = _dup_status(p, rows, cross)
        if (skip, dup_of) != (r["skip"], r["dup_of"]):
            status_updates.append((skip, dup_of, p))
            r = dict(r)
            r.update(skip=skip, dup_of=dup_of)
            rows.mem[p] = r
    conn.executemany("UPDATE files SET skip=?, dup_of=? WHERE path=?", status_updates)

    # Shard counts follow the size of each split; a new count renumbers that split's rows.
    summary = manifest.summary(conn)
    resplit = {}
    for sp in SPLITS:
        n = shards.shard_count(spec.num_shards, summary[f"{sp}_bytes"])
        if n != counts[sp]:
            conn.execute("UPDATE files SET shard = shard_of(path, ?) WHERE split = ?", (n, sp))
            counts[sp] = resplit[sp] = n

    # Shards to write. A full build writes every shard its committed rows name (and empties
    # every old one): the rows in the transaction are the truth, while the in-memory rows
    # (``new_rows``) predate the pins and dedupe that moved or dropped some of them, and a
    # full build keeps no ``old`` snapshot of those moves. Deriving the set from ``new_rows``
    # left a pinned file's held-out shard unwritten while the manifest counted the file.
    touched: set[str] = set()
    reread: set[str] = set()
    old_shards = dict(conn.execute("SELECT name, sha256 FROM shards"))
    reusable: dict[str, tuple[str, bytes]] = {}
    if full:  # one query instead of one per shard
        by_shard: dict[tuple[str, int], list] = defaultdict(list)
        for p, b, lang, sp, sh in conn.execute("SELECT path, blob, lang, split, shard FROM files "
                                               "WHERE skip IS NULL ORDER BY path"):
            by_shard[(sp, sh)].append((p, b, lang))
        touched = set(old_shards) | {shards.shard_name(sp, sh) for sp, sh in by_shard}
    else:
        # Where a record leaves, arrives, or changes content: every path whose row this
        # update changed (new rows, pins, dedupe status) was snapshotted into ``old`` first.
        for sp, n in resplit.items():
            touched |= {name for name in old_shards if name.startswith(f"{sp}-")}
            touched |= {shards.shard_name(sp, i) for i in range(n)}
        for p, (old_loc, old_blob) in old.items():
            r = rows.get(p)
            new_loc = shards.shard_name(r["split"], r["shard"]) if r and r["skip"] is None else None
            if old_loc != new_loc or (new_loc and r["blob"] != old_blob):
                touched |= {x for x in (old_loc, new_loc) if x}
        for r in new_rows:
            if r["skip"] is None:
                touched.add(shards.shard_name(r["split"], r["shard"]))
        for name in sorted(touched & set(old_shards)):
            data = (sdir / f"{name}{shards.SUFFIX}").read_bytes()
            if shards.checksum(data) != old_shards[name]:
                raise ShardCorrupt(f"shard {name} of corpus {spec.name} does not match its manifest "
                                   f"checksum; run `repotune corpus update {spec.name} --full` to rebuild it")
            for line in shards.decompress_lines(data, name):
                i = line.rfind(b'"path": ')
                meta = json.loads(b"{" + line[i:])
                reusable[meta["path"]] = (meta["sha"], line)

    plan: list[tuple[str, list[tuple[str, str, str]]]] = []
    for name in sorted(touched):
        sp, _, idx = name.rpartition("-")
        if full:
            members = by_shard.get((sp, int(idx)), [])
        else:
            members = conn.execute("SELECT path, blob, lang FROM files INDEXED BY files_shard "
                                   "WHERE skip IS NULL AND split=? AND shard=? ORDER BY path",
                                   (sp, int(idx))).fetchall()
        plan.append((name, members))
        for p, b, _lang in members:
            if p not in texts and reusable.get(p, ("",))[0] != b:
                reread.add(p)
    if reread:
        want = sorted(reread)
        blobs = [rows.get(p)["blob"] for p in want]
        for p, (_, data) in zip(want, gitobjects.read_blobs(repo, blobs), strict=True):
            texts[p] = _process(data, spec)["text"]

    report({"stage": "write", "done": 0, "total": len(plan)})
    tag = f"{commit[:12]}.{os.getpid()}"
    pending: list[tuple[str | None, str]] = []
    staged: list[Path] = []
    written: list[str] = []
    for i, (name, members) in enumerate(plan):
        final = f"{name}{shards.SUFFIX}"
        if not members:
            if name in old_shards:
                pending.append((None, final))
                conn.execute("DELETE FROM shards WHERE name=?", (name,))
                written.append(name)
            continue
        lines = [shards.encode(texts[p], p, spec.name, lang, b) if p in texts else reusable[p][1]
                 for p, b, lang in members]
        data = shards.compress(lines)
        digest = shards.checksum(data)
        if old_shards.get(name) == digest:
            continue
        tmp = shards.write_temp(sdir, final, data, tag, sync=False)
        staged.append(tmp)
        _hook("staged")
        pending.append((tmp.name, final))
        written.append(name)
        conn.execute("INSERT OR REPLACE INTO shards(name, sha256, records, bytes) VALUES (?,?,?,?)",
                     (name, digest, len(members), len(data)))
        report({"stage": "write", "done": i + 1, "total": len(plan)})
    shards.fsync_files(staged)  # durable before the commit point
    shards.fsync_dir(sdir)

    changed = bool(written or status_updates or changes and (added or modified or deleted)
                   or pinned_now or old_commit is None)
    new_version = version + 1 if changed else version
    now = _now()
    conn.executemany("INSERT INTO pending(tmp, final) VALUES (?, ?)", pending)
    manifest.set_meta(conn, commit=commit, previous_commit=old_commit, version=str(new_version),
                      fingerprint=spec.fingerprint(), spec=json.dumps(spec.public()),
                      name=spec.name, url=spec.url, updated_at=now,
                      created_at=manifest.get_meta(conn, "created_at") or now,
                      shards_train=str(counts["train"]), shards_heldout=str(counts["heldout"]))
    _hook("before-commit")
    conn.execute("COMMIT")
    s = summary
    result = CorpusResult(
        name=spec.name, commit=commit, previous_commit=old_commit, version=new_version, full=full,
        added=added, modified=modified, deleted=deleted,
        changed_paths=sorted(c.path for c in changes) if not full else [],
        train_files=s["train_files"], heldout_files=s["heldout_files"],
        bytes=s["train_bytes"] + s["heldout_bytes"], skipped=s["skipped"],
        secrets_redacted=s["secrets_redacted"], shards_touched=sorted(written))
    return result, pending, summary
