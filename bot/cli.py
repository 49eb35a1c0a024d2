"""The ``repotune`` command line: one click group, a thin layer over the packages' APIs.

Commands live in ``bot/commands/<area>.py``; each module exposes ``COMMANDS`` (a list of
click commands or groups) and is discovered here, so areas stay independent. Library errors
become :class:`click.ClickException` at this edge only (exit 1; usage errors exit 2).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import click

from bot import commands as _commands_pkg


def _load_commands() -> list[click.Command]:
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bot.commands.{info.name}")
        found.extend(getattr(module, "COMMANDS", []))
    return found


@click.group(context_settings={"auto_envvar_prefix": "REPOTUNE", "help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="repotune")
def cli(verbose: int) -> None:
    """RepoTune keeps a code-completion model fine-tuned on your own repositories.

    Pushes update a training corpus; when enough changed, the model is fine-tuned,
    evaluated against code it has never seen, and hot-swapped into Triton only if it is better.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in _load_commands():
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="repotune")


if __name__ == "__main__":
    main()
