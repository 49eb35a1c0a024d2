"""``repotune canary status|stop|promote``: the canary of the serving model, from a terminal.

``status`` reads the pointer and the telemetry directly; ``stop`` (roll back) and ``promote``
are queued on the deploy queue through Redis, exactly as chat-ops queues them (:mod:`bot.canary`).
"""

from __future__ import annotations

import json

import click

from bot.commands._common import home_option
from bot.commands.service import _redis, _settings, config_option


@click.group("canary")
def canary_group() -> None:
    """The canary of the serving model: a new version serving a share of clients ([canary] settings)."""


@canary_group.command("status")
@config_option
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_command(config_path, home, as_json) -> None:
    """Production, the running canary and its acceptance test so far."""
    from bot import canary

    data = canary.status(_settings(config_path, home))
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else canary.format_status(data))


def _action(action: str, config_path, home) -> None:
    from bot import canary

    settings = _settings(config_path, home)
    job = canary.enqueue_action(settings, _redis(settings), action, by="cli")
    click.echo(f"canary {action} queued (job {job})")


@canary_group.command("stop")
@config_option
@home_option
def stop_command(config_path, home) -> None:
    """Roll the canary back: everyone to production, the candidate unloaded."""
    _action("stop", config_path, home)


@canary_group.command("promote")
@config_option
@home_option
def promote_command(config_path, home) -> None:
    """Serve the canary to everyone now, without waiting for the acceptance test."""
    _action("promote", config_path, home)


COMMANDS = [canary_group]
