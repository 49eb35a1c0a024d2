"""``bot.status``: the typed snapshot and the one JSON shape ``/api/status`` returns."""

from __future__ import annotations

from pathlib import Path

import redis

from bot import config, runs, scheduler
from bot.status import QueueStatus, Status, collect, snapshot

TOP_LEVEL = ["time", "home", "repositories", "serving", "runs", "freshness"]


def _settings(tmp_path: Path, redis_url: str | None) -> config.Settings:
    toml = tmp_path / "repotune.toml"
    toml.write_text(f'home = "{tmp_path / "home"}"\n' + (f'redis_url = "{redis_url}"\n' if redis_url else "")
                    + '[[repos]]\nname = "tools"\nurl = "https://bot:s3cret@gitlab.example.internal/p/tools.git"\n'
                    'forge = "gitlab"\nfull_name = "p/tools"\n', encoding="utf-8")
    return config.load(toml, env={})


def test_snapshot_with_redis_serialises_to_the_api_shape(tmp_path: Path, redis_url: str) -> None:
    settings = _settings(tmp_path, redis_url)
    connection = redis.Redis.from_url(redis_url)
    scheduler.pause(connection)
    run = runs.new_run(repo="tools", trigger={"kind": "push"})
    runs.save_run(settings.home, run)
    (settings.home / "triton" / settings.serving.model_name / "3").mkdir(parents=True)

    status = snapshot(settings, connection)
    assert isinstance(status, Status) and status.queue.ok and status.queue.paused
    assert [r.id for r in status.runs] == [run.id]
    data = status.to_dict()
    assert list(data) == [*TOP_LEVEL, "queues", "paused", "pending", "training_lock", "redis"]
    assert data["redis"] == {"ok": True} and data["paused"] is True
    assert data["serving"] == {"model": settings.serving.model_name, "backend": settings.serving.backend,
                               "triton_url": settings.serving.triton_url, "version": None, "versions": [3]}
    repo = data["repositories"][0]
    assert repo["url"] == "https://gitlab.example.internal/p/tools.git"  # no credentials
    assert repo["corpus"] is None and repo["corpus_error"].startswith("CorpusError")
    assert data["runs"][0] == runs.load_run(settings.home, run.id).as_dict()
    assert set(collect(settings, connection)) == set(data)


def test_without_redis_only_the_redis_part_says_why(tmp_path: Path) -> None:
    data = snapshot(_settings(tmp_path, None), None).to_dict()
    assert list(data) == [*TOP_LEVEL, "redis"]
    assert data["redis"] == {"ok": False, "error": "no Redis configured"}
    assert QueueStatus(ok=False, error="Redis is unreachable: x").to_dict() == {
        "redis": {"ok": False, "error": "Redis is unreachable: x"}}
