"""Operator commands that mirror chat-ops: ``retrain``, ``promote``, ``pause``, ``resume``.

They act on a running deployment through its Redis (``REDIS_URL``), exactly as the chat-ops
commands do, so a person at a terminal and a person in a merge request have the same levers.
"""

from __future__ import annotations

import click

from bot.commands._common import home_option
from bot.commands.service import _redis, _settings, config_option


@click.command("retrain")
@config_option
@home_option
@click.option("--repo", default=None, help="Only this configured repository (default: all).")
@click.option("--full", is_flag=True, help="Rebuild the corpus from scratch first.")
def retrain_command(config_path, home, repo, full) -> None:
    """Start a training run now, skipping the debounce, threshold and cooldown."""
    from bot import scheduler

    settings = _settings(config_path, home)
    run_id = scheduler.request_training(settings, _redis(settings), repo, full=full,
                                        reason="requested from the command line", requested_by="cli")
    if run_id is None:
        raise click.ClickException("a training run is already in progress; try again when it ends")
    click.echo(f"run {run_id} queued")


@click.command("promote")
@config_option
@home_option
@click.argument("run_id")
def promote_command(config_path, home, run_id) -> None:
    """Serve RUN_ID even though the gate rejected it (or re-activate its version)."""
    from bot import lifecycle

    settings = _settings(config_path, home)
    job = lifecycle.enqueue_promote(settings, _redis(settings), run_id)
    click.echo(f"promotion of {run_id} queued (job {job})")


@click.command("pause")
@config_option
@home_option
def pause_command(config_path, home) -> None:
    """Stop starting automatic training runs (pushes are still ingested)."""
    from bot import scheduler

    settings = _settings(config_path, home)
    scheduler.pause(_redis(settings))
    click.echo("automatic retraining paused")


@click.command("resume")
@config_option
@home_option
def resume_command(config_path, home) -> None:
    """Start automatic training runs again."""
    from bot import scheduler

    settings = _settings(config_path, home)
    scheduler.resume(_redis(settings))
    click.echo("automatic retraining resumed")


COMMANDS = [retrain_command, promote_command, pause_command, resume_command]
