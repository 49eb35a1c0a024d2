"""Several models in one bot, against real Redis, a real RQ worker and the local forge: a push is
noted only for the models that learn from its repository, each model is ticked, locked and run
on its own, status/runs/CLI answer per model, and chat-ops ``--model`` is validated and needs the
level on every repository the model learns from. No training runs here (the runs are started and
their first step queued; later steps are other tests')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue

from bot import config, lifecycle, models, recipe, scheduler, serving_version
from bot.cli import cli
from bot.config import ChatopsSettings, GitHubSettings, GitLabSettings, RepoConfig, Settings
from bot.errors import BotError
from bot.models import ModelSpec, model_names
from bot.runs import list_runs, load_run
from tests.fixtures.forge import GITHUB_TOKEN, LocalForge
from tests.test_chatops_commands import GH_SECRET, GL_SECRET, PR, Chat

NOW = 1_000_000.0


def _settings(home: Path, redis_url: str, forge: str = "local", **kw) -> Settings:
    repos = [RepoConfig(name=n, url=(home.parent / f"{n}.git").as_uri(), forge=forge, full_name=f"acme/{n}")
             for n in ("web", "api")]
    specs = [ModelSpec(name="web-lora", repos=["web"], training={"num_epochs": 3.0}),
             ModelSpec(name="api-full", repos=["api"], method="full", evaluation={"num_tasks": 7}),
             ModelSpec(name="both", repos=["web", "api"])]
    return Settings(home=home, redis_url=redis_url, repos=repos, models=specs, **kw)


@pytest.fixture
def two(tmp_path: Path, redis_url: str):
    settings = _settings(tmp_path / "home", redis_url)
    settings.policy.debounce_seconds = 10
    settings.policy.reconcile_seconds = 0  # only the runs queue ingest jobs here
    config.set_current(settings)
    yield settings, redis.Redis.from_url(redis_url)
    config.set_current(None)


def test_a_push_is_pending_only_for_the_models_that_learn_from_its_repo(two) -> None:
    settings, conn = two
    noted = scheduler.note_change(settings, conn, repo="api", files=3, nbytes=300,
                                  push={"kind": "push", "repo": "acme/api", "after": "abc"}, now=NOW)
    assert noted == ["api-full", "both"]
    assert scheduler.pending(settings, conn, "api-full")["files"] == 3
    assert scheduler.pending(settings, conn, "both")["files"] == 3
    assert scheduler.pending(settings, conn, "web-lora") == {"files": 0, "bytes": 0, "first": None,
                                                              "last": None, "pushes": []}
    did = scheduler.tick(settings, conn, now=NOW + 1)  # debounced, per model
    assert did["models"]["web-lora"]["reason"] == "nothing changed"
    assert did["models"]["api-full"]["reason"].startswith("debounce") and did["run"] is None


def test_tick_starts_one_run_per_model_with_separate_locks(two) -> None:
    settings, conn = two
    scheduler.note_change(settings, conn, repo="web", files=5, nbytes=500,
                          push={"kind": "push", "repo": "acme/web", "after": "w1"}, now=NOW)
    did = scheduler.tick(settings, conn, now=NOW + 60)
    started = {name: o["run"] for name, o in did["models"].items() if o["run"]}
    assert set(started) == {"web-lora", "both"} and did["models"]["api-full"]["reason"] == "nothing changed"
    for name, run_id in started.items():
        run = load_run(settings.home, run_id)
        assert run.model == name and scheduler.lock_holder(conn, name) == run_id
    web_run = load_run(settings.home, started["web-lora"])
    assert web_run.settings["training"]["num_epochs"] == 3.0  # the model's override, snapshotted
    assert Queue("ingest", connection=conn).count == 2

    # model "both" is busy; a push to api still starts api-full, and queues for both's follow-up
    scheduler.note_change(settings, conn, repo="api", files=50, nbytes=500_000,
                          push={"kind": "push", "repo": "acme/api", "after": "a1"}, now=NOW + 100)
    did = scheduler.tick(settings, conn, now=NOW + 200)
    assert did["models"]["both"]["reason"] == f"run {started['both']} holds both; changes wait for the follow-up run"
    api_run = load_run(settings.home, did["models"]["api-full"]["run"])
    assert api_run.model == "api-full" and api_run.repo == "api"
    assert api_run.settings["evaluation"]["num_tasks"] == 7
    assert scheduler.lock_holder(conn, "api-full") == api_run.id
    assert scheduler.pending(settings, conn, "both")["files"] == 50  # kept for the follow-up run


def test_a_runs_view_trains_and_evaluates_on_its_own_repos_only(two) -> None:
    settings, conn = two
    run = load_run(settings.home, scheduler.request_training(settings, conn, "web", model="web-lora"))
    view = lifecycle.run_settings(settings, run)
    assert [r.name for r, _ in recipe.corpora(view)] == ["web"]
    assert view.serving.model_name == "web-lora" and view.training.num_epochs == 3.0
    assert serving_version.serving_checkpoint(view) == (None, None)  # its own baseline: none yet
    with pytest.raises(BotError, match="does not learn from 'api'"):
        scheduler.request_training(settings, conn, "api", model="web-lora")
    with pytest.raises(BotError, match="several models are configured"):
        scheduler.request_training(settings, conn, None)
    # busy web-lora does not block both
    assert scheduler.request_training(settings, conn, "web", model="web-lora") is None
    assert scheduler.request_training(settings, conn, "web", model="both") is not None


def _write_config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "repotune.toml"
    path.write_text(f"""redis_url = "{redis_url}"
home = "{tmp_path / 'home'}"
[[repos]]
name = "web"
url = "{(tmp_path / 'web.git').as_uri()}"
[[repos]]
name = "api"
url = "{(tmp_path / 'api.git').as_uri()}"
[[models]]
name = "web-lora"
repos = ["web"]
[[models]]
name = "api-full"
repos = ["api"]
method = "full"
""")
    return path


def test_cli_runs_status_models_and_retrain_per_model(tmp_path: Path, redis_url: str) -> None:
    path = _write_config(tmp_path, redis_url)
    runner = CliRunner()
    try:
        out = runner.invoke(cli, ["retrain", "--config", str(path), "--model", "web-lora"])
        assert out.exit_code == 0, out.output
        web_run = out.output.split()[1]
        out = runner.invoke(cli, ["retrain", "--config", str(path), "--model", "api-full", "--repo", "web"])
        assert out.exit_code == 1 and "does not learn from 'web'" in out.output
        out = runner.invoke(cli, ["retrain", "--config", str(path)])
        assert out.exit_code == 1 and "name one with --model" in out.output
        out = runner.invoke(cli, ["retrain", "--config", str(path), "--model", "api-full"])
        api_run = out.output.split()[1]

        runs = json.loads(runner.invoke(cli, ["runs", "--config", str(path), "--model", "web-lora", "--json"]).output)
        assert [(r["id"], r["model"]) for r in runs] == [(web_run, "web-lora")]
        listed = runner.invoke(cli, ["runs", "--config", str(path)]).output
        assert web_run in listed and api_run in listed and "api-full" in listed

        status = json.loads(runner.invoke(cli, ["status", "--config", str(path), "--model", "api-full",
                                                "--json"]).output)
        assert [m["name"] for m in status["models"]] == ["api-full"]
        assert [r["name"] for r in status["repositories"]] == ["api"]
        assert [r["id"] for r in status["runs"]] == [api_run]
        assert status["models"][0]["training_lock"] == api_run
        text = runner.invoke(cli, ["status", "--config", str(path)]).output
        assert "model web-lora (lora, repos web)" in text and "model api-full (full, repos api)" in text

        rows = json.loads(runner.invoke(cli, ["models", "--config", str(path), "--json"]).output)
        assert [(r["name"], r["repos"], r["method"], r["last_run"]) for r in rows] == [
            ("web-lora", ["web"], "lora", web_run), ("api-full", ["api"], "full", api_run)]
        out = runner.invoke(cli, ["promote", "--config", str(path), "--model", "api-full", web_run])
        assert out.exit_code == 1 and "is a run of model 'web-lora', not 'api-full'" in out.output
    finally:
        config.set_current(None)


# --- chat-ops ---------------------------------------------------------------------------------


@pytest.fixture
def chat(local_forge: LocalForge, redis_url: str, tmp_path: Path):
    """GitHub: acme/web (alice write, mia maintain) and acme/api (alice read, mia maintain)."""
    from bot.webhook import create_app

    local_forge.add_github_repo("acme/web", {"alice": "write", "mia": "maintain", "bob": "read"}, pulls=(PR,))
    local_forge.add_github_repo("acme/api", {"alice": "read", "mia": "maintain"})
    settings = _settings(tmp_path / "home", redis_url, forge="github",
                         github=GitHubSettings(api_url=local_forge.github_api_url, token=GITHUB_TOKEN,
                                               webhook_secret=GH_SECRET),
                         gitlab=GitLabSettings(webhook_token=GL_SECRET),
                         chatops=ChatopsSettings(bot_username="repotune-bot"))
    config.set_current(settings)
    yield Chat("github", local_forge, settings, redis.Redis.from_url(redis_url), create_app(settings))
    config.set_current(None)


def test_chatops_model_is_validated_in_the_grammar(chat: Chat) -> None:
    (reply,) = chat.say("alice", "/repotune retrain --model web-lor")
    assert "No model `web-lor`. Did you mean `web-lora`? Configured: `web-lora`, `api-full`, `both`." in reply
    (reply,) = chat.say("alice", "/repotune retrain --model '$(rm -rf /)'")
    assert "is not a model name" in reply
    (reply,) = chat.say("alice", "/repotune retrain")  # acme/web feeds web-lora and both
    assert "acme/web feeds several models (`web-lora`, `both`): name one with `--model <name>`" in reply
    assert list_runs(chat.settings.home) == []


def test_chatops_on_a_model_needs_the_level_on_every_repo_it_learns_from(chat: Chat) -> None:
    (reply,) = chat.say("alice", "/repotune retrain --model both")
    assert reply.startswith("@alice :no_entry: `retrain` acts on model `both`, which learns from 2 repositories")
    assert "it needs write access to acme/api too" in reply and "you have read there" in reply
    (reply,) = chat.say("alice", "/repotune retrain --model api-full")
    assert reply == ("@alice :no_entry: `retrain`: model `api-full` does not learn from acme/web; "
                     "it learns from acme/api: comment on one of those.")
    assert list_runs(chat.settings.home) == []

    (reply,) = chat.say("alice", "/repotune retrain --model web-lora")
    (run,) = list_runs(chat.settings.home)
    assert run.model == "web-lora" and f"run `{run.id}`" in reply and "(model `web-lora`)" in reply
    (reply,) = chat.say("mia", "/repotune retrain --model=both")  # maintain on both repositories
    assert ":rocket:" in reply and {r.model for r in list_runs(chat.settings.home)} == {"web-lora", "both"}

    (reply,) = chat.say("mia", "/repotune rollback 2 --model web-lora")
    assert "Rolling back of model `web-lora` to version 2" in reply
    (job,) = [Queue("deploy", connection=chat.conn).fetch_job(j) for j in Queue("deploy", connection=chat.conn).job_ids]
    assert (job.func_name, job.args, job.kwargs) == ("bot.jobs.rollback_job", (2,), {"model": "web-lora"})
    (reply,) = chat.say("alice", "/repotune rollback --model web-lora")  # write < maintain
    assert ":no_entry: `rollback` needs maintain access to acme/web" in reply

    (reply,) = chat.say("alice", f"/repotune promote {_run_of(chat, 'both')}")
    assert "needs maintain access" in reply


def _run_of(chat: Chat, model: str) -> str:
    return next(r.id for r in list_runs(chat.settings.home) if r.model == model)


def test_one_model_needs_no_flag(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(home=tmp_path / "home", redis_url=redis_url,
                        repos=[RepoConfig(name="web", url=(tmp_path / "w.git").as_uri())])
    conn = redis.Redis.from_url(redis_url)
    assert models.get_model(settings, None).implicit
    run_id = scheduler.request_training(settings, conn, "web")
    assert load_run(settings.home, run_id).model == settings.serving.model_name
    assert scheduler.lock_holder(conn, settings.serving.model_name) == run_id


# --- pause per model --------------------------------------------------------------------------


def test_a_model_paused_on_its_own_waits_while_the_others_run(two) -> None:
    settings, conn = two
    scheduler.pause(conn, "web-lora")
    scheduler.note_change(settings, conn, repo="web", files=5, nbytes=500,
                          push={"kind": "push", "repo": "acme/web", "after": "w1"}, now=NOW)
    did = scheduler.tick(settings, conn, now=NOW + 60)
    assert did["models"]["web-lora"] == {"run": None, "reason": "paused"}
    assert did["models"]["both"]["run"] is not None  # the same push still trains the other model
    assert scheduler.pending(settings, conn, "web-lora")["files"] == 5  # kept for after the pause

    # The global pause and a model's own are separate flags: lifting one leaves the other.
    scheduler.pause(conn)
    scheduler.resume(conn)
    assert scheduler.is_paused(conn, "web-lora") and not scheduler.is_paused(conn, "api-full")
    assert scheduler.paused_models(conn, model_names(settings)) == ["web-lora"]
    scheduler.resume(conn, "web-lora")
    did = scheduler.tick(settings, conn, now=NOW + 120)
    assert did["models"]["web-lora"]["run"] is not None


def test_chatops_pause_of_one_model_needs_maintain_on_its_repos_only(chat: Chat) -> None:
    (reply,) = chat.say("alice", "/repotune pause --model web-lora")  # write < maintain
    assert ":no_entry: `pause` needs maintain access to acme/web" in reply
    (reply,) = chat.say("mia", "/repotune pause --model web-lora")
    assert reply.endswith("Automatic retraining of model `web-lora` is paused. Commands still work; "
                          "`/repotune resume --model web-lora` turns it back on.")
    assert scheduler.paused_models(chat.conn, model_names(chat.settings)) == ["web-lora"]
    assert not scheduler.is_paused(chat.conn)
    (reply,) = chat.say("alice", "/repotune status")
    assert "automatic retraining: **on** · paused on its own: `web-lora`" in reply
    (reply,) = chat.say("mia", "/repotune pause --model api-full")  # not a model of this repository
    assert "model `api-full` does not learn from acme/web" in reply
    assert not scheduler.is_paused(chat.conn, "api-full")

    (reply,) = chat.say("mia", "/repotune pause")  # every model: maintain on every repository
    assert "of every model is paused" in reply and scheduler.is_paused(chat.conn)
    (reply,) = chat.say("mia", "/repotune resume")
    assert "resumed, except for `web-lora`, paused on its own" in reply
    (reply,) = chat.say("mia", "/repotune resume --model web-lora")
    assert reply.endswith("Automatic retraining of model `web-lora` resumed.")
    assert scheduler.paused_models(chat.conn, model_names(chat.settings)) == []


def test_cli_pause_and_resume_per_model(tmp_path: Path, redis_url: str) -> None:
    path = _write_config(tmp_path, redis_url)
    runner = CliRunner()
    conn = redis.Redis.from_url(redis_url)
    out = runner.invoke(cli, ["pause", "--config", str(path), "--model", "api-full"])
    assert out.exit_code == 0 and "model api-full paused" in out.output, out.output
    assert scheduler.is_paused(conn, "api-full") and not scheduler.is_paused(conn, "web-lora")
    out = runner.invoke(cli, ["pause", "--config", str(path), "--model", "nope"])
    assert out.exit_code == 1 and "nope" in out.output
    status = json.loads(runner.invoke(cli, ["status", "--config", str(path), "--json"]).output)
    assert {m["name"]: m["paused"] for m in status["models"]} == {"web-lora": False, "api-full": True}
    out = runner.invoke(cli, ["resume", "--config", str(path)])
    assert "except api-full" in out.output
    out = runner.invoke(cli, ["resume", "--config", str(path), "--model", "api-full"])
    assert out.exit_code == 0 and not scheduler.is_paused(conn, "api-full")
