"""The operator commands act on a real Redis and real run records, like their chat-ops twins."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bot import scheduler
from bot.cli import cli
from bot.runs import load_run


def _env(tmp_path: Path, redis_url: str, repo_url: str) -> dict[str, str]:
    toml = tmp_path / "repotune.toml"
    toml.write_text(f'[[repos]]\nname = "web"\nurl = "{repo_url}"\n', encoding="utf-8")
    return {"REPOTUNE_CONFIG": str(toml), "REPOTUNE_HOME": str(tmp_path / "home"), "REDIS_URL": redis_url}


def test_pause_resume_retrain_promote(tmp_path: Path, redis_url: str, redis_server, make_repo) -> None:
    repo = make_repo(files=5)
    env = _env(tmp_path, redis_url, repo.url)
    runner = CliRunner()
    connection = redis_server.client()

    result = runner.invoke(cli, ["pause"], env=env)
    assert result.exit_code == 0, result.output
    assert scheduler.is_paused(connection)
    result = runner.invoke(cli, ["resume"], env=env)
    assert result.exit_code == 0, result.output
    assert not scheduler.is_paused(connection)

    result = runner.invoke(cli, ["retrain", "--repo", "web"], env=env)
    assert result.exit_code == 0, result.output
    run_id = result.output.split()[1]
    run = load_run(tmp_path / "home", run_id)
    assert run.trigger.kind == "chatops" and run.trigger.requested_by == "cli"

    result = runner.invoke(cli, ["promote", "no-such-run"], env=env)
    assert result.exit_code == 1
    assert "no-such-run" in result.output
