"""Operators deciding canaries on a real Triton, with the forge watching: chat-ops
``/repotune canary promote`` (signed webhook → control worker → deploy worker) and
``repotune canary stop`` (CliRunner → deploy worker). What the local forge received is the
assertion: the closing MR comment of a chat-ops run, the ``repotune/canary`` commit statuses of
a push run. A promotion serves the candidate to every client and queues its editor-task
evaluation (as a plain publish does); a stop leaves production serving and unloads the candidate.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue, SimpleWorker

from bot import config, jobs
from bot.cli import cli
from bot.runs import RunStatus, load_run, new_run, save_run
from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.client import TritonClient
from tests.fixtures.forge import GITHUB_TOKEN, LocalForge
from tests.test_chatops_commands import GH_SECRET, PR, Chat

MODEL = "canary-forge"
SHA = "c" * 40
VERSION_HEADER = "x-repotune-model-version"


@pytest.fixture
def env(tmp_path: Path, local_forge: LocalForge, redis_url: str, triton_server, triton_repo_root: Path,
        make_artifact, monkeypatch):
    """One model, canaries on (share 0.5, never decided by the test itself: 10 000 shown needed),
    code kept (so promotions queue the editor-task evaluation), production version 1."""
    from bot.webhook import create_app

    home = tmp_path / "home"
    path = tmp_path / "repotune.toml"
    path.write_text(f"""
home = "{home}"
redis_url = "{redis_url}"

[serving]
model_name = "{MODEL}"
triton_url = "{triton_server.url}"
store_code = true

[canary]
enabled = true
share = 0.5
min_shown = 10000

[github]
api_url = "{local_forge.github_api_url}"

[chatops]
bot_username = "repotune-bot"

[[repos]]
name = "web"
url = "{(tmp_path / 'nowhere.git').as_uri()}"
forge = "github"
full_name = "acme/web"
""", encoding="utf-8")
    monkeypatch.setenv("REPOTUNE_GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("REPOTUNE_GITHUB_WEBHOOK_SECRET", GH_SECRET)
    monkeypatch.setenv("REPOTUNE_CONFIG", str(path))
    local_forge.add_github_repo("acme/web", {"alice": "write", "mia": "maintain"}, pulls=(PR,))
    settings = config.load(path)
    config.set_current(settings)
    home.mkdir(parents=True)
    (home / "triton").symlink_to(triton_repo_root, target_is_directory=True)
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(make_artifact("good")))
    proxy = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                         model_name=MODEL, timeout_s=30, telemetry_dir=home / "telemetry"))
    conn = redis.Redis.from_url(redis_url)
    yield Chat("github", local_forge, settings, conn, create_app(settings)), repo, proxy
    proxy.config["repotune.telemetry"].close()
    config.set_current(None)


def _canary_run(settings, artifact: Path, trigger: dict) -> str:
    run = new_run(repo="web", trigger=trigger, model=MODEL)
    run.status, run.artifact, run.checkpoint = RunStatus.PUBLISHING, str(artifact), f"/ckpt/{time.time_ns()}"
    run.history.append((RunStatus.PUBLISHING.value, run.created, ""))
    save_run(settings.home, run)
    jobs.publish_step(run.id)  # the real step: a canary, since [canary] is on
    assert load_run(settings.home, run.id).status == RunStatus.CANARY
    return run.id


def _served_versions(proxy, keys: int = 30) -> set[int]:
    client = proxy.test_client()
    seen = set()
    for i in range(keys):
        resp = client.post("/v1/completions", json={"prompt": "def f(x):\n    ", "max_tokens": 2, "temperature": 0},
                           headers={"Authorization": f"Bearer key-{i}"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        seen.add(int(resp.headers[VERSION_HEADER]))
    return seen


def _work_deploy(conn) -> None:
    deploy = Queue("deploy", connection=conn)
    ids = list(deploy.job_ids)
    SimpleWorker([deploy], connection=conn).work(burst=True)
    for job in (deploy.fetch_job(i) for i in ids):
        assert job.is_finished, job.latest_result().exc_string if job.latest_result() else job


def test_promote_from_chatops_and_stop_from_the_cli_report_to_the_forge(env, make_artifact, triton_server):
    chat, repo, proxy = env
    prod = repo.current()
    gpu = Queue("gpu", connection=chat.conn)

    # 1. A chat-ops run's canary, promoted by a maintainer from the merge request.
    run_id = _canary_run(chat.settings, make_artifact("good"),
                         {"kind": "chatops", "forge": "github", "repo": "acme/web", "number": PR,
                          "requested_by": "mia"})
    cand = repo.canary().version
    assert _served_versions(proxy) == {prod, cand}  # a share of the clients gets the canary
    assert chat.say("alice", "/repotune canary promote")[0].startswith("@alice :no_entry:")
    (reply,) = chat.say("mia", "/repotune canary promote")
    assert reply.startswith("@mia :traffic_light: Promoting the canary to everyone (job `")
    assert gpu.count == 0
    _work_deploy(chat.conn)
    run = load_run(chat.settings.home, run_id)
    assert run.status == RunStatus.SERVING and repo.current() == cand and repo.canary() is None
    assert run.metrics["canary"]["by"] == f"@mia on acme/web#{PR}"
    assert _served_versions(proxy) == {cand}  # everyone now
    closing = chat.replies()[-1]
    assert closing.startswith(f"**RepoTune run `{run_id}`: serving**")
    assert f"- `repotune/canary`: success — promoted by hand (@mia on acme/web#{PR})" in closing
    (editor,) = [gpu.fetch_job(j) for j in gpu.job_ids]  # the editor curve gets its point
    assert (editor.func_name, editor.args) == ("bot.jobs.editor_eval_job", (cand, prod, run.checkpoint, run_id))

    # 2. A push run's canary, stopped from a terminal: statuses on the pushed commit.
    run_id = _canary_run(chat.settings, make_artifact("perturbed"),
                         {"kind": "push", "forge": "github", "repo": "acme/web", "commit": SHA})
    worse = repo.canary().version
    statuses = chat.forge.github_repos["acme/web"].statuses
    assert [(s["context"], s["state"]) for s in statuses][-1] == ("repotune/canary", "pending")
    assert statuses[-1]["description"].startswith("serving 50% of clients")
    out = CliRunner().invoke(cli, ["canary", "stop"], catch_exceptions=False)
    assert out.exit_code == 0 and out.output.startswith("canary stop queued (job "), out.output
    _work_deploy(chat.conn)
    run = load_run(chat.settings.home, run_id)
    assert run.status == RunStatus.REJECTED and run.error == "rolled back by hand (cli)"
    last = statuses[-1]
    assert (last["context"], last["state"]) == ("repotune/canary", "failure")
    assert last["description"].startswith("rolled back by hand (cli); candidate v")
    assert repo.current() == cand and repo.canary() is None
    assert not TritonClient(triton_server.url, MODEL).model_ready(worse)
    assert _served_versions(proxy) == {cand}
    assert gpu.count == 1  # a stop queues no editor-task evaluation
    again = CliRunner().invoke(cli, ["canary", "stop"], catch_exceptions=False)
    assert again.exit_code == 1 and f"no canary of {MODEL} is running" in again.output


def test_the_demos_scripted_editors_drive_a_canary_to_promotion(env, make_artifact):
    """``repotune demo --canary``'s client (:func:`bot.demo_run.drive_canary`) over HTTP against
    the real proxy: its known acceptance per version is what the test reads, and it promotes."""
    from bot import canary, demo_run, scheduler
    from tests.fixtures.triton import serve_app

    chat, repo, proxy = env
    chat.settings.canary.min_shown = 10
    prod = repo.current()
    run_id = _canary_run(chat.settings, make_artifact("good"), {"kind": "push"})
    state = repo.canary()
    with serve_app(proxy) as base:
        counts = demo_run.drive_canary(f"{base}/v1/completions", state.version, keys=40, rates=(0.2, 0.95))
    assert set(counts) == {prod, state.version} and sum(c[0] for c in counts.values()) == 40
    assert proxy.config["repotune.telemetry"].writer.flush()
    arms = canary.arms(chat.settings, prod, state, time.time())
    assert {a.version: [a.shown, a.accepted] for a in arms} == counts  # what the editors did is what counts
    (did,) = scheduler.tick(chat.settings, chat.conn)["canary"]
    assert did["action"] == "promote", did
    assert load_run(chat.settings.home, run_id).status == RunStatus.SERVING and repo.current() == state.version
