"""What each chat-ops command does: one handler per command, each returning the markdown reply.

Handlers call the bot core (:mod:`bot.scheduler`, :mod:`bot.lifecycle`, :mod:`bot.runs`,
:mod:`bot.status`), imported inside the handler so the grammar and the webhook import none of
it. A :class:`~bot.errors.BotError` becomes a ``:x:`` reply, not a crash. ``status`` and ``eval``
replies pass through :mod:`~bot.chatops.scope`: a commenter sees their repository and the
model-wide facts, never another repository's details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.chatops.auth import level_name, required_level
from bot.chatops.grammar import SPECS, Command, shown, suggest
from bot.chatops.render import render_status
from bot.chatops.scope import hidden_names, redact, scope_status
from bot.errors import BotError, CommandError

if TYPE_CHECKING:
    import redis

    from bot.config import RepoConfig, Settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a command runs against."""

    settings: Settings
    redis: redis.Redis
    forge: str
    """``github`` or ``gitlab``."""
    repo: RepoConfig
    """The configured repository the comment was made in."""
    author: str
    """The commenter's login / username."""
    where: str
    """``owner/name#7`` or ``group/name!3``: for reasons and log lines."""
    reply_to: dict[str, Any] = field(default_factory=dict)
    """``forge``, ``repo``, ``number``, ``project_id``: where a run started here reports back
    (stored as the run's trigger, so it stays a plain dict)."""


def execute(ctx: Context, command: Command) -> str:
    """Run ``command`` and return the markdown reply. Bot errors become a reply, not a crash."""
    try:
        return _HANDLERS[command.name](ctx, command)
    except BotError as exc:
        log.warning("chat-ops %s by %s on %s failed: %s", command.name, ctx.author, ctx.where, exc)
        return f":x: `{command.name}` failed: {exc}"


def help_text(settings: Settings, forge: str, topic: str | None = None) -> str:
    """The help table (or one command's line), with the level each command needs on ``forge``."""
    prefix = settings.chatops.prefix
    if topic and topic in SPECS:
        spec = SPECS[topic]
        need = level_name(forge, required_level(settings, forge, topic))
        return f"`{prefix} {spec.usage}` — {spec.summary} (needs {need})"
    rows = [f"| `{prefix} {s.usage}` | {s.summary} | {level_name(forge, required_level(settings, forge, s.name))} |"
            for s in SPECS.values()]
    return "\n".join(["**RepoTune commands**", "", "| command | what it does | needs |",
                      "|---|---|---|", *rows, "",
                      f"Only the first line of a comment is read. `@{settings.chatops.bot_username}` "
                      "works in place of the prefix."])


def _help(ctx: Context, cmd: Command) -> str:
    topic = cmd.args.get("topic")
    if topic and topic not in SPECS:
        hint = suggest(topic)
        return (f"No command `{shown(topic)}`." + (f" Did you mean `{hint}`?" if hint else "")
                + "\n\n" + help_text(ctx.settings, ctx.forge))
    return help_text(ctx.settings, ctx.forge, topic)


def _status(ctx: Context, cmd: Command) -> str:
    from bot import status

    # The public form (no paths, scrubbed errors), scoped to the commenter's repository; the
    # snapshot reads summaries only, so a running ingest never delays the reply.
    snapshot = scope_status(status.public(status.collect(ctx.settings, ctx.redis)), ctx.repo.name)
    return render_status(snapshot, ctx.settings)


def _retrain(ctx: Context, cmd: Command) -> str:
    from bot import scheduler

    full, model = bool(cmd.args.get("full")), cmd.args.get("model")
    run_id = scheduler.request_training(
        ctx.settings, ctx.redis, ctx.repo.name, full=full, model=model,
        reason=f"chat-ops retrain{' --full' if full else ''} by @{ctx.author} on {ctx.where}",
        requested_by=ctx.author, trigger=ctx.reply_to)
    what = f"`{ctx.repo.name}`" + (f" (model `{model}`)" if model else "")
    if run_id is None:
        return f":hourglass: A training of {what} is already queued or running; this request joins it."
    kind = "full rebuild and training" if full else "training"
    return f":rocket: Queued a {kind} of {what}: run `{run_id}`.{_run_link(ctx, run_id)}"


def _eval(ctx: Context, cmd: Command) -> str:
    from bot import lifecycle

    run_id = cmd.args.get("run_id")
    if run_id is None:
        run = _latest_evaluated(ctx)
        if run is None:
            return "No run of this repository has an evaluation yet. Try `retrain` first."
    else:
        run = _load_run(ctx, run_id)
    report = _read_report(run)
    if report is not None:
        report = redact(report, hidden_names(ctx.settings.repos, ctx.repo.name),
                        str(ctx.settings.home))
        header = f"**Evaluation of run `{run.id}`** ({_value(run.status)})"
        return f"{header}{_run_link(ctx, run.id)}\n\n{report}"
    if _value(run.status) in ("queued", "ingesting", "training", "evaluating"):
        return f":hourglass: Run `{run.id}` is {_value(run.status)}; its evaluation is not ready."
    if not getattr(run, "checkpoint", None):
        return f"Run `{run.id}` ({_value(run.status)}) has no trained model to evaluate."
    job_id = lifecycle.enqueue_eval(ctx.settings, ctx.redis, run.id)
    return f":mag: Evaluating run `{run.id}` (job `{job_id}`); the table follows when it ends."


def _promote(ctx: Context, cmd: Command) -> str:
    from bot import lifecycle

    run = _load_run(ctx, cmd.args["run_id"])
    # The same precondition bot.jobs.promote_job enforces, answered now rather than in a failed job.
    if getattr(run, "version", None) is None and (
            _value(run.status) != "rejected" or not getattr(run, "checkpoint", None)):
        raise CommandError(f"run `{run.id}` is {_value(run.status)}; only a rejected or an "
                           "already published run can be promoted")
    job_id = lifecycle.enqueue_promote(ctx.settings, ctx.redis, run.id)
    return f":package: Promoting run `{run.id}` (job `{job_id}`).{_run_link(ctx, run.id)}"


def _rollback(ctx: Context, cmd: Command) -> str:
    from bot import lifecycle

    version, model = cmd.args.get("version"), cmd.args.get("model")
    job_id = lifecycle.enqueue_rollback(ctx.settings, ctx.redis, version, model)
    target = f"version {version}" if version is not None else "the previous version"
    of = f" of model `{model}`" if model else ""
    return f":leftwards_arrow_with_hook: Rolling back{of} to {target} (job `{job_id}`)."


def _canary(ctx: Context, cmd: Command) -> str:
    from bot import canary

    action, model = cmd.args["action"], cmd.args.get("model")
    if action == "status":
        return "**Canary**\n\n```\n" + canary.format_status(canary.status(ctx.settings, model)) + "\n```"
    job_id = canary.enqueue_action(ctx.settings, ctx.redis, action, by=f"@{ctx.author} on {ctx.where}",
                                   model=model)
    word = "Promoting the canary to everyone" if action == "promote" else "Rolling the canary back"
    of = f" of model `{model}`" if model else ""
    return f":traffic_light: {word}{of} (job `{job_id}`)."


def _pause(ctx: Context, cmd: Command) -> str:
    from bot import scheduler

    model = cmd.args.get("model")
    scheduler.pause(ctx.redis, model)
    what = f"of model `{model}`" if model else "of every model"
    again = f"`{ctx.settings.chatops.prefix} resume{f' --model {model}' if model else ''}`"
    return (f":pause_button: Automatic retraining {what} is paused. Commands still work; "
            f"{again} turns it back on.")


def _resume(ctx: Context, cmd: Command) -> str:
    from bot import models, scheduler

    model = cmd.args.get("model")
    scheduler.resume(ctx.redis, model)
    if model:
        if scheduler.is_paused(ctx.redis):
            return (f":arrow_forward: Model `{model}`'s own pause is lifted, but automatic retraining "
                    f"of every model is still paused (`{ctx.settings.chatops.prefix} resume`).")
        return f":arrow_forward: Automatic retraining of model `{model}` resumed."
    still = scheduler.paused_models(ctx.redis, models.model_names(ctx.settings))
    if still:
        named = ", ".join(f"`{m}`" for m in still)
        return (f":arrow_forward: Automatic retraining resumed, except for {named}, paused on its own "
                f"(`{ctx.settings.chatops.prefix} resume --model <name>`).")
    return ":arrow_forward: Automatic retraining resumed."


_HANDLERS: dict[str, Callable[[Context, Command], str]] = {
    "help": _help, "status": _status, "retrain": _retrain, "eval": _eval,
    "promote": _promote, "rollback": _rollback, "canary": _canary, "pause": _pause, "resume": _resume,
}


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def _run_link(ctx: Context, run_id: str) -> str:
    base = getattr(ctx.settings, "status_page_url", None)
    return f" [Details]({str(base).rstrip('/')}/runs/{run_id})" if base else ""


def _load_run(ctx: Context, run_id: str) -> Any:
    from bot import runs

    # Checked here so the reply does not quote the server's folders (load_run's message does).
    if not (runs.run_dir(ctx.settings.home, run_id) / "run.json").is_file():
        raise CommandError(f"no run `{run_id}`; `{ctx.settings.chatops.prefix} status` "
                           "lists the recent ones")
    return runs.load_run(ctx.settings.home, run_id)


def _latest_evaluated(ctx: Context) -> Any:
    from bot import runs

    for run in runs.list_runs(ctx.settings.home, limit=50):
        if _run_repo(run) == ctx.repo.name and _read_report(run) is not None:
            return run
    return None


def _run_repo(run: Any) -> str | None:
    repo = getattr(run, "repo", None)
    if repo:
        return str(repo)
    trigger = getattr(run, "trigger", None)
    return getattr(trigger, "repo", None)


def _read_report(run: Any) -> str | None:
    path = getattr(run, "eval_report", None)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
