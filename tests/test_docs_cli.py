"""docs/cli.md is generated from the commands' --help and must be up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli
from bot.cli_docs import _walk

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    # A fresh process: click caches each command's help option on first use, so rendering after
    # other tests invoked commands directly could differ from what the generator prints.
    done = subprocess.run([sys.executable, "-m", "bot.cli_docs"], capture_output=True, text=True,
                          check=True, cwd=DOC.parents[1])
    assert DOC.read_text(encoding="utf-8") == done.stdout, (
        "docs/cli.md is stale: run `python -m bot.cli_docs > docs/cli.md`")


def test_every_command_answers_help() -> None:
    runner = CliRunner()
    for path, _command in _walk(cli, []):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_quick_start_commands_exist() -> None:
    names = {" ".join(p) for p, _ in _walk(cli, [])}
    for expected in ("up", "demo", "webhook", "worker", "corpus build", "train", "eval", "convert",
                     "serve", "deploy", "rollback", "models", "status", "runs", "init"):
        assert expected in names, f"`repotune {expected}` is documented but missing"
