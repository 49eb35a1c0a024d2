"""Forward evaluation per push (the served model's freshness curve) and continued training, with
real git, real Redis, real RQ workers, the real corpus and the tiny CodeGen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from rq import SimpleWorker
from rq.job import Job

from bot import freshness, recipe, runs, scheduler, status
from bot.cli import cli
from bot.queue import get_queue
from bot.webhook import create_app
from tests.fixtures.bot import github_headers, github_push, work
from trainer import corpus
from trainer.evaluate import forward_eval

ZERO = "0" * 40
QUALITY = ("edit_similarity", "exact_match", "identifier_match", "loss")


def deliver(client, payload: dict, delivery: str) -> None:
    body = json.dumps(payload).encode()
    resp = client.post("/webhooks/github", data=body, headers=github_headers("push", body, delivery))
    assert resp.status_code in (200, 202), resp.json


def serve_run(home: Path, checkpoint: Path, version: int) -> runs.RunRecord:
    """Record a run that went all the way to serving ``checkpoint`` as ``version``."""
    run = runs.new_run(repo="hello", trigger={"kind": "chatops"}, model="codegen")
    for step in ("ingesting", "training", "evaluating", "converting", "publishing", "serving"):
        runs.transition(run, step)
    run.checkpoint, run.version = str(checkpoint), version
    runs.save_run(home, run)
    return run


def gpu_jobs(connection) -> list[str]:
    return [Job.fetch(i, connection=connection).func_name for i in get_queue("gpu", connection).job_ids]


def first_build(client, repo, connection) -> None:
    deliver(client, github_push(ZERO, repo.head()), "build")
    work(connection, ("ingest",))


def small_eval(settings, forward_tasks: int = 4) -> None:
    settings.evaluation.forward_tasks = forward_tasks
    settings.evaluation.max_new_tokens = 8
    settings.evaluation.num_tasks = 4
    settings.evaluation.bootstrap = 50


def test_a_push_while_a_model_serves_is_scored_on_exactly_its_new_code(
        make_repo, bot_settings, redis_conn, tiny_model_copy):
    repo = make_repo(files=16, seed=11)
    settings = bot_settings(github_url=repo.url, debounce_seconds=0)
    small_eval(settings)
    client = create_app(settings, redis_conn).test_client()
    first_build(client, repo, redis_conn)
    assert gpu_jobs(redis_conn) == []  # a first build is not new code, and nothing serves yet
    serve_run(settings.home, tiny_model_copy, version=2)

    sources = sorted(p.relative_to(repo.work).as_posix() for p in repo.work.rglob("*.py"))
    modified, removed = sources[0], sources[1]
    repo.write(modified, (repo.work / modified).read_text() + "\n\ndef appended(a, b):\n    return a + b\n")
    repo.remove(removed)
    repo.write("src/fresh_module.py", "def fresh(items):\n    total = 0\n    for item in items:\n"
                                      "        total += item.size\n    return total\n" * 6)
    repo.write("assets/logo.bin", b"\x89PNG\x00\x01\x02" * 50)  # binary: never lands in the corpus
    head = repo.commit("fresh code")
    deliver(client, github_push(ZERO, head), "push-1")
    work(redis_conn, ("ingest",))
    assert gpu_jobs(redis_conn) == ["bot.jobs.forward_eval_job"]
    work(redis_conn, ("gpu",))

    (entry,) = freshness.read(freshness.history_path(settings.home, "hello"))
    changed = sorted([modified, "src/fresh_module.py"])
    assert entry["ok"], entry["error"]
    assert (entry["commit"], entry["serving_version"], entry["delivery_id"]) == (head, 2, "push-1")
    assert entry["serving_checkpoint"] == str(tiny_model_copy)
    assert entry["paths"] == changed and entry["files"] == 2 and entry["n_tasks"] > 0
    # The same scores as scoring the serving model on exactly those files' corpus records.
    records = corpus.records_for_paths(settings.home, "hello", changed)
    assert sorted(r["path"] for r in records) == changed
    expected = forward_eval(str(tiny_model_copy), records, recipe.forward_eval_config(settings),
                            push=head, corpus_version=head)
    assert entry["n_tasks"] == expected["n_tasks"]
    for metric in QUALITY:
        assert entry["scores"][metric] == pytest.approx(expected["scores"][metric]), metric

    # The status API and the page show the point; the chart draws the history file.
    point = status.collect(settings, redis_conn)["freshness"]["hello"][-1]
    assert point["commit"] == head and point["ok"] and point["serving_version"] == 2
    assert point["scores"]["edit_similarity"] == pytest.approx(entry["scores"]["edit_similarity"])
    page = client.get("/status").get_data(as_text=True)
    assert 'id="freshness"' in page and head[:10] in page and "/charts/freshness/hello.png" in page
    chart = client.get("/charts/freshness/hello.png")
    assert chart.status_code == 200 and chart.data.startswith(b"\x89PNG")
    assert client.get("/charts/freshness/nothing.png").status_code == 404
    # And the terminal: `repotune status` prints the last point.
    result = CliRunner().invoke(cli, ["status", "--config", str(settings.source), "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert f"freshness hello: 1 pushes scored; last {head[:12]} on version 2: edit_similarity" in result.output


def test_pushes_without_new_corpus_code_or_without_a_model_queue_nothing(
        make_repo, bot_settings, redis_conn, tiny_model, tmp_path):
    repo = make_repo(files=12, seed=12)
    settings = bot_settings(github_url=repo.url)
    small_eval(settings, forward_tasks=3)
    settings.training.base_model = str(tmp_path / "no-model-here")
    client = create_app(settings, redis_conn).test_client()
    first_build(client, repo, redis_conn)

    # New code, but no model at all: nothing to score.
    repo.write("src/one.py", "def one():\n    return 1\n" * 8)
    deliver(client, github_push(ZERO, repo.commit("one")), "p-1")
    work(redis_conn, ("ingest",))
    assert gpu_jobs(redis_conn) == []

    # The base model serves (nothing published yet): pushes that change no corpus file queue nothing.
    settings.training.base_model = str(tiny_model)
    repo.write("assets/blob.bin", b"\x00\x01\x02binary" * 40)
    deliver(client, github_push(ZERO, repo.commit("binary only")), "p-2")
    deliver(client, github_push(ZERO, repo.commit("empty")), "p-3")
    work(redis_conn, ("ingest",))
    assert gpu_jobs(redis_conn) == []
    assert not freshness.history_path(settings.home, "hello").exists()
    assert [p["delivery_id"] for p in scheduler.pending(settings, redis_conn)["pushes"]][-2:] == ["p-2", "p-3"]

    # forward_tasks = 0 turns it off; back on, the base model is scored as the serving model.
    settings.evaluation.forward_tasks = 0
    repo.write("src/two.py", "def two():\n    return 2\n" * 8)
    deliver(client, github_push(ZERO, repo.commit("two")), "p-4")
    work(redis_conn, ("ingest",))
    assert gpu_jobs(redis_conn) == []
    settings.evaluation.forward_tasks = 3
    repo.write("src/three.py", "def three(x):\n    return x * 3\n" * 8)
    head = repo.commit("three")
    deliver(client, github_push(ZERO, head), "p-5")
    work(redis_conn, ("ingest",))
    assert gpu_jobs(redis_conn) == ["bot.jobs.forward_eval_job"]
    work(redis_conn, ("gpu",))
    (entry,) = freshness.read(freshness.history_path(settings.home, "hello"))
    assert entry["ok"], entry["error"]
    assert (entry["commit"], entry["paths"], entry["serving_version"]) == (head, ["src/three.py"], None)
    assert entry["serving_checkpoint"] == str(tiny_model)


def test_a_failed_forward_evaluation_is_recorded_and_the_run_goes_on(
        make_repo, bot_settings, redis_conn, tiny_model, tiny_model_copy):
    repo = make_repo(files=16, seed=11)
    settings = bot_settings(github_url=repo.url, debounce_seconds=0, min_changed_files=1)
    small_eval(settings, forward_tasks=3)
    settings.training.base_model = str(tiny_model)
    settings.training.deepspeed = "none"
    settings.training.max_steps = 2
    settings.training.block_size = 128
    settings.training.continue_from_serving = True
    serving = serve_run(settings.home, tiny_model_copy, version=3)
    client = create_app(settings, redis_conn).test_client()
    first_build(client, repo, redis_conn)
    scheduler._take_pending(settings, redis_conn)  # as if a run had covered the first build

    repo.write("src/newer.py", "class Newer:\n    def size(self):\n        return len(self.items)\n" * 6)
    head = repo.commit("newer")
    deliver(client, github_push(ZERO, head), "f-1")
    work(redis_conn, ("ingest",))
    did = scheduler.tick(settings, redis_conn)
    assert did["run"], did
    work(redis_conn, ("ingest",))  # the run's ingest step queues training behind the forward job
    assert gpu_jobs(redis_conn) == ["bot.jobs.forward_eval_job", "bot.jobs.train_step"]

    # The serving checkpoint is unreadable while the forward evaluation runs (a storage hiccup).
    hidden = tiny_model_copy.with_name("model.away")
    tiny_model_copy.rename(hidden)
    forward_id = get_queue("gpu", redis_conn).job_ids[0]
    SimpleWorker([get_queue("gpu", redis_conn)], connection=redis_conn).work(burst=True, max_jobs=1)
    hidden.rename(tiny_model_copy)
    (entry,) = freshness.read(freshness.history_path(settings.home, "hello"))
    assert entry["ok"] is False and entry["commit"] == head and entry["serving_version"] == 3
    assert str(tiny_model_copy) in entry["error"] or "model" in entry["error"].lower(), entry["error"]
    assert Job.fetch(forward_id, connection=redis_conn).get_status() == "finished"  # recorded, not raised

    # The run trains (from the serving checkpoint: continue_from_serving) and is evaluated as usual.
    SimpleWorker([get_queue("gpu", redis_conn)], connection=redis_conn).work(burst=True, max_jobs=2)
    run = runs.load_run(settings.home, did["run"])
    assert [h[0] for h in run.history][:4] == ["queued", "ingesting", "training", "evaluating"], run.error
    assert run.status in (runs.RunStatus.CONVERTING, runs.RunStatus.REJECTED), run.error
    assert run.metrics["steps"] == 2 and run.metrics["base"] == serving.checkpoint
    assert run.metrics["baseline"] == serving.checkpoint and "gate" in run.metrics
    assert run.corpus_version["hello"]["commit"] == head

    # The default retrains from the base model.
    settings.training.continue_from_serving = False
    assert recipe.finetune_config(settings, run).base == str(tiny_model)


def test_freshness_history_appends_are_atomic_lines_and_bad_lines_are_skipped(tmp_path):
    path = freshness.history_path(tmp_path, "acme/web@release%2F1")
    assert path == tmp_path / "runs" / "freshness" / "acme" / "web@release%2F1.jsonl"
    freshness.append(path, {"commit": "a", "ok": True, "scores": {"loss": 1.0, "latency_ms": 3}})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("not json\n")
    freshness.append(path, {"commit": "b", "ok": False, "error": "boom"})
    assert [e["commit"] for e in freshness.read(path)] == ["a", "b"]
    assert [e["commit"] for e in freshness.read(path, last=1)] == ["b"]
    summary = freshness.summary(tmp_path)
    assert list(summary) == ["acme/web@release%2F1"]
    assert summary["acme/web@release%2F1"][0]["scores"] == {"loss": 1.0}
    with pytest.raises(ValueError):
        freshness.history_path(tmp_path, "../escape")
    shutil.rmtree(tmp_path / "runs")
    assert freshness.summary(tmp_path) == {}
