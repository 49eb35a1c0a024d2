"""The chat-ops RQ job: one comment event → at most one reply.

Order, and why: decide whether the comment is for the bot at all (:func:`bot.events.for_bot`,
the same rule the webhook applied) → parse → ask the forge for the commenter's level → only
then acknowledge (a reaction) and answer. Someone below the level ``help`` needs (not a
collaborator / not a member) gets neither a reaction nor a reply, so a stranger's comments
cannot make the bot write to the forge (no amplification); a collaborator below the command's
level gets the one-line refusal. A command on the shared model (promote, rollback, pause,
resume) then needs the same level on every repository feeding the model, or an operator
(:func:`~bot.chatops.auth.decide_shared`); each repository's level is asked once per job. With
``[[models]]``, a command on one model (retrain, rollback, promote, canary) runs only from a repository
that model learns from, and needs the level on every repository it learns from
(:func:`_check_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot.chatops.auth import (
    SHARED_MODEL_COMMANDS,
    LevelCache,
    allowed,
    decide_shared,
    is_operator,
    level_name,
    model_feeders,
    required_level,
)
from bot.chatops.grammar import Command, parse_command
from bot.chatops.handlers import Context, execute, help_text
from bot.chatops.render import truncate
from bot.errors import BotError, CommandError
from bot.events import CommentEvent, for_bot, not_for_bot_reason

if TYPE_CHECKING:
    import redis

    from bot.config import Settings
    from bot.forge import Forge

log = logging.getLogger(__name__)


def should_handle(settings: Settings, event: CommentEvent) -> str | None:
    """None when the comment is a command for us; otherwise the reason it is ignored
    (``<category>: <sentence>``, e.g. ``comment by a bot: comment by the bot itself``)."""
    chatops = settings.chatops
    configured = settings.repo_for(event.forge, event.repo, event.project_id) is not None
    why = for_bot(event, prefix=chatops.prefix, bot_username=chatops.bot_username,
                  repo_configured=configured)
    if why is None:
        return None
    return f"{why.value}: {not_for_bot_reason(why, event, chatops.bot_username)}"


def _redis(settings: Settings) -> redis.Redis:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        return job.connection
    import redis as redis_lib

    if not settings.redis_url:
        raise BotError("no Redis to run chat-ops against: set REDIS_URL or run under a worker")
    return redis_lib.Redis.from_url(settings.redis_url)


def _where(event: CommentEvent) -> str:
    return f"{event.repo}{'#' if event.forge == 'github' else '!'}{event.number}"


def _user(event: CommentEvent) -> str | int:
    """Who to look up: GitLab by numeric user id when the payload has one (exact, and the same
    on every project of the instance); GitHub by login."""
    if event.forge == "gitlab" and event.author_id:
        return int(event.author_id)
    return event.author


def _level(forge: Forge, event: CommentEvent) -> Any:
    """The commenter's level on the comment's repository."""
    return forge.permission(event.repo, _user(event), project_id=event.project_id)


def _acknowledge(forge: Forge, event: CommentEvent) -> None:
    try:
        forge.react(event, "eyes")
    except BotError as exc:  # the reply matters more than the acknowledgement
        log.warning("could not acknowledge comment %s on %s: %s", event.comment_id,
                    _where(event), exc)


def handle_comment_job(event_dict: Mapping[str, Any], settings: Settings | None = None) -> dict:
    """RQ job (queue ``control``): handle one comment event (a :class:`CommentEvent` as a dict).

    Ignore what is not for us → parse → check the commenter's level (strangers: silence) →
    acknowledge with a reaction → refuse, explain the error, or run the command → reply.
    Returns a small summary (kept as the job result).
    """
    from bot import config
    from bot.forge import forge_for

    settings = settings or config.current()
    event = CommentEvent.from_dict(event_dict)
    reason = should_handle(settings, event)
    if reason is not None:
        log.debug("comment %s ignored: %s", event.comment_id, reason)
        return {"handled": False, "reason": reason}
    chatops = settings.chatops
    from bot.models import model_names

    try:
        command = parse_command(event.body, chatops.prefix, chatops.bot_username, model_names(settings))
        error: CommandError | None = None
    except CommandError as exc:
        command, error = None, exc
    if command is None and error is None:
        return {"handled": False, "reason": "not a command"}

    forge = forge_for(settings, event.forge)
    name = command.name if command is not None else "help"
    have = _level(forge, event)
    if not allowed(event.forge, have, required_level(settings, event.forge, "help")):
        log.warning("chat-ops %s by %s on %s ignored: %s may not even run help", name,
                    event.author, _where(event), level_name(event.forge, have))
        return {"handled": True, "command": name, "allowed": False, "answered": False}
    _acknowledge(forge, event)
    need = required_level(settings, event.forge, name)
    # pause/resume act on every model unless they name one (then like any command on a model).
    on_model = command is not None and bool(settings.models) and (
        name in MODEL_COMMANDS or name in ONE_OR_ALL_COMMANDS and bool(command.args.get("model")))
    shared = command is not None and name in SHARED_MODEL_COMMANDS
    operator = (shared or on_model) and is_operator(chatops.operators, event.forge, event.author)
    if not allowed(event.forge, have, need) and not operator:
        return _refuse(forge, event, name, have, need)
    if on_model:
        assert command is not None
        checked = _check_model(settings, forge, event, command, have, need)
        if isinstance(checked, dict):
            return checked
        command = checked
    elif shared:
        denied = _check_shared(settings, forge, event, name, have, need)
        if denied is not None:
            return denied
    if error is not None:
        body = f"@{event.author} {error}\n\n{help_text(settings, event.forge)}"
        forge.comment(event, truncate(body))
        return {"handled": True, "command": None, "allowed": True, "error": str(error)}
    assert command is not None
    return _run(settings, forge, event, command)


def _refuse(forge: Forge, event: CommentEvent, name: str, have: Any, need: Any) -> dict:
    where, f = _where(event), event.forge
    log.warning("chat-ops %s denied: %s on %s has %s, needs %s", name, event.author, where,
                level_name(f, have), level_name(f, need))
    forge.comment(event, f"@{event.author} :no_entry: `{name}` needs {level_name(f, need)} "
                         f"access to {event.repo}; you have {level_name(f, have)}.")
    return {"handled": True, "command": name, "allowed": False}


def _check_shared(settings: Settings, forge: Forge, event: CommentEvent, name: str, have: Any,
                  need: Any) -> dict | None:
    """None when ``name`` may act on the shared model; otherwise refuse in a reply (naming the
    repository where the level is missing) and return the job summary."""
    here = settings.repo_for(event.forge, event.repo, event.project_id)
    user = _user(event)
    levels = LevelCache(lambda repo: forge.permission(str(repo.full_name or repo.name), user,
                                                      project_id=repo.project_id))
    if here is not None:
        levels.seed(here, have)
    decision = decide_shared(event.forge, event.author, model_feeders(settings), need, levels,
                             settings.chatops.operators)
    if decision.allowed:
        log.info("chat-ops %s by %s on %s allowed on the shared model: %s", name, event.author,
                 _where(event), decision.reason)
        return None
    log.warning("chat-ops %s denied on the shared model: %s on %s; missing on %s", name,
                event.author, _where(event), decision.repo)
    forge.comment(event, f"@{event.author} :no_entry: `{name}` acts on the model that every "
                         f"configured repository feeds: {decision.reason}")
    return {"handled": True, "command": name, "allowed": False, "repo": decision.repo}


MODEL_COMMANDS = frozenset({"retrain", "rollback", "promote", "canary"})
"""Commands that act on one model; with ``[[models]]`` they go through :func:`_check_model`."""
ONE_OR_ALL_COMMANDS = frozenset({"pause", "resume"})
"""Commands on every model, or with ``--model`` on that one (then checked as a model command)."""


def _target_model(settings: Settings, here: Any, command: Command) -> Any:
    """The model ``command`` acts on: ``--model``, the promoted run's own, or the one model the
    comment's repository feeds; BotError (the reply) when that is not one model."""
    from bot import models, runs

    if command.name == "promote":
        run_id = command.args["run_id"]
        if not (runs.run_dir(settings.home, run_id) / "run.json").is_file():
            raise CommandError(f"no run `{run_id}`; `{settings.chatops.prefix} status` lists the recent ones")
        run = runs.load_run(settings.home, run_id)
        return models.get_model(settings, run.model or settings.serving.model_name)
    if command.args.get("model"):
        return models.get_model(settings, command.args["model"])
    feeding = models.models_for_repo(settings, here.name)
    if len(feeding) == 1:
        return feeding[0]
    if not feeding:
        raise CommandError(f"no model learns from {here.full_name or here.name}, so there is nothing to "
                           f"{command.name} from here")
    raise CommandError(f"{here.full_name or here.name} feeds several models "
                       f"({', '.join(f'`{m.name}`' for m in feeding)}): name one with `--model <name>`")


def _check_model(settings: Settings, forge: Forge, event: CommentEvent, command: Command, have: Any,
                 need: Any) -> Command | dict:
    """The command with its model resolved (``args["model"]``) when the commenter may act on that
    model; otherwise refuse in a reply and return the job summary. A model can reveal the code of
    every repository it learns from, so acting on it needs the level on all of them (or an
    operator), and the comment must come from one of them."""
    from bot.models import settings_for

    here = settings.repo_for(event.forge, event.repo, event.project_id)
    assert here is not None  # should_handle checked it
    mention, name = f"@{event.author}", command.name
    try:
        spec = _target_model(settings, here, command)
    except BotError as exc:
        forge.comment(event, truncate(f"{mention} :x: `{name}`: {exc}"))
        return {"handled": True, "command": name, "allowed": True, "error": str(exc)}
    feeders = settings_for(settings, spec).repos
    if here.name not in [r.name for r in feeders]:
        learns = ", ".join(str(r.full_name or r.name) for r in feeders)
        forge.comment(event, f"{mention} :no_entry: `{name}`: model `{spec.name}` does not learn from "
                             f"{event.repo}; it learns from {learns}: comment on one of those.")
        return {"handled": True, "command": name, "allowed": False, "model": spec.name,
                "repo": event.repo}
    user = _user(event)
    levels = LevelCache(lambda repo: forge.permission(str(repo.full_name or repo.name), user,
                                                      project_id=repo.project_id))
    levels.seed(here, have)
    decision = decide_shared(event.forge, event.author, feeders, need, levels, settings.chatops.operators)
    if not decision.allowed:
        log.warning("chat-ops %s on model %s denied: %s on %s; missing on %s", name, spec.name,
                    event.author, _where(event), decision.repo)
        forge.comment(event, f"{mention} :no_entry: `{name}` acts on model `{spec.name}`, which learns "
                             f"from {len(feeders)} repositories: {decision.reason}")
        return {"handled": True, "command": name, "allowed": False, "model": spec.name,
                "repo": decision.repo}
    return Command(command.name, {**command.args, "model": spec.name})


def _run(settings: Settings, forge: Forge, event: CommentEvent, command: Command) -> dict:
    repo = settings.repo_for(event.forge, event.repo, event.project_id)
    assert repo is not None  # should_handle checked it
    reply_to = {"forge": event.forge, "repo": event.repo, "number": int(event.number),
                "project_id": event.project_id}
    ctx = Context(settings, _redis(settings), event.forge, repo, event.author, _where(event),
                  reply_to)
    mention = f"@{event.author}"
    log.info("chat-ops %s by %s on %s", command.name, event.author, ctx.where)
    try:
        reply = execute(ctx, command)
    except Exception:
        forge.comment(event, f"{mention} :boom: `{command.name}` hit an internal error; "
                             "the bot's log has the details.")
        raise
    forge.comment(event, truncate(f"{mention} {reply}", more_url=settings.status_page_url))
    return {"handled": True, "command": command.name, "allowed": True}
