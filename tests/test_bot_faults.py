"""Faults of workers: one SIGKILLed in the middle of an ingest (RQ retries the job and the corpus
ends consistent), one on a host whose clock is off (alive, judged on the Redis clock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rq import Worker
from rq.job import Job, JobStatus

from bot import lifecycle, scheduler
from bot.defaults import WORKER_DEAD_AFTER_SECONDS
from bot.queue import get_queue, server_time
from bot.runs import RunStatus, Trigger, load_run, new_run, save_run, transition
from bot.webhook import create_app
from tests.fixtures.bot import SECRET_ENV, github_headers, github_push, work
from trainer import corpus

ROOT = Path(__file__).resolve().parents[1]


def test_worker_killed_during_ingest_is_retried_and_the_corpus_is_consistent(
        make_repo, bot_settings, redis_conn, tmp_path):
    repo = make_repo(files=600, seed=7)
    settings = bot_settings(github_url=repo.url)
    body = json.dumps(github_push("0" * 40, repo.head())).encode()
    resp = create_app(settings, redis_conn).test_client().post(
        "/webhooks/github", data=body, headers=github_headers("push", body, "k-1"))
    job_id = resp.json["queued"][0]["job"]

    env = dict(os.environ, **SECRET_ENV, REPOTUNE_CONFIG=str(settings.source))
    proc = subprocess.Popen([sys.executable, "-m", "bot", "worker", "--queues", "ingest", "--simple"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness: the job reports a stage of the update proper
            job = Job.fetch(job_id, connection=redis_conn)
            stage = (job.get_meta(refresh=True).get("progress") or {}).get("stage")
            if stage in ("scan", "dedupe", "write"):
                break
            assert job.get_status() != JobStatus.FINISHED, "the ingest finished before it could be killed"
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker never started the ingest"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()

    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == JobStatus.STARTED  # the dead worker never finished it
    # The next tick sees the worker's pid is gone and hands the job back to RQ, which schedules
    # a retry (5 s back-off); a tick with the clock past the back-off queues it.
    assert scheduler.tick(settings, redis_conn)["orphaned"] == [job_id]
    assert Job.fetch(job_id, connection=redis_conn).get_status() == JobStatus.SCHEDULED
    scheduler.tick(settings, redis_conn, now=time.time() + 10)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == JobStatus.QUEUED and job.retries_left == 2

    work(redis_conn, ("ingest",))
    assert Job.fetch(job_id, connection=redis_conn).get_status() == JobStatus.FINISHED
    corpus.verify(settings.home, "hello")
    assert corpus.stats(settings.home, "hello")["commit"] == repo.head()
    other = tmp_path / "full"
    corpus.update(settings.repos[0].corpus_spec(), other, full=True)
    for split in ("train", "heldout"):
        mine = {(r["path"], r["text"]) for r in corpus.read_records(corpus.shard_files(settings.home, "hello", split))}
        full = {(r["path"], r["text"]) for r in corpus.read_records(corpus.shard_files(other, "hello", split))}
        assert mine == full and mine


def _beat_from_another_host(conn, worker, job, clock) -> None:
    """What RQ's worker and job heartbeats write, on a host whose clock is ``clock``: the worker's
    ``last_heartbeat`` and the started registry's expiry score (``clock() + ttl``)."""
    from rq.utils import utcformat

    stamp = datetime.fromtimestamp(clock(), tz=UTC)
    conn.hset(worker.key, "last_heartbeat", utcformat(stamp))
    registry = get_queue("gpu", conn).started_job_registry
    for entry in conn.zrange(registry.key, 0, -1):
        if entry.decode().startswith(job.id):
            conn.zadd(registry.key, {entry: clock() + 90})


def test_a_worker_whose_clock_is_8_minutes_behind_is_not_dead(bot_settings, redis_conn):
    settings = bot_settings(github_url="file:///nonexistent/hello.git")
    run = new_run(repo="hello", trigger=Trigger(kind="push"), model=settings.serving.model_name)
    transition(run, RunStatus.INGESTING)
    transition(run, RunStatus.TRAINING)
    save_run(settings.home, run)
    assert scheduler.acquire_lock(redis_conn, run.model, run.id, settings.policy.lock_lease_seconds)
    job = lifecycle.enqueue_step(settings, redis_conn, "train", run.id)
    worker = Worker([get_queue("gpu", redis_conn)], connection=redis_conn, name="gpu-2-worker")
    worker.hostname = "gpu-host-2"  # not this host: its pid says nothing, its heartbeat must
    worker.register_birth()
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)

    def behind() -> float:
        return time.time() - 8 * 60

    _beat_from_another_host(redis_conn, worker, job, behind)
    did = scheduler.tick(settings, redis_conn)
    assert did["orphaned"] == [] and did["abandoned"] == []
    assert Job.fetch(job.id, connection=redis_conn).get_status() == JobStatus.STARTED
    assert load_run(settings.home, run.id).status == RunStatus.TRAINING

    # Silence is still noticed, on the Redis clock: no new beat for longer than dead_after.
    later = server_time(redis_conn) + WORKER_DEAD_AFTER_SECONDS + 1
    assert scheduler.tick(settings, redis_conn, now=later)["orphaned"] == [job.id]
