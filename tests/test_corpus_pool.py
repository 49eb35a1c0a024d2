"""The scan pool of large updates (trainer.corpus._pool): same corpus as one process, workers
only where they pay, and none left behind when the update dies or a worker does.

One generated repository of ~1,500 files (~5 MB, above ``_pool.MIN_BYTES``) with secrets and
exact and near duplicates, built in real homes against a real git mirror.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.corpus import corpus_state
from trainer.corpus import CorpusSpec, _pool, stats, update
from trainer.errors import CorpusError

ROOT = Path(__file__).resolve().parents[1]
FILES = 1500
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def _module(rng: random.Random, i: int) -> str:
    lines = [f'"""Module {i}."""', "import os", ""]
    size, target = 0, rng.randint(2000, 5000)
    while size < target:
        block = [f"def step_{rng.randrange(10**6)}(x, limit={rng.randrange(100)}):"]
        block += [f"    y{k} = x.call_{rng.randrange(99)}({rng.randrange(10**6)})" for k in range(rng.randint(3, 8))]
        block += ["    return x", "", ""]
        lines += block
        size += sum(map(len, block)) + len(block)
    if i % 50 == 0:
        lines.append('AWS_KEY = "AKIA' + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)) + '"')
    if i % 40 == 0:
        lines.append(f"DB_PASSWORD = 'hunter{i}xq9Zr'")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    """A packed repository above the pool threshold; every 100th file repeats the one before
    it, every 100th + 1 the one before it plus a line (a near duplicate)."""
    work = tmp_path_factory.mktemp("pool") / "work"
    rng = random.Random(7)
    total, previous = 0, ""
    for i in range(FILES):
        text = _module(rng, i)
        if i % 100 == 0 and previous:
            text = previous
        elif i % 100 == 1 and previous:
            text = previous + "# one more line\n"
        path = work / f"pkg{i % 31}" / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        total += len(text)
        previous = text
    assert total > 2 * _pool.MIN_BYTES  # the pool must be in play, with room to spare
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "start"), ("gc", "-q")):
        _git(work, *args)
    return work


def _children_named_like_me() -> set[int]:
    """Live child processes running this interpreter's program (the forked workers; git's
    children are named ``git``)."""
    me = Path("/proc/self/comm").read_text()
    kids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if Path(f"/proc/{pid}/comm").read_text() == me:
                    kids.add(int(pid))
            except FileNotFoundError:
                continue
    return kids


def _scan_watcher(seen: list[set[int]]):
    def progress(event: dict) -> None:
        if event["stage"] == "scan":
            seen.append(_children_named_like_me())
    return progress


def test_pool_build_equals_one_process_build(big_repo, tmp_path):
    spec = CorpusSpec(name="big", url=str(big_repo))
    seen_one: list[set[int]] = []
    seen_pool: list[set[int]] = []
    update(spec, tmp_path / "one", workers=1, progress=_scan_watcher(seen_one))
    update(spec, tmp_path / "pool", workers=3, progress=_scan_watcher(seen_pool))
    assert seen_one and not any(seen_one), "workers=1 must scan in the updating process"
    assert max(len(s) for s in seen_pool) == 3, seen_pool
    assert _children_named_like_me() == set(), "the pool must be reaped when the scan ends"
    one, pool = corpus_state(tmp_path / "one", "big"), corpus_state(tmp_path / "pool", "big")
    assert one == pool
    summary = stats(tmp_path / "pool", "big")
    assert summary["secrets_redacted"] >= FILES // 50
    assert summary["skipped"].get("duplicate", 0) >= FILES // 100 - 1
    assert summary["skipped"].get("near-duplicate", 0) >= 1


def test_small_update_stays_in_process(big_repo, tmp_path):
    spec = CorpusSpec(name="big", url=str(big_repo))
    home = tmp_path / "home"
    update(spec, home, workers=1)
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(big_repo), str(clone))
    for i in (3, 4, 5):
        p = clone / f"pkg{i % 31}" / f"mod_{i}.py"
        p.write_text(p.read_text() + f"\n\ndef extra_{i}():\n    return {i}\n")
    _git(clone, "commit", "-qam", "three files")
    seen: list[set[int]] = []
    result = update(CorpusSpec(name="big", url=str(clone)), home, workers=4, progress=_scan_watcher(seen))
    assert (result.full, result.modified) == (False, 3)
    assert seen and not any(seen), "a 3-file update must not start workers"


_KILLER = """
import os, signal, sys
from pathlib import Path
from trainer.corpus import CorpusSpec, update

def progress(event):
    if event["stage"] == "scan" and event["done"] > 0:
        me = Path("/proc/self/comm").read_text()
        kids = [pid for task in Path("/proc/self/task").iterdir()
                for pid in (task / "children").read_text().split()
                if Path(f"/proc/{pid}/comm").read_text() == me]
        Path(sys.argv[3]).write_text(" ".join(kids))
        os.kill(os.getpid(), signal.SIGKILL)

update(CorpusSpec(name="big", url=sys.argv[1]), sys.argv[2], workers=2, progress=progress)
"""


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, waiting for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_killed_update_leaves_no_workers_and_no_lock(big_repo, tmp_path):
    home, pids_file = tmp_path / "home", tmp_path / "pids"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(big_repo), str(home), str(pids_file)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    workers = [int(p) for p in pids_file.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table: there is no event to wait on for a stranger's exit
    assert all(_gone(p) for p in workers), f"workers {workers} outlived their SIGKILLed parent"
    with open(home / "corpus" / "big" / ".lock", "w") as fh:  # nothing holds the corpus lock now
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh, fcntl.LOCK_UN)
    spec = CorpusSpec(name="big", url=str(big_repo))
    update(spec, home, workers=2)
    update(spec, tmp_path / "reference", workers=1)
    assert corpus_state(home, "big") == corpus_state(tmp_path / "reference", "big")


def test_dead_worker_fails_the_update_and_keeps_the_corpus(big_repo, tmp_path):
    spec = CorpusSpec(name="big", url=str(big_repo))
    home = tmp_path / "home"
    update(spec, home, workers=1)
    before = corpus_state(home, "big")
    killed: list[int] = []

    def progress(event: dict) -> None:
        if event["stage"] == "scan" and event["done"] > 0 and not killed:
            killed.extend(_children_named_like_me())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(CorpusError, match="scan worker .* exited"):
        update(spec, home, full=True, workers=2, progress=progress)
    assert len(killed) == 2
    assert _children_named_like_me() == set()
    assert corpus_state(home, "big") == before


# --------------------------------------------------------------------------- the per-file work

def _signature_alone(data: bytes):
    """The per-file MinHash as engine 4 first computed it (the oracle for the batched one)."""
    import numpy as np

    from trainer.corpus import dedupe

    if len(data) < dedupe.MIN_BYTES:
        return None
    grams = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, offset=0, strides=(1,))
    h = grams * dedupe._MUL
    h ^= h >> np.uint64(31)
    h *= dedupe._MUL2
    h ^= h >> np.uint64(29)
    sig = np.full(dedupe.NUM_PERM, dedupe._EMPTY, dtype=np.uint32)
    np.minimum.at(sig, (h >> np.uint64(57)).astype(np.intp), (h & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    empty = sig == dedupe._EMPTY
    if empty.any():
        full, idx = np.flatnonzero(~empty), np.flatnonzero(empty)
        sig[idx] = sig[full[np.searchsorted(full, idx) % len(full)]] ^ np.uint32(0x5BD1E995) * (
            idx.astype(np.uint32) + 1)
    return sig


def test_batched_signatures_equal_one_at_a_time():
    """Signatures of a batch (one numpy pass, bins offset per file) are each file's own, as
    the per-file code computed them (stored signatures and dedupe decisions stay the same)."""
    import numpy as np

    from trainer.corpus import dedupe

    rng = random.Random(3)
    datas = [bytes(rng.randrange(256) for _ in range(n)) for n in (0, 7, 8, 199, 200, 201, 230, 300, 4000)]
    datas += [b"a" * 250, b"ab" * 300, _module(rng, 1).encode(), _module(rng, 2).encode()]
    rng.shuffle(datas)
    batch = dedupe.signatures(datas)
    for data, sig in zip(datas, batch, strict=True):
        alone = _signature_alone(data)
        assert (sig is None) == (alone is None) == (len(data) < dedupe.MIN_BYTES)
        if sig is not None:
            assert np.array_equal(sig, alone), len(data)
    assert any(s is not None and len(d) < 300 for d, s in zip(datas, batch, strict=True))  # densified bins
