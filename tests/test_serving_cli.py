"""`repotune deploy | models | serve --get | rollback` against the session's real Triton."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli


def test_deploy_models_serve_get_and_rollback_errors(tmp_path: Path, tiny_model: Path, triton_server) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    common = ["--home", str(home), "--model", "cli", "--triton-url", triton_server.url]
    # Triton loads models from its own repository: make this home's repository that one.
    home.mkdir()
    (home / "triton").symlink_to(triton_server.model_repository, target_is_directory=True)
    deployed = runner.invoke(cli, ["deploy", str(tiny_model), *common])
    assert deployed.exit_code == 0, deployed.output
    assert "cli version 1 serving" in deployed.output

    listed = runner.invoke(cli, ["models", "--home", str(home), "--model", "cli", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(v["version"], v["serving"]) for v in json.loads(listed.output)] == [(1, True)]

    got = runner.invoke(cli, ["serve", *common, "--get", "/healthz"])
    assert got.exit_code == 0, got.output
    assert '"ready":true' in got.output.replace(" ", "")

    missing = runner.invoke(cli, ["serve", *common, "--get", "/nope"])
    assert missing.exit_code == 1
    assert "answered 404" in missing.output

    back = runner.invoke(cli, ["rollback", *common])
    assert back.exit_code == 1
    assert "no earlier healthy version" in back.output
