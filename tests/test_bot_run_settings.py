"""A run keeps the settings it started with, and its record keeps both models' scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot import config, scheduler
from bot.runs import RunStatus, load_run, run_dir
from tests.fixtures.bot import settings_toml, work

RECIPE = """
[training]
base_model = "{base}"
deepspeed = "none"
max_steps = 2
block_size = 128

[evaluation]
num_tasks = {num_tasks}
bootstrap = 50
max_new_tokens = 8
# A gate no 2-step model passes: the run ends rejected right after evaluation.
margin = 100.0
"""


def _write(path: Path, text: str) -> None:
    """Rewrite ``path`` with a modification time distinct from the previous one (mtime reload)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def live_config(tmp_path, redis_url, monkeypatch):
    """Write repotune.toml and let workers load it themselves (not pinned), as in production."""
    path = tmp_path / "repotune.toml"

    def write(github_url: str, **recipe) -> Path:
        _write(path, settings_toml(tmp_path / "home", redis_url, github_url) + RECIPE.format(**recipe))
        return path

    monkeypatch.setenv(config.CONFIG_ENV, str(path))
    config.set_current(None)
    yield write
    config.set_current(None)


def test_a_run_keeps_its_settings_and_both_models_scores(make_repo, live_config, redis_conn, tiny_model):
    # One run (training is the slow part) checks both promises.
    repo = make_repo(files=40, seed=9)
    live_config(repo.url, base=tiny_model, num_tasks=6)
    settings = config.current()
    run_id = scheduler.request_training(settings, redis_conn, "hello", requested_by="alice")
    assert load_run(settings.home, run_id).settings["evaluation"]["num_tasks"] == 6

    live_config(repo.url, base=tiny_model, num_tasks=3)  # the operator edits the file mid-run
    assert config.current().evaluation.num_tasks == 3  # new jobs would see the edit …
    work(redis_conn)

    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.REJECTED, run.error
    report = json.loads((run_dir(settings.home, run_id) / "eval" / "eval.json").read_text())
    assert report["config"]["num_tasks"] == 6 and report["task_count"] == 6  # … this run did not

    # run.json carries the candidate's and the baseline's scores, not only their difference.
    metrics = json.loads((run_dir(settings.home, run_id) / "run.json").read_text())["metrics"]
    assert metrics["eval_candidate"] == report["candidate"]["overall"]
    assert metrics["eval_baseline"] == report["baseline"]["overall"]
    assert "edit_similarity" in metrics["eval_candidate"] and "loss" in metrics["eval_baseline"]
    assert metrics["eval_deltas"] == report["deltas"]
