"""Shards hold exactly the manifest's rows: every counted file has its record, in its shard.

Regression for full builds that pinned a file as held-out (``heldout_min``) but never wrote
its held-out shard: the manifest and ``CorpusResult`` counted the file, ``shard_files`` +
``read_records`` returned nothing, and a training run's evaluate step found an empty split.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.fixtures.corpus import corpus_state
from trainer.corpus import (
    CorpusResult,
    CorpusSpec,
    read_records,
    shard_files,
    stats,
    update,
    verify,
)
from trainer.corpus.spec import ENGINE_VERSION
from trainer.errors import ShardCorrupt


def assert_shards_match_manifest(home: Path, name: str, result: CorpusResult | None = None) -> None:
    """For each split: the records in its shards are exactly the manifest's kept rows (path,
    blob sha, shard file), and the counts of ``result``, ``stats`` and ``verify`` agree."""
    summary = stats(home, name)
    db = Path(home) / "corpus" / name / "manifest.sqlite"
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        for split in ("train", "heldout"):
            rows = sorted(conn.execute("SELECT path, blob, printf('%s-%02d', split, shard) FROM files "
                                       "WHERE skip IS NULL AND split=?", (split,)).fetchall())
            records = sorted((rec["path"], rec["sha"], f.name.removesuffix(".jsonl.zst"))
                             for f in shard_files(home, name, split) for rec in read_records([f]))
            assert records == rows, f"{split}: shard records differ from the manifest rows"
            assert summary[f"{split}_files"] == len(rows)
            if result is not None:
                assert getattr(result, f"{split}_files") == len(rows)
    finally:
        conn.close()
    verify(home, name)


# (files, seed) of the sample codebase whose full build pins its only held-out file.
PINNED_CASES = [(12, 0), (12, 2), (12, 4), (12, 7), (16, 4), (16, 7)]


@pytest.mark.parametrize(("files", "seed"), PINNED_CASES)
def test_full_build_writes_the_pinned_heldout_shard(make_repo, corpus_home, files, seed):
    repo = make_repo(files=files, seed=seed)
    spec = CorpusSpec(name="x", url=repo.url, num_shards=2, heldout_fraction=0.1)
    result = update(spec, corpus_home)
    conn = sqlite3.connect(corpus_home / "corpus" / "x" / "manifest.sqlite")
    pins = [p for (p,) in conn.execute("SELECT path FROM pins")]
    conn.close()
    assert len(pins) == 1 and result.heldout_files == 1  # the case under test: held out by a pin
    held = list(read_records(shard_files(corpus_home, "x", "heldout")))
    assert [r["path"] for r in held] == pins
    assert_shards_match_manifest(corpus_home, "x", result)


def test_pins_of_a_full_build_then_incremental_and_rebuild(make_repo, corpus_home, tmp_path):
    """No file held out by the hash: every held-out file is a pin, made by full builds and by
    updates; each state's shards match its manifest, and a ``full=True`` rebuild keeps it."""
    repo = make_repo(files=6, seed=1)
    spec = CorpusSpec(name="x", url=repo.url, num_shards=2, heldout_fraction=0.0, heldout_min=2)
    assert_shards_match_manifest(corpus_home, "x", update(spec, corpus_home))
    first = {r["path"] for r in read_records(shard_files(corpus_home, "x", "heldout"))}
    assert len(first) == 2
    repo.remove(sorted(first)[0])  # a pin vanishes: the update pins another file
    repo.write("lib/extra.py", "def extra(a, b):\n" + "    a = a * b + 1\n" * 30 + "    return a\n")
    repo.commit("replace a held-out file")
    result = update(spec, corpus_home)
    assert result.heldout_files == 2
    assert_shards_match_manifest(corpus_home, "x", result)
    before = corpus_state(corpus_home, "x")
    rebuilt = update(spec, corpus_home, full=True)
    assert_shards_match_manifest(corpus_home, "x", rebuilt)
    assert corpus_state(corpus_home, "x") == before


def test_engine_2_corpus_missing_its_heldout_shard_is_detected_and_rebuilt(make_repo, corpus_home):
    """A corpus the old engine left without the pinned file's shard: verify() names the
    problem, and the next update rebuilds it (the engine version is in the fingerprint)."""
    repo = make_repo(files=12, seed=4)
    spec = CorpusSpec(name="x", url=repo.url, num_shards=2, heldout_fraction=0.1)
    update(spec, corpus_home)
    cdir = corpus_home / "corpus" / "x"
    conn = sqlite3.connect(cdir / "manifest.sqlite")
    with conn:  # what engine 2 wrote: the row, no shard
        (held,) = [n for (n,) in conn.execute("SELECT name FROM shards WHERE name LIKE 'heldout-%'")]
        conn.execute("DELETE FROM shards WHERE name=?", (held,))
        conn.execute("UPDATE meta SET value=replace(value, ?, ?) WHERE key='fingerprint'",
                     (f'"engine": {ENGINE_VERSION}', '"engine": 2'))
    conn.close()
    (cdir / "shards" / f"{held}.jsonl.zst").unlink()
    with pytest.raises(ShardCorrupt, match=f"{held}.*no such shard was written"):
        verify(corpus_home, "x")
    result = update(spec, corpus_home)  # same commit, but an older engine's corpus: full rebuild
    assert result.full and result.heldout_files == 1
    assert_shards_match_manifest(corpus_home, "x", result)
