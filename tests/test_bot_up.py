"""``repotune up``'s process tree: embedded Redis, bundled Triton, workers, waitress webhook, proxy."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from bot import config, up
from tests.fixtures.base import free_port
from tests.fixtures.bot import github_headers, github_push
from trainer import corpus


def test_up_serves_a_push_end_to_end_and_stops_cleanly(make_repo, bot_settings):
    repo = make_repo(files=10, seed=8)
    settings = bot_settings(github_url=repo.url)
    settings.redis_url = None  # embedded redis-server
    settings.webhook.port = free_port()
    settings.serving.proxy_port = free_port()
    booted = []
    tree = up.start(settings, bootstrap=lambda s: booted.append(s.redis_url), webhook_threads=2)
    try:
        assert booted == [settings.redis_url] and settings.redis_url.startswith("unix://")
        assert settings.serving.triton_url  # the bundled Triton is up
        assert tree.urls["completions"].endswith("/v1/completions")
        healthz = tree.urls["completions"].replace("/v1/completions", "/healthz")
        with pytest.raises(urllib.error.HTTPError) as no_version:  # nothing deployed yet: 503
            urllib.request.urlopen(healthz, timeout=10)
        assert no_version.value.code == 503
        assert no_version.value.headers["Server"] == "repotune"  # waitress, as under `repotune serve`
        body = json.dumps(github_push("0" * 40, repo.head())).encode()
        req = urllib.request.Request(tree.urls["webhook_github"], data=body, method="POST",
                                     headers=github_headers("push", body, "up-1"))
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
        deadline = time.monotonic() + 60
        while True:  # the ingest worker (a child process) builds the corpus
            try:
                if corpus.stats(settings.home, "hello")["commit"] == repo.head():
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, (settings.home / "logs" / "worker-ingest.log").read_text()[-3000:]
            time.sleep(0.1)
        with urllib.request.urlopen(tree.urls["status_api"], timeout=10) as resp:
            status = json.load(resp)
        assert status["repositories"][0]["corpus"]["commit"] == repo.head()
        procs = [p for _, p in tree.processes]
        assert len(procs) == 6 and all(p.poll() is None for p in procs)  # redis, 4 workers, webhook
    finally:
        tree.stop()
    assert all(p.poll() is not None for p in procs)
    assert not tree.processes


def test_the_up_scheduler_adopts_an_edited_recipe_for_the_next_run(tmp_path):
    # The loop's settings are pinned; a run snapshots [training]/[evaluation] from them when it
    # starts, so the loop must see an edit just as a worker's config.current() would.
    path = tmp_path / "repotune.toml"
    path.write_text(f'home = "{tmp_path}"\n[training]\nlearning_rate = 0.002\n', encoding="utf-8")
    tree = up.Up(config.load(path, env={}))
    seen = [up._mtime_ns(path)]
    up._adopt_edited_recipe(tree, seen)
    assert tree.settings.training.learning_rate == 0.002
    before = path.stat().st_mtime_ns
    path.write_text(f'home = "{tmp_path}"\n[training]\nlearning_rate = 0.5\n', encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    up._adopt_edited_recipe(tree, seen)
    assert tree.settings.training.learning_rate == 0.5
    assert tree.settings.run_snapshot()["training"]["learning_rate"] == 0.5
