"""A worker SIGKILLed in the middle of an ingest: RQ retries the job and the corpus ends consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rq.job import Job, JobStatus

from bot import scheduler
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
