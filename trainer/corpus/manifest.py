"""The manifest: one sqlite file per corpus with a row per path, shard checksums and state.

Tables: ``files`` (path, blob, mode, lang, bytes, split, shard, skip, eligible, dup_of,
secrets, sig), ``bands`` (LSH bucket key -> path), ``pins`` (sticky held-out paths),
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
CREATE TABLE IF NOT EXISTS bands (key INTEGER NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (key, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bands_path ON bands(path);
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
    """Counts derived from the rows (so an incremental update and a full build agree)."""
    counts = dict(conn.execute(
        "SELECT split, COUNT(*) FROM files WHERE skip IS NULL GROUP BY split").fetchall())
    nbytes = dict(conn.execute(
        "SELECT split, SUM(bytes) FROM files WHERE skip IS NULL GROUP BY split").fetchall())
    skipped = dict(conn.execute(
        "SELECT skip, COUNT(*) FROM files WHERE skip IS NOT NULL GROUP BY skip ORDER BY skip").fetchall())
    langs = dict(conn.execute(
        "SELECT lang, COUNT(*) FROM files WHERE skip IS NULL GROUP BY lang ORDER BY 2 DESC, 1").fetchall())
    secrets = conn.execute("SELECT COALESCE(SUM(secrets), 0) FROM files WHERE skip IS NULL").fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    return {
        "paths": total,
        "train_files": counts.get("train", 0),
        "heldout_files": counts.get("heldout", 0),
        "train_bytes": nbytes.get("train", 0) or 0,
        "heldout_bytes": nbytes.get("heldout", 0) or 0,
        "skipped": skipped,
        "skipped_files": sum(skipped.values()),
        "languages": langs,
        "secrets_redacted": secrets,
    }
