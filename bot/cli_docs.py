"""Render ``docs/cli.md`` from the click commands, so the CLI reference cannot drift.

Regenerate with ``python -m bot.cli_docs > docs/cli.md``; ``tests/test_docs_cli.py`` fails when
the file is out of date.
"""

from __future__ import annotations

import click

from bot.cli import cli

HEADER = """# Command line reference

Generated from `repotune … --help` by `python -m bot.cli_docs > docs/cli.md`; a test keeps it
in sync. Every option with an environment variable can also be set as `REPOTUNE_<OPTION>`.
"""


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            if not command.commands[name].hidden:
                found += _walk(command.commands[name], [*path, name])
    return found


def render() -> str:
    """The whole reference as markdown."""
    parts = [HEADER]
    contexts: dict[tuple[str, ...], click.Context] = {}
    for path, command in _walk(cli, ["repotune"]):
        # Real parent contexts, so every command inherits the group's settings (``-h``) exactly
        # as it does when invoked.
        parent = contexts.get(tuple(path[:-1]))
        ctx = click.Context(command, parent=parent, info_name=path[-1], terminal_width=100,
                            max_content_width=100,
                            **(cli.context_settings if parent is None else {}))
        contexts[tuple(path)] = ctx
        parts.append(f"\n## `{' '.join(path)}`\n\n```text\n{command.get_help(ctx)}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
