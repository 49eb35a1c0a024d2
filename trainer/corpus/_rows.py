"""What one corpus update decides per file: content filters and secrets for a blob, the
new state's rows over the manifest, and the order-independent duplicate rule.

Split from :mod:`trainer.corpus.update` (which holds the locking, recovery and commit
protocol) so that :mod:`trainer.corpus._apply` reads as phases over these pieces.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainer.corpus import dedupe, filters, gitobjects, manifest, shards
from trainer.corpus.secrets import scrub
from trainer.corpus.spec import CorpusSpec

Blob = tuple[bytes, str, str, str]
"""What the scan needs of one file: its content, path, language and blob id (the record's ``sha``)."""


def process(blob: Blob, spec: CorpusSpec) -> dict:
    """Content filters, secrets and signature for one blob: the row fields it decides
    (``line``, the file's shard record, is carried along, not stored in the row)."""
    return process_many([blob], spec)[0]


def process_many(blobs: list[Blob], spec: CorpusSpec) -> list[dict]:
    """:func:`process` of each blob, in order; the signatures computed in one batch
    (:func:`dedupe.signatures`), and ``line``, the JSON line of the file's shard record
    (:func:`shards.encode`). A pure function of (blobs, spec): what a scan worker runs, so the
    updating process only joins lines."""
    out: list[dict] = []
    raws: list[bytes] = []
    for data, path, lang, blob in blobs:
        skip = filters.content_skip(data, spec.max_file_bytes)
        if skip:
            out.append({"skip": skip, "eligible": 0, "bytes": len(data)})
            continue
        text, found = scrub(data.decode("utf-8"))
        if found and spec.secrets == "drop":
            out.append({"skip": "secret", "eligible": 0, "bytes": len(data), "secrets": found})
            continue
        raw = text.encode("utf-8") if found else data
        out.append({"skip": None, "eligible": 1, "bytes": len(raw), "secrets": found,
                    "line": shards.encode(text, path, spec.name, lang, blob)})
        raws.append(raw)
    sigs = iter(dedupe.signatures(raws))
    for fields in out:
        if fields["eligible"]:
            sig = next(sigs)
            fields["sig"] = sig.tobytes() if sig is not None else None
    return out


def bands(row: dict) -> list[int]:
    """A row's LSH band keys (computed when it was processed, else from its stored sig)."""
    keys = row.get("bands")
    if keys is None:
        keys = dedupe.band_keys(np.frombuffer(row["sig"], np.uint32)) if row.get("sig") else []
    return keys


def attr_rules(repo: Path, entries: dict[str, str]) -> list[filters.AttrRule]:
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


class Rows:
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
                for k in bands(row):
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


def dup_status(path: str, rows: Rows, cross: dict[str, str]) -> tuple[str | None, str | None]:
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
        for q in rows.band_neighbors(bands(row)):
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


def cross_repo(conn, home: Path, spec: CorpusSpec) -> dict[str, str]:
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
