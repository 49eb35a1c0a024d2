"""``repotune canary status|stop|promote``: the canary of a model, from a terminal.

``status`` reads the pointer and the telemetry directly; ``stop`` (roll back) and ``promote``
are queued on the deploy queue through Redis, exactly as chat-ops queues them (:mod:`bot.canary`).
``--model`` names the ``[[models]]`` entry (needed only when several are configured).
"""

from __future__ import annotations

import json

import click

from bot.commands._common import home_option
from bot.commands.control import model_option
from bot.commands.service import _redis, _settings, config_option


@click.group("canary")
def canary_group() -> None:
    """The canary of a model: a new version serving a share of clients ([canary] settings)."""


@canary_group.command("status")
@config_option
@home_option
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(config_path, home, model, as_json) -> None:
    """Production, the running canary and its acceptance test so far (or the last decision)."""
    from bot import canary
    from bot.errors import BotError

    try:
        data = canary.status(_settings(config_path, home), model)
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else canary.format_status(data))


def _action(action: str, config_path, home, model) -> None:
    from bot import canary
    from bot.errors import BotError

    settings = _settings(config_path, home)
    try:
        job = canary.enqueue_action(settings, _redis(settings), action, by="cli", model=model)
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"canary {action} queued (job {job})")


@canary_group.command("stop")
@config_option
@home_option
@model_option
def stop_command(config_path, home, model) -> None:
    """Roll the canary back: everyone to production, the candidate unloaded."""
    _action("stop", config_path, home, model)


@canary_group.command("promote")
@config_option
@home_option
@model_option
def promote_command(config_path, home, model) -> None:
    """Serve the canary to everyone now, without waiting for the acceptance test."""
    _action("promote", config_path, home, model)


COMMANDS = [canary_group]
