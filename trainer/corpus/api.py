"""Read-side API: stats, shard lists, records, export, verify, stored specs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from durable import write_atomic
from trainer.corpus import manifest, shards
from trainer.corpus.spec import CorpusSpec
from trainer.corpus.update import _locked, corpus_dir, recover
from trainer.errors import CorpusError, ShardCorrupt


def _existing(home: str | os.PathLike[str], name: str) -> Path:
    cdir = corpus_dir(Path(home), name)
    if not (cdir / "manifest.sqlite").exists():
        raise CorpusError(f"no corpus named {name!r} under {Path(home) / 'corpus'}; build it first "
                          "with `repotune corpus build <url-or-path> --name NAME`")
    with _locked(cdir):
        recover(cdir)
    return cdir


def load_spec(home: str | os.PathLike[str], name: str, token: str | None = None) -> CorpusSpec:
    """The spec the corpus was last built with (the token is never stored: pass it again)."""
    conn = manifest.connect(_existing(home, name) / "manifest.sqlite", readonly=True)
    try:
        data = json.loads(manifest.get_meta(conn, "spec") or "null")
    finally:
        conn.close()
    if not data:
        raise CorpusError(f"corpus {name!r} has no recorded spec; rebuild it with `repotune corpus build`")
    data["include"], data["exclude"] = tuple(data["include"]), tuple(data["exclude"])
    return CorpusSpec(**data, token=token)


def stats(home: str | os.PathLike[str], name: str) -> dict:
    """The corpus summary (``corpus.json``)."""
    path = _existing(home, name) / "corpus.json"
    if not path.exists():
        raise CorpusError(f"corpus {name!r} has no completed update yet; run `repotune corpus update {name}`")
    return json.loads(path.read_text())


def shard_files(home: str | os.PathLike[str], name: str, split: str = "train") -> list[Path]:
    """The shard files of one split, in name order (readable by ``datasets`` directly)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    cdir = _existing(home, name)
    conn = manifest.connect(cdir / "manifest.sqlite", readonly=True)
    try:
        names = [n for (n,) in conn.execute("SELECT name FROM shards WHERE name LIKE ? ORDER BY name",
                                             (f"{split}-%",))]
    finally:
        conn.close()
    return [cdir / "shards" / f"{n}{shards.SUFFIX}" for n in names]


def verify(home: str | os.PathLike[str], name: str) -> None:
    """Check every shard against its manifest checksum and record count; ShardCorrupt if not."""
    cdir = _existing(home, name)
    conn = manifest.connect(cdir / "manifest.sqlite", readonly=True)
    try:
        expected = conn.execute("SELECT name, sha256, records FROM shards").fetchall()
        counts = dict(conn.execute("SELECT split || '-' || printf('%02d', shard), COUNT(*) FROM files "
                                   "WHERE skip IS NULL GROUP BY split, shard").fetchall())
    finally:
        conn.close()
    unwritten = sorted(set(counts) - {sname for sname, _, _ in expected})
    if unwritten:  # rows placed in a shard that no update wrote: their records are nowhere
        raise ShardCorrupt(f"the manifest places {sum(counts[s] for s in unwritten)} records in "
                           f"shard(s) {', '.join(unwritten)} of corpus {name!r}, but no such shard was "
                           f"written; rebuild with `repotune corpus update {name} --full`")
    for sname, digest, records in expected:
        path = cdir / "shards" / f"{sname}{shards.SUFFIX}"
        if not path.exists():
            raise ShardCorrupt(f"shard {path} is missing; rebuild with `repotune corpus update {name} --full`")
        if shards.checksum(path.read_bytes()) != digest:
            raise ShardCorrupt(f"shard {path} does not match the checksum in the manifest (expected "
                               f"sha256 {digest[:16]}…); rebuild with `repotune corpus update {name} --full`")
        if counts.get(sname, 0) != records:
            raise ShardCorrupt(f"shard {path} holds {records} records but the manifest lists "
                               f"{counts.get(sname, 0)}; rebuild with `repotune corpus update {name} --full`")


def records_for_paths(home: str | os.PathLike[str], name: str, paths: list[str]) -> list[dict]:
    """Current records of these paths (missing or skipped paths are left out), in path order."""
    cdir = _existing(home, name)
    conn = manifest.connect(cdir / "manifest.sqlite", readonly=True)
    try:
        wanted: dict[str, set[str]] = {}
        for p in paths:
            r = conn.execute("SELECT split, shard FROM files WHERE path=? AND skip IS NULL", (p,)).fetchone()
            if r:
                wanted.setdefault(shards.shard_name(r[0], r[1]), set()).add(p)
    finally:
        conn.close()
    out = []
    for sname, ps in sorted(wanted.items()):
        out += [rec for rec in shards.read_records([cdir / "shards" / f"{sname}{shards.SUFFIX}"])
                if rec["path"] in ps]
    return sorted(out, key=lambda r: r["path"])


def export(home: str | os.PathLike[str], name: str, out: str | os.PathLike[str],
           split: str = "train") -> int:
    """Write plain JSONL ``{"text", "url"}`` (what the original recipe's ``run_clm.py`` reads).

    ``url`` is ``<repo url>/<path>`` (credentials removed). Returns the number of lines.
    The file is built in memory and written with :func:`durable.write_atomic` (the trainer
    loads the whole export into memory anyway).
    """
    from trainer.corpus.mirror import redact_url

    files = shard_files(home, name, split)
    base = redact_url(stats(home, name).get("url") or name).rstrip("/")
    verify(home, name)
    lines = [json.dumps({"text": rec["text"], "url": f"{base}/{rec['path']}"}, ensure_ascii=False) + "\n"
             for rec in shards.read_records(files)]
    write_atomic(Path(out), "".join(lines))
    return len(lines)
