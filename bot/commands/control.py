"""Operator commands that mirror chat-ops: ``retrain``, ``promote``, ``pause``, ``resume``.

They act on a running deployment through its Redis (``REDIS_URL``), exactly as the chat-ops
commands do, so a person at a terminal and a person in a merge request have the same levers.
"""

from __future__ import annotations

import click

from bot.commands._common import home_option
from bot.commands.service import _redis, _settings, config_option

model_option = click.option("--model", "model", default=None, metavar="NAME",
                            help="The [[models]] entry to act on (optional with one model).")


@click.command("retrain")
@config_option
@home_option
@click.option("--repo", default=None, help="Only this configured repository (default: all).")
@click.option("--full", is_flag=True, help="Rebuild the corpus from scratch first.")
@model_option
def retrain_command(config_path, home, repo, full, model) -> None:
    """Start a training run of a model now, skipping the debounce, threshold and cooldown."""
    from bot import scheduler
    from bot.errors import BotError

    settings = _settings(config_path, home)
    try:
        run_id = scheduler.request_training(settings, _redis(settings), repo, full=full, model=model,
                                            reason="requested from the command line", requested_by="cli")
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    if run_id is None:
        raise click.ClickException("a training run of this model is already in progress; try again when it ends")
    click.echo(f"run {run_id} queued")


@click.command("promote")
@config_option
@home_option
@click.argument("run_id")
@model_option
def promote_command(config_path, home, run_id, model) -> None:
    """Serve RUN_ID even though the gate rejected it (or re-activate its version).

    The run's own model is promoted; ``--model`` only checks that RUN_ID is a run of it."""
    from bot import lifecycle, models
    from bot.errors import BotError
    from bot.runs import load_run

    settings = _settings(config_path, home)
    try:
        run = load_run(settings.home, run_id)
        owner = run.model or settings.serving.model_name
        if model is not None and models.get_model(settings, model).name != owner:
            raise BotError(f"run {run_id} is a run of model {owner!r}, not {model!r}")
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    job = lifecycle.enqueue_promote(settings, _redis(settings), run_id)
    click.echo(f"promotion of {run_id} queued (job {job})")


@click.command("pause")
@config_option
@home_option
@model_option
def pause_command(config_path, home, model) -> None:
    """Stop starting automatic training runs of every model, or of one (pushes are still ingested)."""
    from bot import scheduler

    settings = _settings(config_path, home)
    name = _model_name(settings, model)
    scheduler.pause(_redis(settings), name)
    click.echo(f"automatic retraining of {f'model {name}' if name else 'every model'} paused")


@click.command("resume")
@config_option
@home_option
@model_option
def resume_command(config_path, home, model) -> None:
    """Start automatic training runs again (``--model``: lift that model's own pause only)."""
    from bot import models, scheduler

    settings = _settings(config_path, home)
    name = _model_name(settings, model)
    connection = _redis(settings)
    scheduler.resume(connection, name)
    if name and scheduler.is_paused(connection):
        click.echo(f"model {name}'s own pause lifted; every model is still paused (`repotune resume`)")
    elif name:
        click.echo(f"automatic retraining of model {name} resumed")
    else:
        still = scheduler.paused_models(connection, models.model_names(settings))
        click.echo("automatic retraining resumed" + (f", except {', '.join(still)} (paused on its own; "
                                                     "`repotune resume --model NAME`)" if still else ""))


def _model_name(settings, model: str | None) -> str | None:
    """``--model`` checked against the configured models (None: every model)."""
    from bot import models
    from bot.errors import BotError

    if model is None:
        return None
    try:
        return models.get_model(settings, model).name
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc


COMMANDS = [retrain_command, promote_command, pause_command, resume_command]
