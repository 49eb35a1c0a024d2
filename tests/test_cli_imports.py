"""The CLI edge: cheap to import, and library errors shown once as ``Error: …`` (exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from bot.cli import RepoTuneGroup, cli

HEAVY = ("torch", "transformers", "flask", "rq", "redis", "tritonclient", "numpy", "github",
         "gitlab", "matplotlib", "trainer", "serving", "converter")

ROOT = Path(__file__).resolve().parent.parent


def _loaded_modules(code: str) -> set[str]:
    """Every module a fresh interpreter has loaded after running ``code``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=env, check=True, cwd=ROOT).stdout
    return set(json.loads(out.splitlines()[-1]))


def _loaded_after(code: str) -> set[str]:
    """The top-level packages of :func:`_loaded_modules`."""
    return {name.split(".")[0] for name in _loaded_modules(code)}


def test_importing_the_cli_loads_no_heavy_package() -> None:
    loaded = _loaded_after("import bot.cli")
    assert "click" in loaded  # the probe sees what the import loaded
    assert "bot.config" not in _loaded_modules("import bot.cli")  # the settings table waits too
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_cli_spells_config_names_as_the_settings_module_does() -> None:
    from bot import config
    from bot.commands import service

    assert (service.CONFIG_ENV, service.CONFIG_FILENAME) == (config.CONFIG_ENV, config.CONFIG_FILENAME)


def test_help_loads_no_heavy_package() -> None:
    loaded = _loaded_after("import sys\nfrom bot.cli import cli\n"
                           "try:\n    cli(['corpus', '--help'], prog_name='repotune')\n"
                           "except SystemExit:\n    pass")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_library_errors_exit_1_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["corpus", "stats", "nope", "--home", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: no corpus named 'nope'")
    assert "Traceback" not in result.output
    from trainer.errors import CorpusError

    assert isinstance(result.exception, SystemExit)
    assert CorpusError.__name__ not in result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["corpus", "stats", "--home", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "Missing argument 'NAME'" in result.output


def test_the_group_translates_every_library_root_and_nothing_else() -> None:
    """Subclasses of each package's root become ``Error: …``; a bug keeps its traceback."""
    from bot.errors import ConfigError
    from converter.errors import VerificationFailed
    from serving.errors import TritonUnavailable
    from trainer.errors import ShardCorrupt

    group = RepoTuneGroup("t")
    raised = {"config": ConfigError("bad key x"), "verify": VerificationFailed("logits differ"),
              "triton": TritonUnavailable("Triton down"), "shard": ShardCorrupt("shard 3 is corrupt"),
              "bug": ValueError("a bug")}
    for name, exc in raised.items():
        group.add_command(click.Command(name, callback=lambda exc=exc: (_ for _ in ()).throw(exc)))
    runner = CliRunner()
    for name, exc in raised.items():
        result = runner.invoke(group, [name])
        assert result.exit_code == 1, (name, result.output)
        if name == "bug":
            assert result.exception is exc and result.output == ""
        else:
            assert result.output == f"Error: {exc}\n"
