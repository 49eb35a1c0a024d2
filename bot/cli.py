"""The ``repotune`` command line: one click group, a thin layer over the packages' APIs.

Commands live in ``bot/commands/<area>.py``; each module exposes ``COMMANDS`` (a list of
click commands or groups) and is discovered here, so areas stay independent. Library errors
become :class:`click.ClickException` at this edge only, in :class:`RepoTuneGroup` (exit 1;
usage errors exit 2).

Importing this module must stay cheap: every ``repotune`` call pays for it, ``--help``
included. Command modules import torch, transformers, Flask, RQ, Redis, tritonclient … inside
the command functions; ``tests/test_cli_imports.py`` keeps it that way.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import typing as t

import click

from bot import commands as _commands_pkg

LIBRARY_ERROR_ROOTS: tuple[tuple[str, str], ...] = (
    ("bot.errors", "BotError"),
    ("trainer.errors", "TrainerError"),
    ("families", "FamilyError"),
    ("converter.errors", "ConversionError"),
    ("serving.errors", "ServingError"),
)
"""(module, class) of each package's error root. An error of one of these trees is expected
(a missing corpus, Triton down, a bad config key) and is shown as ``Error: <message>`` with
exit status 1; anything else is a bug and keeps its traceback."""


def library_error_types() -> tuple[type[BaseException], ...]:
    """The error roots of the packages loaded so far.

    A package that was never imported cannot have raised its error, so looking roots up in
    :data:`sys.modules` is exact and keeps the CLI from importing ``trainer`` (and torch) just
    to name a class.
    """
    found = []
    for module_name, class_name in LIBRARY_ERROR_ROOTS:
        module = sys.modules.get(module_name)
        if module is not None:
            found.append(getattr(module, class_name))
    return tuple(found)


class RepoTuneGroup(click.Group):
    """The root group: runs the chosen command and turns library errors into CLI errors once."""

    def invoke(self, ctx: click.Context) -> t.Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            if isinstance(exc, library_error_types()):
                raise click.ClickException(str(exc)) from exc
            raise


def _load_commands() -> list[click.Command]:
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bot.commands.{info.name}")
        found.extend(getattr(module, "COMMANDS", []))
    return found


@click.group(cls=RepoTuneGroup,
             context_settings={"auto_envvar_prefix": "REPOTUNE", "help_option_names": ["-h", "--help"]})
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
