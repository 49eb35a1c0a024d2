"""Full corpus builds of this tree against another checkout, alternated on one generated repo.

    git worktree add /tmp/base e43ef82
    .venv/bin/python benchmarks/corpus_compare.py --against /tmp/base              # both cores
    .venv/bin/python benchmarks/corpus_compare.py --against /tmp/base --one-core   # taskset -c 1

On a shared machine a single wall time says little; alternating the two trees, round after
round, on the same repository and printing user, system and child CPU beside the wall time
shows which engine costs more. Each build runs in its own process with ``PYTHONPATH`` set to its
tree, into a fresh home (the mirror clone is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BUILD = """
import os, resource, sys, time
from pathlib import Path
from trainer.corpus import CorpusSpec, update
from trainer.corpus.mirror import sync
home, repo = Path(sys.argv[1]), sys.argv[2]
spec = CorpusSpec(name="bench", url=repo)
sync(spec.url, home / "mirrors" / "bench.git")
os.sync()
def usage():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime, me.ru_stime, kids.ru_utime + kids.ru_stime
t0, u0 = time.perf_counter(), usage()
update(spec, home)
wall, u1 = time.perf_counter() - t0, usage()
print(f"{wall:.2f} {u1[0] - u0[0]:.2f} {u1[1] - u0[1]:.2f} {u1[2] - u0[2]:.2f}")
"""


def make_repo(root: Path, files: int) -> int:
    """The corpus_bench generator's files, committed and packed; returns their bytes."""
    sys.path.insert(0, str(HERE))
    from corpus_bench import generate

    nbytes = generate(root, files)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "gc.auto=0", "commit", "-q", "-m", "x"],
                 ["gc", "-q"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return nbytes


def build(tree: Path, repo: Path, work: Path, one_core: bool) -> tuple[list[float], dict]:
    """(wall, user, system, children) seconds of one full build with ``tree``'s engine, and
    the checksums of the shards it wrote (from its ``corpus.json``)."""
    home = Path(tempfile.mkdtemp(dir=work))
    cmd = ([*(["taskset", "-c", "1"] if one_core else []), sys.executable, "-c", BUILD, str(home), str(repo)])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    shards = json.loads((home / "corpus" / "bench" / "corpus.json").read_text())["shards"]
    return [float(x) for x in out.split()[-4:]], {name: s["sha256"] for name, s in shards.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, required=True, help="another checkout (e.g. a worktree of an old commit)")
    ap.add_argument("--files", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one-core", action="store_true", help="pin every build to CPU 1 (taskset)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = work / "repo"
        repo.mkdir()
        mb = make_repo(repo, args.files) / 1e6
        print(f"{args.files} files, {mb:.1f} MB; {'one core' if args.one_core else 'all cores'}")
        for _ in range(args.rounds):
            written = []
            for name, tree in (("against", args.against.resolve()), ("this", ROOT)):
                (wall, user, system, kids), shards = build(tree, repo, work, args.one_core)
                written.append(shards)
                print(f"  {name:8} wall {wall:5.2f} s ({mb / wall:5.1f} MB/s)  user {user:5.2f}  "
                      f"sys {system:5.2f}  children {kids:5.2f}   {tree}")
            # Byte-identical shards unless the two engines' versions differ on purpose.
            print(f"  same shard bytes: {'yes' if written[0] == written[1] else 'NO'} ({len(written[1])} shards)")


if __name__ == "__main__":
    main()
