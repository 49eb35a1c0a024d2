"""The corpus engine against real git repositories: incremental updates, safety, bad input."""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fixtures.corpus import corpus_state
from trainer.corpus import (
    CorpusSpec,
    export,
    read_records,
    records_for_paths,
    shard_files,
    stats,
    update,
    verify,
)
from trainer.corpus.mirror import sync
from trainer.corpus.spec import ENGINE_VERSION
from trainer.errors import CorpusError, RepositoryError, ShardCorrupt

ROOT = Path(__file__).resolve().parents[1]
AWS = "AKIAIOSFODNN7EXAMPLE"
GHP = "ghp_" + "Zx9Yw8Vu7T" * 4
KEY_BODY = "MIIEowIBAAKCAQEAtotallyNotARealKeyButLongEnough0123456789"


def _module(i: int, extra: str = "") -> str:
    body = "\n".join(f"    step_{i}_{k} = transform_{k % 9}(payload, weight={i * 31 + k})" for k in range(40))
    return f'"""Module {i}."""\n\ndef run_{i}(payload):\n{body}\n    return payload{extra}\n'


def _spec(repo, **kw) -> CorpusSpec:
    kw.setdefault("name", "acme")
    return CorpusSpec(url=repo.url, **kw)


def _all_text(home: Path, name: str = "acme") -> str:
    return "".join(r["text"] for s in ("train", "heldout") for r in read_records(shard_files(home, name, s)))


def _same_as_full(home: Path, repo, tmp_path: Path, **kw) -> None:
    fresh = tmp_path / f"fresh{len(list(tmp_path.glob('fresh*')))}"
    update(_spec(repo, **kw), fresh, repo.head())
    assert corpus_state(home, "acme") == corpus_state(fresh, "acme")


def test_incremental_changes_equal_full_build(make_repo, corpus_home, tmp_path):
    repo = make_repo(files=40, seed=3)
    repo.write("tools/run.sh", "#!/bin/sh\necho hello\n")
    repo.commit("more")
    first = update(_spec(repo), corpus_home)
    assert first.full and first.version == 1 and first.train_files > 30
    verify(corpus_home, "acme")

    # add, modify, delete, rename, mode change, file -> symlink, binary, vendored, lock file
    paths = sorted(p.relative_to(repo.work).as_posix() for p in repo.work.rglob("*.py"))
    repo.write("acme/new_module.py", _module(1))
    repo.write(paths[0], _module(2))
    repo.remove(paths[1])
    repo.git("mv", paths[2], "acme/renamed.py")
    repo.git("update-index", "--chmod=+x", paths[3])
    (repo.work / paths[4]).unlink()
    os.symlink("renamed.py", repo.work / paths[4])
    repo.write("assets/logo.py", b"\x89PNG\x00\x00binary")
    repo.write("vendor/lib.py", _module(3))
    repo.write("package-lock.json", "{}\n")
    second_commit = repo.commit("mixed changes")
    second = update(_spec(repo), corpus_home)
    assert not second.full and second.previous_commit == first.commit and second.commit == second_commit
    assert second.version == 2
    assert second.added >= 5 and second.modified >= 2 and second.deleted >= 2
    assert len(second.shards_touched) < 16
    skipped = stats(corpus_home, "acme")["skipped"]
    assert skipped["symlink"] == 1 and skipped["binary"] == 1 and skipped["vendored"] == 1
    assert skipped["lock-file"] == 1
    got = {r["path"] for r in read_records(shard_files(corpus_home, "acme") + shard_files(corpus_home, "acme", "heldout"))}
    assert "acme/renamed.py" in got and paths[2] not in got and paths[1] not in got
    assert records_for_paths(corpus_home, "acme", [paths[0]])[0]["text"] == _module(2)
    verify(corpus_home, "acme")
    _same_as_full(corpus_home, repo, tmp_path)

    # nothing new: no version bump
    assert update(_spec(repo), corpus_home).version == 2


def test_secrets_never_reach_shards_and_drop_policy(make_repo, corpus_home, tmp_path):
    repo = make_repo(files=10, seed=1)
    repo.write("conf/settings.py", f'AWS_KEY = "{AWS}"\nGITHUB = "{GHP}"\n\ndef get():\n    return AWS_KEY\n')
    repo.write("conf/deploy.py", f'KEY = """-----BEGIN RSA PRIVATE KEY-----\n{KEY_BODY}\n'
                                 '-----END RSA PRIVATE KEY-----"""\n')
    repo.commit("secrets")
    result = update(_spec(repo), corpus_home)
    assert result.secrets_redacted >= 3
    for shard in (corpus_home / "corpus" / "acme" / "shards").glob("*.zst"):
        raw = b"".join(r["text"].encode() for r in read_records([shard]))
        assert AWS.encode() not in raw and GHP.encode() not in raw and KEY_BODY.encode() not in raw
    assert "<SECRET>" in records_for_paths(corpus_home, "acme", ["conf/settings.py"])[0]["text"]

    dropped = update(_spec(repo, name="strict", secrets="drop"), corpus_home)
    assert dropped.skipped.get("secret") == 2
    text = _all_text(corpus_home, "strict")
    assert AWS not in text and KEY_BODY not in text and "get()" not in text


def test_heldout_duplicate_never_in_train_and_cross_repo(make_repo, corpus_home):
    from trainer.corpus import split

    repo = make_repo(files=5, seed=2)
    # find one held-out and several train paths; give all the same (and nearly the same) content
    held = next(f"lib/h{i}.py" for i in range(10_000) if split.is_heldout("acme", f"lib/h{i}.py", 0.05))
    trains = [f"lib/t{i}.py" for i in range(3)]
    repo.write(held, _module(7))
    repo.write(trains[0], _module(7))
    repo.write(trains[1], _module(7, extra=" + 0"))  # near-duplicate
    repo.write("aaa/first.py", _module(7))  # smaller path, but train: must still lose
    repo.commit("dups")
    result = update(_spec(repo), corpus_home)
    assert result.skipped["duplicate"] == 2 and result.skipped["near-duplicate"] == 1
    train = {r["path"] for r in read_records(shard_files(corpus_home, "acme"))}
    heldout = {r["path"] for r in read_records(shard_files(corpus_home, "acme", "heldout"))}
    assert held in heldout and not {trains[0], trains[1], "aaa/first.py"} & train
    assert _module(7) not in _all_text(corpus_home).replace(
        records_for_paths(corpus_home, "acme", [held])[0]["text"], "", 1)

    # Deleting the held-out file brings its best train twin back (order-independent rule).
    repo.remove(held)
    repo.commit("drop held-out")
    update(_spec(repo), corpus_home)
    kept = {r["path"] for s in ("train", "heldout") for r in read_records(shard_files(corpus_home, "acme", s))}
    assert "aaa/first.py" in kept and trains[0] not in kept

    # A second repository holding the same file: the copy is a cross-repo duplicate.
    other = make_repo(files=0)
    other.write("x/copy.py", _module(7))
    other.write("x/own.py", _module(8))
    other.commit("copy")
    res = update(CorpusSpec(name="zeta/tools", url=other.url), corpus_home)
    assert res.skipped.get("duplicate") == 1 and res.train_files + res.heldout_files == 1


def test_force_push_and_missing_old_commit(make_repo, corpus_home, tmp_path):
    repo = make_repo(files=12, seed=4)
    update(_spec(repo), corpus_home)
    repo.write("acme/feature.py", _module(11))
    repo.commit("feature")
    update(_spec(repo), corpus_home)
    # rewrite history: drop the feature commit, add something else, force push
    repo.git("reset", "-q", "--hard", "HEAD~1")
    repo.write("acme/other.py", _module(12))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "rewritten")
    repo.git("push", "-q", "--force", "origin", "HEAD:main")
    res = update(_spec(repo), corpus_home)
    assert not res.full and "acme/feature.py" in res.changed_paths
    _same_as_full(corpus_home, repo, tmp_path)
    # rewrite again, and the old commit is gone from the mirror (fetched + gc): full build
    ingested = stats(corpus_home, "acme")["commit"]
    repo.git("reset", "-q", "--hard", "HEAD~1")
    repo.write("acme/third.py", _module(13))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "third")
    repo.git("push", "-q", "--force", "origin", "HEAD:main")
    mirror = corpus_home / "mirrors" / "acme.git"
    sync(repo.url, mirror)
    subprocess.run(["git", f"--git-dir={mirror}", "reflog", "expire", "--expire=now", "--all"], check=True)
    subprocess.run(["git", f"--git-dir={mirror}", "gc", "-q", "--prune=now"], check=True)
    assert subprocess.run(["git", f"--git-dir={mirror}", "cat-file", "-e", ingested]).returncode != 0
    res = update(_spec(repo), corpus_home)
    assert res.full and res.previous_commit == ingested
    _same_as_full(corpus_home, repo, tmp_path)


def test_datasets_reads_shards_and_export(make_repo, corpus_home, tmp_path):
    import datasets

    repo = make_repo(files=30, seed=5)
    update(_spec(repo), corpus_home)
    files = [str(p) for p in shard_files(corpus_home, "acme")]
    ds = datasets.load_dataset("json", data_files=files, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert set(ds.column_names) == {"text", "path", "repo", "lang", "sha"}
    assert len(ds) == stats(corpus_home, "acme")["train_files"]
    out = tmp_path / "train.jsonl"
    n = export(corpus_home, "acme", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == len(lines) == len(ds) and set(lines[0]) == {"text", "url"}
    assert lines[0]["url"].startswith(repo.url)


def test_bad_input_errors_keep_corpus(make_repo, corpus_home, tmp_path):
    repo = make_repo(files=8, seed=6)
    update(_spec(repo), corpus_home)
    before = corpus_state(corpus_home, "acme")
    with pytest.raises(RepositoryError, match="unknown revision"):
        update(_spec(repo), corpus_home, "no-such-branch")
    with pytest.raises(RepositoryError, match="neither a URL nor an existing path"):
        update(CorpusSpec(name="ghost", url=str(tmp_path / "missing")), corpus_home)
    with pytest.raises(RepositoryError, match="cannot fetch"):
        update(CorpusSpec(name="acme", url="http://127.0.0.1:9/nothing.git"), corpus_home)
    with pytest.raises(CorpusError, match="no corpus named"):
        stats(corpus_home, "nope")
    assert corpus_state(corpus_home, "acme") == before

    shard = shard_files(corpus_home, "acme")[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCorrupt, match="does not match the checksum"):
        verify(corpus_home, "acme")
    repo.write(shard_path := "acme/zz_fix.py", _module(21))
    repo.commit("x")
    res = update(_spec(repo), corpus_home, full=True)  # the documented repair
    assert res.full and shard_path in {r["path"] for s in ("train", "heldout")
                                       for r in read_records(shard_files(corpus_home, "acme", s))}
    verify(corpus_home, "acme")


_CHILD = textwrap.dedent("""
    import os, signal, sys, resource
    from trainer.corpus import CorpusSpec, update
    from trainer.corpus import update as u
    mode, url, home, stage = sys.argv[1:5]
    if mode == "kill":
        def hook(s):
            if s == stage:
                os.kill(os.getpid(), signal.SIGKILL)
        sys.modules["trainer.corpus.update"]._test_hook = hook
    else:  # disk full: files may not grow past 20 kB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    try:
        update(CorpusSpec(name="acme", url=url, num_shards=1), home)
    except Exception as exc:
        print(type(exc).__name__, exc)
        sys.exit(3)
""")


def _child(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


@pytest.mark.parametrize("stage", ["staged", "before-commit", "committed"])
def test_sigkill_mid_update_keeps_corpus_and_recovers(make_repo, corpus_home, tmp_path, stage):
    repo = make_repo(files=15, seed=7)
    update(CorpusSpec(name="acme", url=repo.url, num_shards=1), corpus_home)
    old_records = list(read_records(shard_files(corpus_home, "acme")))
    repo.write("acme/late.py", _module(31))
    repo.remove(old_records[0]["path"])
    repo.commit("change")
    done = _child("kill", repo.url, str(corpus_home), stage)
    assert done.returncode == -9, done.stderr
    if stage != "committed":  # before the commit point: the old corpus, untouched and valid
        verify(corpus_home, "acme")
        assert list(read_records(shard_files(corpus_home, "acme"))) == old_records
    else:  # after it: readers roll the update forward
        verify(corpus_home, "acme")
        assert "acme/late.py" in {r["path"] for s in ("train", "heldout")
                                  for r in read_records(shard_files(corpus_home, "acme", s))}
    update(CorpusSpec(name="acme", url=repo.url, num_shards=1), corpus_home)
    assert not list((corpus_home / "corpus" / "acme" / "shards").glob(".*"))
    fresh = tmp_path / "fresh"
    update(CorpusSpec(name="acme", url=repo.url, num_shards=1), fresh)
    assert corpus_state(corpus_home, "acme") == corpus_state(fresh, "acme")


def test_disk_full_keeps_last_good_corpus(make_repo, corpus_home):
    repo = make_repo(files=10, seed=8)
    update(CorpusSpec(name="acme", url=repo.url, num_shards=1), corpus_home)
    before = corpus_state(corpus_home, "acme")
    rng = random.Random(0)
    for i in range(60):  # enough new source that the one shard outgrows the 20 kB limit
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7)) for _ in range(500)]
        repo.write(f"bulk/m{i}.py", _module(100 + i) + "".join(
            f"# {' '.join(words[k:k + 10])}\n" for k in range(0, 500, 10)))
    repo.commit("bulk")
    sync(repo.url, corpus_home / "mirrors" / "acme.git")  # fetch first: only the shard write must fail
    done = _child("disk", repo.url, str(corpus_home), "-")
    assert done.returncode == 3 and "CorpusError" in done.stdout, done.stdout
    assert corpus_state(corpus_home, "acme") == before
    verify(corpus_home, "acme")
    assert update(CorpusSpec(name="acme", url=repo.url, num_shards=1), corpus_home).train_files > 60


def test_cli_build_update_stats_export(make_repo, tmp_path):
    from bot.cli import cli

    repo = make_repo(files=12, seed=9, name="billing")
    home = tmp_path / "clihome"
    runner = CliRunner()
    res = runner.invoke(cli, ["corpus", "build", str(repo.bare), "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "billing: full build" in res.output
    repo.write("acme/cli.py", _module(41))
    repo.commit("cli")
    res = runner.invoke(cli, ["corpus", "update", "billing", "--home", str(home)])
    assert res.exit_code == 0 and "+1 ~0 -0" in res.output, res.output
    res = runner.invoke(cli, ["corpus", "stats", "billing", "--home", str(home)])
    assert res.exit_code == 0 and "held-out files" in res.output and "version" in res.output
    res = runner.invoke(cli, ["corpus", "stats", "billing", "--json", "--home", str(home)])
    assert json.loads(res.output)["version"] == 2
    out = tmp_path / "h.jsonl"
    res = runner.invoke(cli, ["corpus", "export", "billing", "--out", str(out), "--split", "heldout",
                              "--home", str(home)])
    assert res.exit_code == 0 and out.exists(), res.output
    res = runner.invoke(cli, ["corpus", "update", "billing", "--to", "nope", "--home", str(home)])
    assert res.exit_code == 1 and "unknown revision" in res.output


def test_shard_count_follows_split_size_and_incremental_equals_full(make_repo, corpus_home, tmp_path):
    """A split that outgrows TARGET_SHARD_BYTES per shard doubles its shards (and halves them
    when it shrinks); the update that crosses the line equals a full build."""
    from trainer.corpus import shards

    def big(i: int) -> str:  # ~6 KB of distinct code
        return _module(i) + "".join(f"\n\ndef extra_{i}_{k}(x):\n    return x * {i * 97 + k}\n" for k in range(90))

    repo = make_repo(files=0)
    for i in range(10):
        repo.write(f"pkg/m{i:03d}.py", big(i))
    repo.commit("small")
    spec = CorpusSpec(name="acme", url=repo.url, num_shards=1, heldout_fraction=0.0, heldout_min=0)
    update(spec, corpus_home)
    assert [p.name for p in shard_files(corpus_home, "acme")] == ["train-00.jsonl.zst"]

    for i in range(10, 40):
        repo.write(f"pkg/m{i:03d}.py", big(i))
    repo.commit("grow")
    res = update(spec, corpus_home)
    size = stats(corpus_home, "acme")["train_bytes"]
    assert size > shards.TARGET_SHARD_BYTES and not res.full and res.train_files == 40
    n = shards.shard_count(1, size)
    assert n >= 2 and len(shard_files(corpus_home, "acme")) == n
    verify(corpus_home, "acme")
    fresh = tmp_path / "fresh"
    update(spec, fresh)
    assert corpus_state(corpus_home, "acme") == corpus_state(fresh, "acme")

    for i in range(5, 40):
        repo.remove(f"pkg/m{i:03d}.py")
    repo.commit("shrink")
    update(spec, corpus_home)
    assert [p.name for p in shard_files(corpus_home, "acme")] == ["train-00.jsonl.zst"]
    verify(corpus_home, "acme")
    fresh2 = tmp_path / "fresh2"
    update(spec, fresh2)
    assert corpus_state(corpus_home, "acme") == corpus_state(fresh2, "acme")


def test_full_rebuild_logs_why(make_repo, corpus_home, caplog):
    """An existing corpus rebuilt for a new engine says which versions and why (issue 13: every
    corpus is rebuilt once with the widened secrets scanner); a settings change names the keys."""
    repo = make_repo(files=8, seed=5)
    update(_spec(repo), corpus_home)
    conn = sqlite3.connect(corpus_home / "corpus" / "acme" / "manifest.sqlite")
    with conn:  # what engine 3 wrote
        conn.execute("UPDATE meta SET value=replace(value, ?, ?) WHERE key='fingerprint'",
                     (f'"engine": {ENGINE_VERSION}', '"engine": 3'))
    conn.close()
    with caplog.at_level(logging.INFO, logger="trainer.corpus.update"):
        assert update(_spec(repo), corpus_home).full
        assert not update(_spec(repo), corpus_home).full  # rebuilt once, then current
        assert update(_spec(repo, secrets="drop"), corpus_home).full
    lines = [r.getMessage() for r in caplog.records if "full rebuild" in r.getMessage()]
    assert lines == [f"corpus acme: full rebuild, engine version 3 -> {ENGINE_VERSION} "
                     "(4: secrets scanner widened (unquoted/env/URL/PEM-body/vendor-token values now redacted))",
                     "corpus acme: full rebuild, settings changed: secrets"], lines
