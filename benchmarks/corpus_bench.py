"""Corpus engine benchmark: full build and a 10-file incremental update of a generated repo.

    taskset -c 1 .venv/bin/python benchmarks/corpus_bench.py            # 20k files (~78 MB)
    taskset -c 1 .venv/bin/python benchmarks/corpus_bench.py --quick    # 2k files

Prints the secrets scanner alone first: MB/s (CPU and wall, median of 3) of ``scrub`` on generated
files, beside "detect-secrets on every line" (the slow reference, on a sample) and the fast path's recall
against that reference on the sample; then the whole per-file work of a scan worker on one core (the
ceiling of a full build per core). Then files/s and MB/s of the full build (after the mirror clone, which is timed apart), the
10-file update time (median of --updates rounds, each a new commit of 10 modified files,
git fetch included) and the full/incremental ratio. Wall times, and CPU seconds of this
process plus its children (git; the scan workers of a full build, ``--workers``), because on a
shared machine the wall time also holds other programs' work. Targets (one core): >= 20 MB/s, update < 1 s and >= 50x faster than the full
build.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from trainer.corpus import CorpusSpec, update
from trainer.corpus._rows import process_many
from trainer.corpus._secret_reference import judge_line, reference_secrets
from trainer.corpus.mirror import sync
from trainer.corpus.secrets import _redact_line, scrub

WORDS = ["invoice", "customer", "ledger", "payment", "refund", "order", "account", "report", "shipment", "coupon", "quota", "tenant", "session", "audit", "ticket", "cache", "queue", "batch", "record", "window", "filter", "buffer", "parser", "token", "stream", "handler", "client", "server", "worker", "config", "metric", "event", "route", "policy", "schema", "index"]
VERBS = ["load", "save", "validate", "render", "sync", "archive", "reconcile", "export", "notify", "resolve", "compute", "publish"]


def _ident(rng: random.Random) -> str:
    return "_".join(rng.sample(WORDS, 2)) + str(rng.randrange(1000))


def _python_file(rng: random.Random, target: int) -> str:
    out = [f'"""{" ".join(rng.sample(WORDS, 6)).capitalize()}."""', "", "import logging",
           f"from acme.{rng.choice(WORDS)} import {_ident(rng).title().replace('_', '')}", "", ""]
    while sum(map(len, out)) < target:
        name, arg = f"{rng.choice(VERBS)}_{_ident(rng)}", _ident(rng)
        out += [f"def {name}({arg}, limit={rng.randrange(100)}):",
                f'    """{rng.choice(VERBS).capitalize()} {" ".join(rng.sample(WORDS, 4))}."""']
        for _ in range(rng.randint(3, 9)):
            out.append(f"    {_ident(rng)} = {arg}.{rng.choice(VERBS)}({_ident(rng)!r}, {rng.randrange(10**6)})")
        out += [f"    if {arg} is None:", f"        raise ValueError('{' '.join(rng.sample(WORDS, 3))}')",
                f"    return {arg}", "", ""]
    return "\n".join(out)


def _js_file(rng: random.Random, target: int) -> str:
    out = [f"// {' '.join(rng.sample(WORDS, 5))}", "import { api } from '@acme/http';", ""]
    while sum(map(len, out)) < target:
        fn = f"{rng.choice(VERBS)}{_ident(rng).title().replace('_', '')}"
        out += [f"export async function {fn}(id, opts = {{}}) {{"]
        for _ in range(rng.randint(3, 8)):
            out.append(f"  const {_ident(rng)} = await api.{rng.choice(VERBS)}(`/{rng.choice(WORDS)}/${{id}}`, {rng.randrange(10**5)});")
        out += ["  return opts;", "}", ""]
    return "\n".join(out)


def generate(root: Path, files: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        target = rng.randint(2000, 5000)
        pkg = f"{rng.choice(WORDS)}{i % 97}"
        if rng.random() < 0.75:
            rel, text = f"src/{pkg}/{rng.choice(VERBS)}_{i}.py", _python_file(rng, target)
        else:
            rel, text = f"web/{pkg}/{rng.choice(WORDS)}{i}.js", _js_file(rng, target)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        total += len(text)
    return total


def _git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its finished children (git)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _cpu()
    return now[0] - start[0], now[1] - start[1]


def scanner_bench(files: int, reference_files: int, seed: int = 0) -> None:
    """Scanner-only throughput (CPU seconds: the machine is shared) and the reference beside it."""
    rng = random.Random(seed)
    texts = [(_python_file if rng.random() < 0.75 else _js_file)(rng, rng.randint(2000, 5000))
             for _ in range(files)]
    secret_lines = [f'DB_PASSWORD = "{rng.randrange(10**12):x}Zq!"', "export API_TOKEN=" + "k3Yx9" * 6,
                    "url: postgres://app:Pa55w0rd9@db:5432/app"]
    for i in range(0, files, 50):  # a few secrets, so the redaction path is timed too
        texts[i] += "\n" + secret_lines[i % len(secret_lines)] + "\n"
    nbytes = sum(len(t.encode()) for t in texts)
    scrub('password = "warm-up-detect-secrets"\n')  # its import and settings: once per process
    rounds = []  # (CPU s, wall s): the median of 3, each with cold line caches, as a build sees
    for _ in range(3):
        _redact_line.cache_clear()
        judge_line.cache_clear()
        t, w = time.process_time(), time.perf_counter()
        found = sum(scrub(text)[1] for text in texts)
        rounds.append((time.process_time() - t, time.perf_counter() - w))
    fast_s, fast_wall = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
    sample = texts[:reference_files]
    lines = [ln for text in sample for ln in text.split("\n")]
    t = time.process_time()
    flagged = [ln for ln in lines if reference_secrets(ln, "x.py")]
    ref_s = time.process_time() - t
    missed = [ln for ln in flagged if scrub(ln)[1] == 0]
    sample_mb = sum(len(text.encode()) for text in sample) / 1e6
    print(f"secrets scanner: {nbytes / 1e6 / fast_s:.1f} MB/s CPU ({nbytes / 1e6 / fast_wall:.1f} MB/s wall; "
          f"median of 3) over {files} files ({found} redacted); "
          f"detect-secrets on every line: {sample_mb / ref_s:.2f} MB/s CPU over {len(lines)} lines "
          f"({len(flagged)} flagged, fast path missed {len(missed)}: recall "
          f"{1 - len(missed) / len(flagged) if flagged else 1:.3f})")
    per_file_bench(texts, nbytes)


def per_file_bench(texts: list[str], nbytes: int) -> None:
    """The whole per-file work of a build (content filters, secrets, MinHash, the record's JSON
    line: what one scan worker does) on one core: the ceiling a full build can reach per core."""
    spec = CorpusSpec(name="bench", url="bench")
    blobs = [(t.encode(), f"src/f{i}.py", "Python", f"{i:040x}") for i, t in enumerate(texts)]
    rounds = []
    for _ in range(3):
        _redact_line.cache_clear()
        judge_line.cache_clear()
        t = time.process_time()
        for i in range(0, len(blobs), 64):  # the scan workers' batch size
            process_many(blobs[i:i + 64], spec)
        rounds.append(time.process_time() - t)
    print(f"per-file work (filters, secrets, MinHash, record line) on one core: "
          f"{nbytes / 1e6 / statistics.median(rounds):.1f} MB/s CPU (median of 3)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 files")
    ap.add_argument("--shards", type=int, default=CorpusSpec.num_shards,
                    help="minimum shards per split (the engine doubles them as a split grows)")
    ap.add_argument("--updates", type=int, default=3, help="10-file update rounds (median reported)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes for the full build's per-file work (default: the cores this "
                         "process may use, so 1 under `taskset -c 1`); updates stay in one process")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the full build (CPU time; the updating process only, not its workers)")
    ap.add_argument("--scanner-files", type=int, default=3_000, help="files for the scanner-only run")
    ap.add_argument("--reference-files", type=int, default=40,
                    help="files whose every line detect-secrets scans (the slow reference)")
    args = ap.parse_args()
    files = 2_000 if args.quick else args.files
    scanner_bench(args.scanner_files, args.reference_files)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        t = time.perf_counter()
        nbytes = generate(work, files)
        _git(work, "init", "-q", "-b", "main")
        _git(work, "add", "-A")
        _git(work, "-c", "gc.auto=0", "commit", "-q", "-m", "import")
        # Pack the 20k loose objects now, as any real repository is: else `git commit` (and,
        # in the hard-linked mirror, `git fetch`) start a detached `gc --auto` that competes
        # with the timed build for the same core.
        _git(work, "gc", "-q")
        print(f"generated {files} files, {nbytes / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
        spec = CorpusSpec(name="bench", url=str(work), num_shards=args.shards)
        home = root / "home"
        t = time.perf_counter()
        sync(spec.url, home / "mirrors" / "bench.git")
        print(f"mirror clone: {time.perf_counter() - t:.2f}s")
        # Flush the generator's ~200 MB of dirty files now, or the build's first fsync (ext4
        # journal ordering) would wait for them and time the setup instead of the build.
        os.sync()
        t, c = time.perf_counter(), _cpu()
        if args.profile:
            import cProfile
            import pstats
            prof = cProfile.Profile(time.process_time)
            res = prof.runcall(update, spec, home, workers=args.workers)
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        else:
            res = update(spec, home, workers=args.workers)
        full_s, (full_py, full_git) = time.perf_counter() - t, _since(c)
        full_cpu = full_py + full_git
        print(f"full build: {full_s:.2f}s wall ({full_cpu:.2f}s CPU = {full_py:.2f} Python + {full_git:.2f} "
              f"children: git and {args.workers or 'one per core'} scan worker(s) when > 1), "
              f"{files / full_s:,.0f} files/s, "
              f"{nbytes / 1e6 / full_s:.1f} MB/s wall, {nbytes / 1e6 / full_cpu:.1f} MB/s CPU "
              f"({res.train_files} train, {res.heldout_files} held-out, skipped {res.skipped}, "
              f"{len(res.shards_touched)} shards)")
        rng = random.Random(1)
        walls, cpus, gits = [], [], []
        for _ in range(args.updates):
            changed = rng.sample(sorted(p for p in work.rglob("*.py")), 10)
            for p in changed:
                p.write_text(p.read_text() + f"\n\ndef bench_extra_{rng.randrange(10**6)}():\n    return 1\n")
            _git(work, "commit", "-q", "-am", "ten files")
            os.sync()
            t, c = time.perf_counter(), _cpu()
            res = update(spec, home)
            walls.append(time.perf_counter() - t)
            py, gt = _since(c)
            cpus.append(py + gt)
            gits.append(gt)
            assert res.modified == 10 and not res.full
        inc_s, inc_cpu = statistics.median(walls), statistics.median(cpus)
        print(f"10-file update: {inc_s * 1000:.0f} ms wall ({inc_cpu * 1000:.0f} ms CPU, of which "
              f"{statistics.median(gits) * 1000:.0f} ms git incl. fetch), median of "
              f"{args.updates} [{', '.join(f'{w * 1000:.0f}' for w in walls)} ms]; modified "
              f"{res.modified}, {len(res.shards_touched)} shards rewritten")
        print(f"full/incremental ratio: {full_s / inc_s:.0f}x wall, {full_cpu / inc_cpu:.0f}x CPU")


if __name__ == "__main__":
    main()
