"""The manifest: one sqlite file per corpus with a row per path, shard checksums and state.

Tables: ``files`` (path, blob, mode, lang, bytes, split, shard, skip, eligible, dup_of,
secrets, sig), ``bands`` (LSH bucket key, path), ``pins`` (sticky held-out paths),
``shards`` (name -> sha256, records, bytes), ``pending`` (shard renames decided by the last
committed transaction and not yet known to be done), ``meta`` (commit, version, spec …).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, blob TEXT NOT NULL, mode TEXT NOT NULL, lang TEXT,
    bytes INTEGER NOT NULL DEFAULT 0, split TEXT NOT NULL, shard INTEGER,
    skip TEXT, eligible INTEGER NOT NULL DEFAULT 0, dup_of TEXT,
    secrets INTEGER NOT NULL DEFAULT 0, sig BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_blob ON files(blob);
CREATE INDEX IF NOT EXISTS files_shard ON files(split, shard);
-- covering index of summary(): counts and sums without reading the rows (and their sigs)
CREATE INDEX IF NOT EXISTS files_summary ON files(skip, split, lang, bytes, secrets);
-- small partial indexes, so an update never scans the table for these few rows
CREATE INDEX IF NOT EXISTS files_xdup ON files(path) WHERE dup_of LIKE '%:%';
CREATE INDEX IF NOT EXISTS files_attrs ON files(path) WHERE path LIKE '%.gitattributes';
-- one row per (LSH band key, path); rows of a path are deleted by their keys (from its old
-- signature), so no index on path is needed
CREATE TABLE IF NOT EXISTS bands (key INTEGER NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (key, path)) WITHOUT ROWID;
DROP INDEX IF EXISTS bands_path;
CREATE TABLE IF NOT EXISTS pins (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
    records INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (tmp TEXT, final TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""

FILE_COLUMNS = ("path", "blob", "mode", "lang", "bytes", "split", "shard", "skip", "eligible",
                "dup_of", "secrets", "sig")


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """Open (and create) a manifest; autocommit mode, transactions are explicit."""
    if readonly:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, **values: object) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     [(k, v if isinstance(v, str) or v is None else json.dumps(v))
                      for k, v in values.items()])


def summary(conn: sqlite3.Connection) -> dict:
    """Counts derived from the rows (so an incremental update and a full build agree).

    One pass over the covering index ``files_summary``: a few ms for 20k paths."""
    counts = {"train": 0, "heldout": 0}
    nbytes = {"train": 0, "heldout": 0}
    skipped: dict[str, int] = {}
    langs: dict[str, int] = {}
    secrets = total = 0
    for skip, split, lang, n, b, sec in conn.execute(
            "SELECT skip, split, lang, COUNT(*), SUM(bytes), SUM(secrets) FROM files "
            "INDEXED BY files_summary GROUP BY skip, split, lang"):
        total += n
        if skip is not None:
            skipped[skip] = skipped.get(skip, 0) + n
            continue
        counts[split] = counts.get(split, 0) + n
        nbytes[split] = nbytes.get(split, 0) + (b or 0)
        langs[lang] = langs.get(lang, 0) + n
        secrets += sec or 0
    return {
        "paths": total,
        "train_files": counts["train"],
        "heldout_files": counts["heldout"],
        "train_bytes": nbytes["train"],
        "heldout_bytes": nbytes["heldout"],
        "skipped": dict(sorted(skipped.items())),
        "skipped_files": sum(skipped.values()),
        "languages": dict(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0] or ""))),
        "secrets_redacted": secrets,
    }
