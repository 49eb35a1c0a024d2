"""Property: after any sequence of commits, the incremental corpus equals a full build, and
after every step each split's shards hold exactly the manifest's rows for it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.base import WorkRepo, git
from tests.fixtures.corpus import corpus_state
from tests.test_corpus_consistency import assert_shards_match_manifest
from trainer.corpus import CorpusSpec, update

PATHS = [f"{d}/{n}.py" for d in ("app", "lib", "vendor", "tests") for n in ("a", "b", "c", "d")]
BODIES = [
    "\n".join(f"    value_{i}_{k} = combine_{k % 5}(record, slot={i * 17 + k})" for k in range(30))
    for i in range(4)
]


def _content(kind: str, variant: int) -> str | bytes:
    body = BODIES[variant % len(BODIES)]
    if kind == "near":  # a near-duplicate of the same body
        return f"def run():\n{body}\n    return {variant}\n"
    if kind == "secret":
        return f'KEY = "AKIAIOSFODNN7EXAMPL{variant % 10}"\ndef run():\n{body}\n'
    if kind == "binary":
        return b"\x00\x01binary" + bytes([variant])
    return f"def run():\n{body}\n"  # exact duplicates across paths with the same variant


op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.sampled_from(["code", "near", "secret", "binary"]),
              st.integers(0, 5)),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.just(""), st.just(0)),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS), st.just(0)),
)


def _apply(repo: WorkRepo, ops) -> None:
    for kind, path, arg, n in ops:
        exists = (repo.work / path).exists()
        if kind == "write":
            repo.write(path, _content(arg, n))
        elif kind == "delete" and exists:
            (repo.work / path).unlink()  # commit() stages with `git add -A`
        elif kind == "rename" and exists and arg != path and not (repo.work / arg).exists():
            (repo.work / arg).parent.mkdir(parents=True, exist_ok=True)
            (repo.work / path).rename(repo.work / arg)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commits=st.lists(st.lists(op, min_size=1, max_size=5), min_size=1, max_size=4),
       secrets=st.sampled_from(["redact", "drop"]),
       # fraction 0 with a minimum: every held-out file is a pin, made by full builds and updates
       heldout=st.sampled_from([(0.3, 0), (0.3, 1), (0.0, 1), (0.0, 2)]))
def test_incremental_equals_full_build(commits, secrets, heldout):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare, work = root / "forge.git", root / "work"
        work.mkdir()
        git(root, "init", "-q", "--bare", "-b", "main", bare.name)
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", bare.as_uri())
        repo = WorkRepo(work, bare)
        repo.write("app/main.py", _content("code", 9))
        repo.commit("start")
        fraction, minimum = heldout
        spec = CorpusSpec(name="prop", url=repo.url, heldout_fraction=fraction, heldout_min=minimum,
                          secrets=secrets, num_shards=2)
        home = root / "home"
        assert_shards_match_manifest(home, "prop", update(spec, home))
        for ops in commits:
            _apply(repo, ops)
            repo.commit("step")
            assert_shards_match_manifest(home, "prop", update(spec, home))
        # A full rebuild keeps the pins, so it must reproduce the incremental state exactly.
        rebuilt = root / "rebuilt"
        shutil.copytree(home, rebuilt)
        assert_shards_match_manifest(rebuilt, "prop", update(spec, rebuilt, full=True))
        assert corpus_state(home, "prop") == corpus_state(rebuilt, "prop")
        fresh = root / "fresh"
        assert_shards_match_manifest(fresh, "prop", update(spec, fresh))
        if minimum == 0:  # with a minimum, a fresh home pins from its own first build instead
            assert corpus_state(home, "prop") == corpus_state(fresh, "prop")
