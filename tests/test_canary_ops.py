"""Operating canaries per model, without Triton: ``repotune canary status|stop`` (CliRunner),
chat-ops ``/repotune canary …`` through the signed webhook, a real worker and the local forge,
and the status snapshot / page / ``/api/status``.

Two ``[[models]]`` (``alpha``, ``beta``) both learn from ``acme/web``. ``alpha`` runs a canary
(version 2 beside production 1; its pointer is written as :class:`serving.ModelRepository`
writes it); the proxy's real :class:`serving.telemetry.Telemetry` records completions and
feedback of both models, with ``beta``'s on the same version numbers, so a status that mixed
the models up would show the wrong figures. Loading and switching on Triton is
tests/test_canary_forge.py's part.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue

from bot import canary, config
from bot.cli import cli
from bot.runs import RunStatus, new_run, save_run
from serving.telemetry import Telemetry
from tests.fixtures.forge import GITHUB_TOKEN, LocalForge
from tests.test_chatops_commands import GH_SECRET, PR, Chat

# (model, version) -> (shown, accepted): alpha's canary is clearly better on these figures.
FIGURES = {("alpha", 1): (10, 5), ("alpha", 2): (12, 11), ("beta", 2): (30, 0), ("beta", 1): (4, 4)}


def _config(tmp_path: Path, forge: LocalForge, redis_url: str) -> Path:
    home = tmp_path / "home"
    text = f"""
home = "{home}"
redis_url = "{redis_url}"
status_page_url = "http://status.test"

[serving]
model_name = "alpha"

[canary]
enabled = true
share = 0.5

[github]
api_url = "{forge.github_api_url}"

[chatops]
bot_username = "repotune-bot"

[[repos]]
name = "web"
url = "{(tmp_path / 'nowhere.git').as_uri()}"
forge = "github"
full_name = "acme/web"

[[models]]
name = "alpha"
repos = ["web"]
method = "full"

[[models]]
name = "beta"
repos = ["web"]
method = "full"
"""
    path = tmp_path / "repotune.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _pointer(home: Path, model: str, production: int, canary_entry: dict | None) -> None:
    """``triton/<model>/serving.json`` as the model repository leaves it (versions' folders too)."""
    root = home / "triton" / model
    for v in (1, 2):
        (root / str(v)).mkdir(parents=True, exist_ok=True)
    pointer = {"model": model, "version": production}
    if canary_entry is not None:
        pointer["canary"] = canary_entry
    (root / "serving.json").write_text(json.dumps(pointer), encoding="utf-8")


def _telemetry(folder: Path) -> None:
    """Completions and feedback through the proxy's own telemetry recorder."""
    tele = Telemetry(folder, b"test-salt")
    for (model, version), (shown, accepted) in FIGURES.items():
        for i in range(shown):
            cid = f"cmpl-{uuid.uuid4().hex}"
            tele.completion(cid=cid, model=model, version=version, language="python", route="/v1/completions",
                            client=tele.client(f"key-{model}-{i}"), prompt_tokens=3, texts=["x + 1"],
                            latency_s=0.01)
            tele.feedback(cid, {"accepted": i < accepted})
    assert tele.writer.flush()
    tele.close()


@pytest.fixture
def ops(tmp_path: Path, local_forge: LocalForge, redis_url: str, monkeypatch):
    from bot.webhook import create_app

    monkeypatch.setenv("REPOTUNE_GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("REPOTUNE_GITHUB_WEBHOOK_SECRET", GH_SECRET)
    local_forge.add_github_repo("acme/web", {"alice": "write", "mia": "maintain", "bob": "read"}, pulls=(PR,))
    path = _config(tmp_path, local_forge, redis_url)
    monkeypatch.setenv("REPOTUNE_CONFIG", str(path))
    settings = config.load(path)
    config.set_current(settings)
    since = time.time() - 120
    _pointer(settings.home, "alpha", 1, {"version": 2, "share": 0.5, "since": since})
    _pointer(settings.home, "beta", 1, None)
    _telemetry(settings.home / "telemetry")
    run = new_run(repo="web", trigger={"kind": "push"}, model="alpha")
    run.status, run.version = RunStatus.CANARY, 2
    run.history.append((RunStatus.CANARY.value, since, "version 2 to 50% of clients"))
    save_run(settings.home, run)
    conn = redis.Redis.from_url(redis_url)
    yield Chat("github", local_forge, settings, conn, create_app(settings)), run
    config.set_current(None)


def _repotune(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_status_and_actions_are_per_model_on_the_cli(ops):
    chat, run = ops
    out = _repotune("canary", "status", "--model", "alpha", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    decision = data["canary"]["decision"]
    assert (data["model"], data["production"], data["canary"]["version"], data["canary"]["run"]) == \
        ("alpha", 1, 2, run.id)
    # Only alpha's telemetry counts: beta's version 2 (30 shown, none accepted) is not mixed in.
    assert (decision["candidate"]["shown"], decision["candidate"]["accepted"]) == (12, 11)
    assert (decision["production"]["shown"], decision["production"]["accepted"]) == (10, 5)
    assert decision["action"] == "extend"  # 200 shown per version are needed before a look

    text = _repotune("canary", "status", "--model", "alpha")
    assert "canary version 2 serves 50% of clients since" in text.output
    assert "candidate v2 91.7% of 12 vs production v1 50.0% of 10" in text.output
    beta = _repotune("canary", "status", "--model", "beta")
    assert beta.exit_code == 0 and "no canary is running (canary promotion is enabled)" in beta.output

    several = _repotune("canary", "stop")
    assert several.exit_code == 1 and "several models are configured (alpha, beta)" in several.output
    none = _repotune("canary", "promote", "--model", "beta")
    assert none.exit_code == 1 and "no canary of beta is running" in none.output
    unknown = _repotune("canary", "status", "--model", "gamma")
    assert unknown.exit_code == 1 and "no model named 'gamma'" in unknown.output
    deploy = Queue("deploy", connection=chat.conn)
    assert deploy.count == 0

    stop = _repotune("canary", "stop", "--model", "alpha")
    assert stop.exit_code == 0, stop.output
    (job,) = [deploy.fetch_job(j) for j in deploy.job_ids]
    assert (job.func_name, job.args, job.kwargs) == ("bot.canary.action_job", ("stop", "cli"), {"model": "alpha"})
    assert stop.output.strip() == f"canary stop queued (job {job.id})"


def test_chatops_canary_needs_maintain_on_every_feeding_repo_and_names_the_model(ops):
    chat, _ = ops
    deploy = Queue("deploy", connection=chat.conn)
    (denied,) = chat.say("alice", "/repotune canary stop --model alpha")
    assert denied == "@alice :no_entry: `canary` needs maintain access to acme/web; you have write."
    assert chat.say("bob", "/repotune canary status --model alpha")[0].startswith("@bob :no_entry:")
    (which,) = chat.say("mia", "/repotune canary status")
    assert "feeds several models (`alpha`, `beta`): name one with `--model <name>`" in which
    (typo,) = chat.say("mia", "/repotune canary status --model alpah")
    assert "No model `alpah`. Did you mean `alpha`?" in typo
    assert deploy.count == 0

    (status,) = chat.say("mia", "/repotune canary status --model alpha")
    assert status.startswith("@mia **Canary**")
    assert "model alpha: production version 1" in status
    assert "candidate v2 91.7% of 12 vs production v1 50.0% of 10" in status
    (beta,) = chat.say("mia", "/repotune canary status --model beta")
    assert "model beta: production version 1" in beta and "no canary is running" in beta
    (none,) = chat.say("mia", "/repotune canary promote --model beta")
    assert none == "@mia :x: `canary` failed: no canary of beta is running; `canary status` shows what serves"

    (queued,) = chat.say("mia", "/repotune canary promote --model=alpha")
    (job,) = [deploy.fetch_job(j) for j in deploy.job_ids]
    assert queued == f"@mia :traffic_light: Promoting the canary to everyone of model `alpha` (job `{job.id}`)."
    assert job.args == ("promote", f"@mia on acme/web#{PR}") and job.kwargs == {"model": "alpha"}


def test_status_views_show_the_running_canary_and_the_last_decision(ops):
    from bot.status import collect, public

    chat, run = ops
    (result,) = canary.evaluate(chat.settings, chat.conn)  # the scheduler's look: records the figures
    assert result["action"] == "extend" and result["run"] == run.id
    parts = {m["name"]: m["canary"] for m in collect(chat.settings, chat.conn)["models"]}
    assert parts["beta"] == {"enabled": True, "running": None, "last": None}
    running = parts["alpha"]["running"]
    assert (running["version"], running["production"], running["share"], running["run"]) == (2, 1, 0.5, run.id)
    assert running["decision"]["candidate"]["shown"] == 12 and running["decision"]["production"]["accepted"] == 5
    assert running["judged_at"] >= running["since"]

    client = chat.app.test_client()
    api = client.get("/api/status").get_json()
    (alpha,) = [m for m in api["models"] if m["name"] == "alpha"]
    assert alpha["canary"]["running"]["decision"]["candidate"]["accepted"] == 11
    page = client.get("/").get_data(as_text=True)
    assert '<section id="canary">' in page and "Model alpha" in page
    assert "<td>canary</td><td class=\"right\">2</td><td class=\"right\">12</td><td class=\"right\">11</td>" \
           "<td class=\"right\">91.7%</td>" in page
    assert "<td>production</td><td class=\"right\">1</td><td class=\"right\">10</td>" in page

    out = _repotune("status")
    assert out.exit_code == 0, out.output
    assert "canary of alpha: version 2 serves 50% of clients beside production version 1 since" in out.output
    assert "candidate v2 91.7% of 12 vs production v1 50.0% of 10" in out.output

    # Decided (by hand, as action_job records it): the running part goes, the last decision shows.
    from bot import lifecycle
    from bot.runs import load_run

    run = load_run(chat.settings.home, run.id)
    run.metrics["canary"]["by"] = f"@mia on acme/web#{PR}"
    run.metrics["canary"]["decision"]["reason"] = "rolled back by hand (@mia on acme/web#7)"
    lifecycle.move(chat.settings, run, RunStatus.REJECTED, "rolled back by hand")
    _pointer(chat.settings.home, "alpha", 1, None)
    last = public(collect(chat.settings, chat.conn))["models"][0]["canary"]
    assert last["running"] is None
    assert (last["last"]["run"], last["last"]["outcome"], last["last"]["version"]) == (run.id, "rolled back", 2)
    assert "by" not in last["last"]  # who acted stays off the public views
    out = _repotune("status", "--model", "alpha")
    assert f"last canary of alpha: version 2 rolled back (run {run.id}): rolled back by hand" in out.output
    page = client.get("/").get_data(as_text=True)
    assert "Last decision: version <strong>2</strong>" in page and "rolled back" in page


def test_demo_canary_needs_canary_promotion_on(tmp_path: Path):
    out = CliRunner().invoke(cli, ["demo", "--canary", "--home", str(tmp_path / "demo-home")])
    assert out.exit_code == 1
    assert "--canary needs canary promotion on: add `[canary]` with `enabled = true`" in out.output
