"""Nothing accepted is lost: the embedded Redis of ``repotune up`` keeps queued jobs across a kill,
and the training lease outlives a Redis restart while its holder still trains."""

from __future__ import annotations

import json
import os
import signal

import pytest
import redis

from bot import up
from bot.queue import connect, delivery_key, get_queue
from bot.webhook import create_app
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
