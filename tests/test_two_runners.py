"""Two runners, one home: several `repotune worker` processes on one REPOTUNE_HOME and one Redis.

What docs/operations.md promises for N runners, checked with real worker processes (the forking
worker, as deployed), real git repositories, the real corpus and a tiny model trained on CPU:

- two gpu runners never train one model at once, even when a run's next step waited in the
  queue longer than its lease while a retrain was asked for;
- two ingest runners never corrupt a corpus under concurrent pushes;
- a gpu runner SIGKILLed mid-training leaves a home that parses and verifies, and its run is
  failed as ``abandoned`` within a lease, freeing the model.

Leases are 2 s here (``policy.lock_lease_seconds``), so every wait below is a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
import redis
from rq import Worker
from rq.job import Job

from bot import config, scheduler
from bot.queue import get_queue
from bot.runs import RunRecord, RunStatus, list_runs, load_run, run_dir
from bot.webhook import create_app
from tests.fixtures.bot import SECRET_ENV, github_headers, github_push, settings_toml
from trainer import corpus
from trainer.finetune import last_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 2


def write_config(tmp_path: Path, redis_url: str, repo_url: str, base: Path, **training: t.Any) -> Path:
    """repotune.toml for a shared home: short leases, tiny CPU training, a gate that always says
    no (margin 10), so a run ends at ``rejected`` without Triton."""
    policy = {"debounce_seconds": 0, "lock_lease_seconds": LEASE_S}
    text = settings_toml(tmp_path / "home", redis_url, repo_url, policy=policy)
    train = {"base_model": str(base), "deepspeed": "none", "max_steps": 2, "block_size": 64,
             "log_every": 1, "eval_every": 1000, "save_every": 1000, "max_eval_blocks": 2, **training}
    text += "\n[training]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    text += ("\n[evaluation]\nnum_tasks = 2\nbootstrap = 10\nmax_new_tokens = 2\nblock_max_new_tokens = 2\n"
             "margin = 10.0\nforward_tasks = 0\n")
    path = tmp_path / "repotune.toml"
    path.write_text(text, encoding="utf-8")
    return path


class Runners:
    """`repotune worker --queues Q` processes, each the leader of its own process group (so a
    SIGKILL of the group takes its forked work horse too, as a lost machine would)."""

    def __init__(self, config_path: Path, logs: Path) -> None:
        self.config_path, self.logs = config_path, logs
        self.procs: list[subprocess.Popen] = []

    def start(self, queue: str, count: int, connection: redis.Redis) -> None:
        env = dict(os.environ, **SECRET_ENV, REPOTUNE_CONFIG=str(self.config_path), PYTHONPATH=str(ROOT))
        before = len(Worker.all(connection=connection))
        for _ in range(count):
            log = (self.logs / f"worker-{len(self.procs)}-{queue}.log").open("wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bot", "worker", "--queues", queue], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        wait_for(lambda: len(Worker.all(connection=connection)) >= before + count, 60,
                 f"{count} {queue} workers to register", self)

    def kill_group(self, pid: int) -> None:
        """SIGKILL a runner as a lost machine would end it: its process group and the group of its
        work horse (RQ puts the horse in a process group of its own, out of reach of the first)."""
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)
        next(p for p in self.procs if p.pid == pid).wait(10)

    def check_alive(self) -> None:
        for proc in self.procs:
            assert proc.poll() is None or proc.returncode == -signal.SIGKILL, self.tail()

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill_group(proc.pid)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc: Linux only, like the rest of this test)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


@pytest.fixture
def runners(tmp_path: Path) -> t.Iterator[t.Callable[[Path], Runners]]:
    made: list[Runners] = []

    def _make(config_path: Path) -> Runners:
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        made.append(Runners(config_path, logs))
        return made[-1]

    yield _make
    for r in made:
        r.stop()


def wait_for(check: t.Callable[[], t.Any], timeout: float, what: str, runners: Runners | None = None,
              every: t.Callable[[], None] | None = None) -> t.Any:
    """Poll ``check`` until it is truthy (calling ``every`` between polls, e.g. a scheduler tick)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if runners is not None:
            runners.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{runners.tail() if runners else ''}"
        if every is not None:
            every()
        time.sleep(0.1)


def training_spans(run: RunRecord) -> list[tuple[float, float]]:
    """(start, end) of each stay in ``training``, from the run's history."""
    spans = []
    for (status, at, _), nxt in zip(run.history, [*run.history[1:], None], strict=True):
        if status == RunStatus.TRAINING.value:
            spans.append((at, nxt[1] if nxt else float("inf")))
    return spans


def deliver(client, repo, before: str, delivery: str) -> str:
    body = json.dumps(github_push(before, repo.head())).encode()
    resp = client.post("/webhooks/github", data=body, headers=github_headers("push", body, delivery))
    assert resp.status_code in (200, 202), resp.json
    return resp.json["queued"][0]["job"]


def concurrent_retrains(settings: config.Settings, redis_url: str, n: int = 2) -> list[str | None]:
    """``n`` chat-ops retrains at the same instant, each on its own connection."""
    barrier, out = threading.Barrier(n), []

    def one() -> None:
        conn = redis.Redis.from_url(redis_url)
        barrier.wait()
        out.append(scheduler.request_training(settings, conn, "hello", requested_by="racer"))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    return out


def test_two_gpu_runners_never_train_one_model_at_once(make_repo, tiny_model, redis_url, redis_conn,
                                                        runners, tmp_path):
    repo = make_repo(files=30, seed=5)
    path = write_config(tmp_path, redis_url, repo.url, tiny_model)
    settings = config.load(path, env=SECRET_ENV)
    fleet = runners(path)
    fleet.start("ingest", 2, redis_conn)

    # Two retrains at once: one run takes the model, the other is told it is busy.
    started = concurrent_retrains(settings, redis_url)
    (first,) = [r for r in started if r]
    assert started.count(None) == 1

    # No gpu runner yet: the run's train step waits in the queue until its lease lapses.
    wait_for(lambda: load_run(settings.home, first).status == RunStatus.INGESTING
             and get_queue("gpu", redis_conn).count == 1, 60, "the train step to be queued", fleet)
    wait_for(lambda: scheduler.lock_holder(redis_conn, "codegen") is None, 3 * LEASE_S, "the lease to lapse")
    # Retrains now must not start beside it: the queued step re-takes its lease first.
    assert concurrent_retrains(settings, redis_url) == [None, None]
    assert scheduler.lock_holder(redis_conn, "codegen") == first

    # A push while the run is active waits for one follow-up run.
    client = create_app(settings, redis_conn).test_client()
    before = repo.head()
    repo.write("src/late_module.py", "def late(x):\n    return x + 1\n" * 10)
    repo.commit("late")
    deliver(client, repo, before, "late-1")

    fleet.start("gpu", 2, redis_conn)
    seen: list[tuple[str, str | None]] = []

    def tick_and_sample() -> None:  # what `repotune up` does, plus who holds the model while training
        scheduler.tick(settings, redis_conn)
        for run in list_runs(settings.home, limit=None):
            if run.status == RunStatus.TRAINING:
                seen.append((run.id, scheduler.lock_holder(redis_conn, "codegen")))

    def first_done_and_follow_up_training() -> RunRecord | None:
        runs = list_runs(settings.home, limit=None)
        follow = [r for r in runs if r.id != first and RunStatus.TRAINING.value in [h[0] for h in r.history]]
        return follow[0] if follow and load_run(settings.home, first).status.terminal else None

    follow = wait_for(first_done_and_follow_up_training, 150, "the run to end and its follow-up to train",
                      fleet, every=tick_and_sample)
    run = load_run(settings.home, first)
    assert run.status == RunStatus.REJECTED, (run.error, fleet.tail())  # the gate's margin is 10
    assert len(list_runs(settings.home, limit=None)) == 2
    assert any(p.get("delivery_id") == "late-1" for p in follow.trigger.pushes)
    (a,), (b,) = training_spans(run), training_spans(follow)
    assert a[1] <= b[0], (a, b)  # training phases never overlap
    assert seen and all(run_id == holder for run_id, holder in seen), seen
    corpus.verify(settings.home, "hello")


def test_two_ingest_runners_keep_one_corpus_consistent(make_repo, redis_url, redis_conn, runners,
                                                       tmp_path, tiny_model):
    repo = make_repo(files=150, seed=11)
    path = write_config(tmp_path, redis_url, repo.url, tiny_model)
    settings = config.load(path, env=SECRET_ENV)
    fleet = runners(path)
    fleet.start("ingest", 2, redis_conn)
    client = create_app(settings, redis_conn).test_client()

    jobs, before = [], "0" * 40
    for i in range(6):  # pushes land while the previous ones are being ingested
        if i:
            repo.write(f"src/push_{i}.py", f"def push_{i}(x):\n    return x * {i}\n" * 30)
            if i % 2 == 0:
                repo.git("rm", "-q", f"src/push_{i - 1}.py")
            repo.commit(f"push {i}")
        jobs.append(deliver(client, repo, before, f"push-{i}"))
        before = repo.head()

    def all_done() -> bool:
        statuses = [Job.fetch(j, connection=redis_conn).get_status() for j in jobs]
        assert "failed" not in statuses, fleet.tail()
        return all(s == "finished" for s in statuses)

    wait_for(all_done, 120, "six ingests", fleet)
    workers = {Job.fetch(j, connection=redis_conn).worker_name for j in jobs}
    assert len(workers) == 2, f"both runners should have ingested: {workers}"
    corpus.verify(settings.home, "hello")  # every shard matches its manifest checksum and count
    assert corpus.stats(settings.home, "hello")["commit"] == repo.head()
    full = tmp_path / "full"
    corpus.update(settings.repos[0].corpus_spec(), full, full=True)
    for split in ("train", "heldout"):
        mine = {(r["path"], r["text"]) for r in corpus.read_records(corpus.shard_files(settings.home, "hello", split))}
        ref = {(r["path"], r["text"]) for r in corpus.read_records(corpus.shard_files(full, "hello", split))}
        assert mine == ref and mine


def test_gpu_runner_killed_mid_training_fails_the_run_as_abandoned(make_repo, tiny_model, redis_url,
                                                                   redis_conn, runners, tmp_path):
    from transformers import AutoModelForCausalLM

    repo = make_repo(files=30, seed=6)
    path = write_config(tmp_path, redis_url, repo.url, tiny_model, max_steps=400, save_every=2,
                        keep_checkpoints=2)
    settings = config.load(path, env=SECRET_ENV)
    fleet = runners(path)
    fleet.start("ingest", 1, redis_conn)
    fleet.start("gpu", 2, redis_conn)
    run_id = scheduler.request_training(settings, redis_conn, "hello", requested_by="alice")
    ckpts = run_dir(settings.home, run_id) / "train" / "checkpoints"
    wait_for(lambda: last_complete_checkpoint(ckpts), 120, "a complete checkpoint", fleet)

    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.TRAINING
    job = Job.fetch(run.job_id, connection=redis_conn)
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + job.worker_name, connection=redis_conn)
    fleet.kill_group(int(worker.pid))  # the runner and its work horse, mid-training

    # Within about a lease the tick notices: the lease lapsed and the job's worker is gone.
    wait_for(lambda: load_run(settings.home, run_id).status.terminal, 6 * LEASE_S, "the run to fail",
             fleet, every=lambda: scheduler.tick(settings, redis_conn))
    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.FAILED and run.error.startswith("abandoned"), run.error
    assert scheduler.lock_holder(redis_conn, "codegen") is None

    # Nothing half-written: run.json parses, shards verify, the last complete checkpoint loads.
    json.loads((run_dir(settings.home, run_id) / "run.json").read_text(encoding="utf-8"))
    corpus.verify(settings.home, "hello")
    last = last_complete_checkpoint(ckpts)
    assert AutoModelForCausalLM.from_pretrained(last).num_parameters() > 0
    for child in ckpts.iterdir():  # a save cut short has no trainer_state.json and is never resumed from
        if not (child / "trainer_state.json").is_file():
            assert child != last

    # The model is free: the next run starts at once (a new run, from the base; docs/runs.md).
    assert scheduler.request_training(settings, redis_conn, "hello") not in (None, run_id)
