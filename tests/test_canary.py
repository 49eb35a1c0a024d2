"""Canary promotion end to end on a real Triton and the real proxy: the publish step starts a
canary, a scripted client (many distinct API keys, a known acceptance rate per version) sends
completions and feedback, and the scheduler tick promotes one canary and rolls another back.
Routing is checked to be sticky per key, and production answers every request throughout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bot import jobs, scheduler
from bot.runs import RunStatus, load_run, new_run, save_run
from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.client import TritonClient

MODEL = "canary-e2e"
VERSION_HEADER = "x-repotune-model-version"
KEYS = [f"dev-key-{i:03d}" for i in range(90)]


@pytest.fixture
def canary_env(bot_settings, triton_server, triton_repo_root: Path, make_artifact):
    """Settings with canaries on (share 0.5, 25 shown per arm), the bot's ``<home>/triton`` being
    the session Triton's repository, version 1 of :data:`MODEL` in production, and the proxy."""
    settings = bot_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "triton").symlink_to(triton_repo_root, target_is_directory=True)
    settings.serving.model_name = MODEL
    settings.serving.triton_url = triton_server.url
    settings.canary.enabled = True
    settings.canary.share = 0.5
    settings.canary.min_shown = 25
    settings.canary.max_duration_seconds = 600
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(make_artifact("good")))
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30,
                                       telemetry_dir=settings.home / "telemetry"))
    yield settings, repo, app
    app.config["repotune.telemetry"].close()


def _publish_as_canary(settings, artifact: Path) -> str:
    """A run at its publish step (the real job function): it must end in ``canary``."""
    run = new_run(repo=None, trigger={"kind": "push"}, model=MODEL)
    run.status, run.artifact = RunStatus.PUBLISHING, str(artifact)
    run.history.append((RunStatus.PUBLISHING.value, run.created, ""))
    save_run(settings.home, run)
    jobs.publish_step(run.id)
    assert load_run(settings.home, run.id).status == RunStatus.CANARY
    return run.id


def _drive(app, rates: dict[int, float], seed: int) -> dict[str, set[int]]:
    """Two completions per key, feedback on each with the version's acceptance rate; returns
    the versions each key was served."""
    rng = random.Random(seed)
    client = app.test_client()
    served: dict[str, set[int]] = {}
    for _ in range(2):
        for key in KEYS:
            resp = client.post("/v1/completions", json={"prompt": "def add(a, b):\n    ", "max_tokens": 2,
                                                        "temperature": 0},
                               headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200, resp.get_data(as_text=True)  # someone always serves
            version = int(resp.headers[VERSION_HEADER])
            served.setdefault(key, set()).add(version)
            fb = client.post(f"/v1/completions/{resp.get_json()['id']}/feedback",
                             json={"accepted": rng.random() < rates[version]},
                             headers={"Authorization": f"Bearer {key}"})
            assert fb.status_code == 200, fb.get_data(as_text=True)
    assert app.config["repotune.telemetry"].writer.flush()
    return served


def test_a_better_canary_is_promoted_and_a_worse_one_rolled_back_by_the_tick(canary_env, redis_conn,
                                                                            make_artifact, triton_server):
    settings, repo, app = canary_env
    prod = repo.current()

    run_id = _publish_as_canary(settings, make_artifact("good"))
    state = repo.canary()
    assert state is not None and repo.current() == prod and state.version > prod
    served = _drive(app, {prod: 0.3, state.version: 0.9}, seed=1)
    assert all(len(v) == 1 for v in served.values()), "a key was served two versions: routing is not sticky"
    on_canary = [k for k, v in served.items() if v == {state.version}]
    assert 0.3 < len(on_canary) / len(KEYS) < 0.7  # about the share

    did = scheduler.tick(settings, redis_conn)
    assert [c["action"] for c in did["canary"]] == ["promote"], did["canary"]
    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.SERVING and repo.current() == state.version and repo.canary() is None
    decision = run.metrics["canary"]["decision"]
    assert decision["action"] == "promote" and decision["low"] > -settings.canary.margin
    assert decision["candidate"]["shown"] >= 25 and decision["production"]["shown"] >= 25
    assert scheduler.lock_holder(redis_conn, MODEL) is None  # the model is free for the next run

    # A worse candidate: rolled back automatically, production untouched, the candidate unloaded.
    promoted = repo.current()
    run_id = _publish_as_canary(settings, make_artifact("perturbed"))
    worse = repo.canary()
    assert scheduler.lock_holder(redis_conn, MODEL) == run_id  # the canary keeps the model
    assert scheduler.tick(settings, redis_conn)["canary"][0]["action"] == "extend"  # nothing shown yet
    served = _drive(app, {promoted: 0.9, worse.version: 0.1}, seed=2)
    assert all(len(v) == 1 for v in served.values())
    did = scheduler.tick(settings, redis_conn)
    assert [c["action"] for c in did["canary"]] == ["rollback"], did["canary"]
    run = load_run(settings.home, run_id)
    assert run.status == RunStatus.REJECTED and "clearly worse" in run.error
    assert run.metrics["canary"]["decision"]["high"] < 0
    assert repo.current() == promoted and repo.canary() is None
    assert not TritonClient(triton_server.url, MODEL).model_ready(worse.version)
    pointer = json.loads((repo.model_dir / "serving.json").read_text())
    assert pointer == {"model": MODEL, "version": promoted}
    after = _drive(app, {promoted: 0.5}, seed=3)  # everyone is back on production
    assert set().union(*after.values()) == {promoted}
