"""``bot.status``: the typed snapshot and the one JSON shape ``/api/status`` returns."""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from bot import config, runs, scheduler
from bot.status import QueueStatus, Status, bounded, collect, public, snapshot
from trainer.corpus.update import _locked, corpus_dir

TOP_LEVEL = ["time", "home", "repositories", "serving", "runs", "freshness", "editor_freshness", "acceptance",
             "models"]


def _settings(tmp_path: Path, redis_url: str | None) -> config.Settings:
    toml = tmp_path / "repotune.toml"
    toml.write_text(f'home = "{tmp_path / "home"}"\n' + (f'redis_url = "{redis_url}"\n' if redis_url else "")
                    + '[[repos]]\nname = "tools"\nurl = "https://gitlab.example.internal/p/tools.git"\n'
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
    assert repo["url"] == "https://gitlab.example.internal/p/tools.git"  # credentials are refused by the config
    assert repo["corpus"] is None and repo["corpus_error"] == "no completed corpus update yet"
    assert data["runs"][0] == runs.load_run(settings.home, run.id).as_dict()
    assert set(collect(settings, connection)) == set(data)


def test_without_redis_only_the_redis_part_says_why(tmp_path: Path) -> None:
    data = snapshot(_settings(tmp_path, None), None).to_dict()
    assert list(data) == [*TOP_LEVEL, "redis"]
    assert data["redis"] == {"ok": False, "error": "no Redis configured"}
    assert QueueStatus(ok=False, error="Redis is unreachable: x").to_dict() == {
        "redis": {"ok": False, "error": "Redis is unreachable: x"}}


def test_snapshot_does_not_wait_for_a_held_corpus_lock(tmp_path: Path, redis_url: str) -> None:
    """An ingest holds the corpus lock (the same flock ``trainer.corpus.update`` takes) for as
    long as it runs; the snapshot reads ``corpus.json`` and returns meanwhile."""
    settings = _settings(tmp_path, redis_url)
    cdir = corpus_dir(settings.home, "tools")
    cdir.mkdir(parents=True)
    (cdir / "manifest.sqlite").write_bytes(b"")  # what makes trainer.corpus.stats lock and recover
    (cdir / "corpus.json").write_text('{"commit": "abc123", "train_files": 7}', encoding="utf-8")
    result: dict = {}
    with _locked(cdir):
        reader = threading.Thread(target=lambda: result.update(collect(settings, redis.Redis.from_url(redis_url))))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the snapshot waited for the corpus lock"
    assert result["repositories"][0]["corpus"] == {"commit": "abc123", "train_files": 7}


def test_unreadable_summaries_say_so_without_paths(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None)
    cdir = corpus_dir(settings.home, "tools")
    cdir.mkdir(parents=True)
    (cdir / "corpus.json").write_text("{not json", encoding="utf-8")
    run = runs.new_run(repo="tools", trigger={"kind": "push"})
    run.checkpoint = str(settings.home / "runs" / run.id / "checkpoint")
    run.error = ("Traceback (most recent call last):\n  File \"/srv/app/x.py\", line 3\n"
                 f"OSError: cannot open {settings.home}/mirrors/tools.git")
    runs.save_run(settings.home, run)
    data = public(snapshot(settings, None).to_dict())
    text = repr(data)
    assert "home" not in data and "url" not in data["repositories"][0]
    assert data["repositories"][0]["corpus_error"].startswith("the corpus summary could not be read")
    assert str(tmp_path) not in text and "Traceback" not in text and "/srv/app" not in text
    assert data["runs"][0]["error"] == "OSError: cannot open <path>"
    assert "checkpoint" not in data["runs"][0]


def test_status_reads_redis_with_a_bounded_timeout(redis_url: str) -> None:
    slow = redis.Redis.from_url(redis_url)  # no socket timeout: a hung Redis would block for ever
    fast = bounded(slow, 0.5)
    assert fast.connection_pool.connection_kwargs["socket_timeout"] == 0.5 and fast.ping()
    assert bounded(fast, 1.0) is fast
