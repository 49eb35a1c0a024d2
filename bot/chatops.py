"""Chat-ops: commands in pull/merge-request comments, who may run them, and what they do.

A comment is a command when its FIRST line starts with the prefix (``/repotune`` by default) or
an @mention of the bot (``@repotune``); every later line is free text and never read. The line
is split with :func:`shlex.split` (POSIX rules) and each argument is checked against an
allowlist pattern; nothing from a comment ever reaches a shell or a file path unchecked.

    /repotune help [<command>]
    /repotune status
    /repotune retrain [--full]
    /repotune eval [--run <run-id>]
    /repotune promote <run-id>
    /repotune rollback [<version>]
    /repotune pause
    /repotune resume

The layers: :func:`parse_command` (pure: text → :class:`Command` or :class:`CommandError`),
:func:`allowed` (pure: forge level vs the configured least level), :func:`execute` (calls the
bot-core functions and renders markdown), and :func:`handle_comment_job` (the RQ job the
webhook enqueues: filter → acknowledge → authorise → execute → reply).
"""

from __future__ import annotations

import difflib
import logging
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.errors import BotError, CommandError

log = logging.getLogger(__name__)

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
"""A run id: letters, digits, ``-`` and ``_`` (no dots or slashes, so never a path)."""

VERSION_RE = re.compile(r"v?([1-9][0-9]{0,8})")
"""A serving model version: a positive integer, optionally written ``v3``."""

COMMAND_NAME_RE = re.compile(r"[a-z][a-z-]{0,31}")

MAX_COMMENT_CHARS = 60_000
"""Replies are cut below GitHub's 65,536-character limit (GitLab allows more)."""


@dataclass(frozen=True)
class CommandSpec:
    """One command of the grammar."""

    name: str
    usage: str
    summary: str


SPECS: dict[str, CommandSpec] = {s.name: s for s in (
    CommandSpec("help", "help [<command>]", "List the commands (or explain one)."),
    CommandSpec("status", "status", "Serving version, last runs, corpus size and queues."),
    CommandSpec("retrain", "retrain [--full]",
                "Train on this repository now, skipping the debounce (`--full`: rebuild the corpus)."),
    CommandSpec("eval", "eval [--run <run-id>]",
                "Post the evaluation table of a run (default: the latest evaluated run)."),
    CommandSpec("promote", "promote <run-id>", "Serve the model of a run that passed or was rejected."),
    CommandSpec("rollback", "rollback [<version>]",
                "Serve the previous model version (or the given one)."),
    CommandSpec("pause", "pause", "Stop automatic retraining (commands still work)."),
    CommandSpec("resume", "resume", "Resume automatic retraining."),
)}
"""Every command, in the order ``help`` lists them."""


@dataclass(frozen=True)
class Command:
    """A parsed, validated command."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


class UnknownCommand(CommandError):
    """The command word is not in the grammar; ``suggestion`` is the closest one (or None)."""

    def __init__(self, word: str, suggestion: str | None) -> None:
        hint = f" Did you mean `{suggestion}`?" if suggestion else ""
        super().__init__(f"Unknown command `{word}`.{hint}")
        self.word = word
        self.suggestion = suggestion


# --------------------------------------------------------------------------- grammar


def first_line(body: str) -> str:
    """The only line a command may occupy."""
    return (body or "").lstrip("\ufeff").splitlines()[0].strip() if (body or "").strip() else ""


def addressed(body: str, prefix: str = "/repotune", bot_username: str = "repotune") -> bool:
    """Whether the comment's first line starts with the prefix or an @mention of the bot."""
    line = first_line(body)
    if not line:
        return False
    head = line.split(None, 1)[0]
    return head == prefix or _is_mention(head, bot_username)


def _is_mention(word: str, bot_username: str) -> bool:
    if not word.startswith("@") or not bot_username:
        return False
    name = word[1:].rstrip(":,").lower()
    bot = bot_username.lower()
    return name in (bot, f"{bot}[bot]")


def parse_command(body: str, prefix: str = "/repotune",
                  bot_username: str = "repotune") -> Command | None:
    """Parse a comment. None when it is not addressed to the bot; :class:`CommandError` (or
    :class:`UnknownCommand`) when it is, but the command is malformed."""
    if not addressed(body, prefix, bot_username):
        return None
    line = first_line(body)
    try:
        tokens = shlex.split(line, comments=False, posix=True)
    except ValueError as exc:  # unbalanced quotes, trailing escape
        raise CommandError(f"Cannot read the command line ({exc}).") from exc
    if not tokens:  # e.g. the prefix inside quotes only
        raise CommandError("Empty command.")
    rest = tokens[1:]
    if not rest:
        return Command("help")
    word, args = rest[0].lower(), rest[1:]
    if word.startswith("--") and word in ("--help", "-h"):
        word = "help"
    if word not in SPECS:
        raise UnknownCommand(_shown(word), suggest(word))
    return Command(word, _PARSERS[word](args))


def suggest(word: str) -> str | None:
    """The known command closest to ``word`` (difflib), if any is close enough."""
    found = difflib.get_close_matches(word.lower(), list(SPECS), n=1, cutoff=0.6)
    return found[0] if found else None


def _shown(text: str, limit: int = 40) -> str:
    """A user-supplied word made safe to quote back inside backticks."""
    clean = re.sub(r"[^\w.\-/@:=+ ]", "?", text)[:limit]
    return clean + ("…" if len(text) > limit else "")


def _no_args(name: str) -> Callable[[list[str]], dict]:
    def parse(args: list[str]) -> dict:
        if args:
            raise CommandError(f"`{name}` takes no arguments (got `{_shown(' '.join(args))}`). "
                               f"Usage: `{SPECS[name].usage}`")
        return {}
    return parse


def _parse_help(args: list[str]) -> dict:
    if not args:
        return {}
    if len(args) > 1 or not COMMAND_NAME_RE.fullmatch(args[0].lower()):
        raise CommandError(f"Usage: `{SPECS['help'].usage}`")
    return {"topic": args[0].lower()}


def _parse_retrain(args: list[str]) -> dict:
    full = False
    for arg in args:
        if arg == "--full":
            full = True
        else:
            raise CommandError(f"`retrain` does not understand `{_shown(arg)}`. "
                               f"Usage: `{SPECS['retrain'].usage}`")
    return {"full": full}


def _run_id(value: str, command: str) -> str:
    if not RUN_ID_RE.fullmatch(value):
        raise CommandError(f"`{_shown(value)}` is not a run id (letters, digits, `-`, `_`). "
                           f"Usage: `{SPECS[command].usage}`")
    return value


def _parse_eval(args: list[str]) -> dict:
    run_id = None
    items = list(args)
    while items:
        arg = items.pop(0)
        if arg == "--run" and items:
            run_id = _run_id(items.pop(0), "eval")
        elif arg.startswith("--run="):
            run_id = _run_id(arg.split("=", 1)[1], "eval")
        else:
            raise CommandError(f"`eval` does not understand `{_shown(arg)}`. "
                               f"Usage: `{SPECS['eval'].usage}`")
    return {"run_id": run_id}


def _parse_promote(args: list[str]) -> dict:
    if len(args) != 1:
        raise CommandError(f"`promote` needs exactly one run id. Usage: `{SPECS['promote'].usage}`")
    return {"run_id": _run_id(args[0], "promote")}


def _parse_rollback(args: list[str]) -> dict:
    if not args:
        return {"version": None}
    m = VERSION_RE.fullmatch(args[0]) if len(args) == 1 else None
    if m is None:
        raise CommandError(f"`{_shown(' '.join(args))}` is not a model version (a positive "
                           f"number). Usage: `{SPECS['rollback'].usage}`")
    return {"version": int(m.group(1))}


_PARSERS: dict[str, Callable[[list[str]], dict]] = {
    "help": _parse_help,
    "status": _no_args("status"),
    "retrain": _parse_retrain,
    "eval": _parse_eval,
    "promote": _parse_promote,
    "rollback": _parse_rollback,
    "pause": _no_args("pause"),
    "resume": _no_args("resume"),
}


# --------------------------------------------------------------------------- authorization

GITHUB_ROLES = ("none", "read", "triage", "write", "maintain", "admin")

GITLAB_NAMES = {10: "Guest", 15: "Planner", 20: "Reporter", 30: "Developer", 40: "Maintainer",
                50: "Owner"}


def required_level(settings: Any, forge: str, command: str) -> str | int:
    """The least level ``command`` needs on ``forge`` (settings.chatops.*_levels)."""
    chatops = settings.chatops
    if forge == "github":
        return (getattr(chatops, "github_levels", None) or {}).get(
            command, "read" if command == "help" else "maintain")
    return int((getattr(chatops, "gitlab_levels", None) or {}).get(
        command, 10 if command == "help" else 40))


def allowed(forge: str, have: str | int, need: str | int) -> bool:
    """Whether level ``have`` meets ``need`` (GitHub role names, GitLab access levels)."""
    if forge == "github":
        rank = {r: i for i, r in enumerate(GITHUB_ROLES)}
        return rank.get(str(have), 0) >= rank.get(str(need), len(GITHUB_ROLES))
    return int(have or 0) >= int(need)


def level_name(forge: str, level: str | int) -> str:
    if forge == "github":
        return str(level)
    return f"{GITLAB_NAMES.get(int(level), 'no access' if not level else str(level))} ({level})" \
        if level else "no access"


# --------------------------------------------------------------------------- execution


@dataclass
class Context:
    """What a command runs against."""

    settings: Any
    redis: Any
    forge: str
    repo: Any
    """The configured :class:`bot.config.RepoConfig` the comment was made in."""
    author: str
    where: str
    """``owner/name#7`` or ``group/name!3``: for reasons and log lines."""
    reply_to: dict = field(default_factory=dict)
    """``forge``, ``repo``, ``number``, ``project_id``: where a run started here reports back."""


def execute(ctx: Context, command: Command) -> str:
    """Run ``command`` and return the markdown reply. Bot errors become a reply, not a crash."""
    try:
        return _HANDLERS[command.name](ctx, command)
    except BotError as exc:
        log.warning("chat-ops %s by %s on %s failed: %s", command.name, ctx.author, ctx.where, exc)
        return f":x: `{command.name}` failed: {exc}"


def help_text(settings: Any, forge: str, topic: str | None = None) -> str:
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
        return (f"No command `{_shown(topic)}`." + (f" Did you mean `{hint}`?" if hint else "")
                + "\n\n" + help_text(ctx.settings, ctx.forge))
    return help_text(ctx.settings, ctx.forge, topic)


def _status(ctx: Context, cmd: Command) -> str:
    from bot import status

    return render_status(status.collect(ctx.settings, ctx.redis), ctx.settings)


def _retrain(ctx: Context, cmd: Command) -> str:
    from bot import scheduler

    full = bool(cmd.args.get("full"))
    run_id = scheduler.request_training(
        ctx.settings, ctx.redis, ctx.repo.name, full=full,
        reason=f"chat-ops retrain{' --full' if full else ''} by @{ctx.author} on {ctx.where}",
        requested_by=ctx.author, trigger=ctx.reply_to)
    if run_id is None:
        return (f":hourglass: A training of `{ctx.repo.name}` is already queued or running; "
                "this request joins it.")
    kind = "full rebuild and training" if full else "training"
    return f":rocket: Queued a {kind} of `{ctx.repo.name}`: run `{run_id}`.{_run_link(ctx, run_id)}"


def _eval(ctx: Context, cmd: Command) -> str:
    from bot import jobs

    run_id = cmd.args.get("run_id")
    if run_id is None:
        run = _latest_evaluated(ctx)
        if run is None:
            return "No run of this repository has an evaluation yet. Try `retrain` first."
    else:
        run = _load_run(ctx, run_id)
    report = _read_report(run)
    if report is not None:
        header = f"**Evaluation of run `{run.id}`** ({_value(run.status)})"
        return f"{header}{_run_link(ctx, run.id)}\n\n{report}"
    if _value(run.status) in ("queued", "ingesting", "training", "evaluating"):
        return f":hourglass: Run `{run.id}` is {_value(run.status)}; its evaluation is not ready."
    if not getattr(run, "checkpoint", None):
        return f"Run `{run.id}` ({_value(run.status)}) has no trained model to evaluate."
    job_id = jobs.enqueue_eval(ctx.settings, ctx.redis, run.id)
    return f":mag: Evaluating run `{run.id}` (job `{job_id}`); the table follows when it ends."


def _promote(ctx: Context, cmd: Command) -> str:
    from bot import jobs

    run = _load_run(ctx, cmd.args["run_id"])
    # The same precondition bot.jobs.promote enforces, answered now rather than in a failed job.
    if getattr(run, "version", None) is None and (
            _value(run.status) != "rejected" or not getattr(run, "checkpoint", None)):
        raise CommandError(f"run `{run.id}` is {_value(run.status)}; only a rejected or an "
                           "already published run can be promoted")
    job_id = jobs.enqueue_promote(ctx.settings, ctx.redis, run.id)
    return f":package: Promoting run `{run.id}` (job `{job_id}`).{_run_link(ctx, run.id)}"


def _rollback(ctx: Context, cmd: Command) -> str:
    from bot import jobs

    version = cmd.args.get("version")
    job_id = jobs.enqueue_rollback(ctx.settings, ctx.redis, version)
    target = f"version {version}" if version is not None else "the previous version"
    return f":leftwards_arrow_with_hook: Rolling back to {target} (job `{job_id}`)."


def _pause(ctx: Context, cmd: Command) -> str:
    from bot import scheduler

    scheduler.pause(ctx.redis)
    return (":pause_button: Automatic retraining is paused. Commands still work; "
            f"`{ctx.settings.chatops.prefix} resume` turns it back on.")


def _resume(ctx: Context, cmd: Command) -> str:
    from bot import scheduler

    scheduler.resume(ctx.redis)
    return ":arrow_forward: Automatic retraining resumed."


_HANDLERS: dict[str, Callable[[Context, Command], str]] = {
    "help": _help, "status": _status, "retrain": _retrain, "eval": _eval,
    "promote": _promote, "rollback": _rollback, "pause": _pause, "resume": _resume,
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
    trigger = getattr(run, "trigger", None) or {}
    return trigger.get("repo") if isinstance(trigger, dict) else None


def _read_report(run: Any) -> str | None:
    from pathlib import Path

    path = getattr(run, "eval_report", None)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


# --------------------------------------------------------------------------- rendering


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (cells escaped)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if isinstance(d, Mapping) and d.get(key) is not None:
            return d[key]
    return default


def _when(ts: Any) -> Any:
    import time

    if isinstance(ts, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return ts


def render_status(data: Mapping[str, Any], settings: Any = None) -> str:
    """The ``status`` reply: serving, recent runs, corpora and queues as markdown tables
    (reads :func:`bot.status.collect`'s dict; missing parts are left out)."""
    parts = ["**RepoTune status**", ""]
    serving = _get(data, "serving", default={}) or {}
    version = _get(serving, "version")
    versions = _get(serving, "versions", default=[]) or []
    line = f"Serving model version: **{version if version is not None else 'none'}**"
    if versions:
        line += f" (kept: {', '.join(str(v) for v in versions)})"
    if "paused" in data:
        line += f" · automatic retraining: **{'paused' if data['paused'] else 'on'}**"
    parts.append(line)
    if _get(data, "training_lock"):
        parts.append(f"Training now: run `{data['training_lock']}`")
    redis_state = _get(data, "redis", default={}) or {}
    if redis_state and not redis_state.get("ok", True):
        parts.append(f":warning: {redis_state.get('error', 'Redis is unreachable')}")
    repos = _get(data, "repositories", "repos", default=[]) or []
    if repos:
        rows = []
        for r in repos:
            corpus = _get(r, "corpus", default={}) or {}
            rows.append([_get(r, "name"), (str(_get(corpus, "commit", default="")) or "")[:12]
                         or "not built", _get(corpus, "version"),
                         _get(corpus, "train_files", "files"), _get(corpus, "heldout_files"),
                         _get(corpus, "bytes")])
        parts += ["", "**Corpus**", table(["repository", "commit", "version", "train files",
                                           "held-out files", "bytes"], rows)]
    recent = _get(data, "runs", "recent_runs", default=[]) or []
    if recent:
        rows = [[f"`{_get(r, 'id')}`", _get(r, "status"), _get(r, "repo"),
                 _when(_get(r, "created")), _get(r, "version")] for r in recent[:10]]
        parts += ["", "**Recent runs**", table(["run", "status", "repository", "created",
                                                "version"], rows)]
    queues = _get(data, "queues", default={}) or {}
    if queues:
        rows = []
        for name, q in queues.items():
            if isinstance(q, Mapping):
                rows.append([name, q.get("queued"), q.get("started"), q.get("failed")])
            else:
                rows.append([name, q, None, None])
        parts += ["", "**Queues**", table(["queue", "waiting", "running", "failed"], rows)]
    base = getattr(settings, "status_page_url", None) if settings is not None else None
    if base:
        parts += ["", f"[Status page]({base})"]
    return "\n".join(parts)


def truncate(text: str, limit: int = MAX_COMMENT_CHARS, more_url: str | None = None) -> str:
    """Cut ``text`` at a line boundary below ``limit`` characters and say so politely (closing
    an open code fence so the rest of the comment still renders)."""
    if len(text) <= limit:
        return text
    budget = limit - 300
    cut = text.rfind("\n", 0, budget)
    kept = text[: cut if cut > 0 else budget]
    dropped = text[len(kept):].count("\n") + 1
    if kept.count("```") % 2:
        kept += "\n```"
    where = f" The full text is on the [status page]({more_url})." if more_url else ""
    return (f"{kept}\n\n*… {dropped} more lines were cut to fit in a comment.{where}*")


# --------------------------------------------------------------------------- the job

_CREATED = {"created", "create"}


def should_handle(settings: Any, event: Mapping[str, Any]) -> str | None:
    """None when the comment event is for us; otherwise the reason it is ignored."""
    if event.get("action") not in _CREATED:
        return f"action {event.get('action')!r} (edits and deletions are ignored)"
    if not event.get("on_review"):
        return "not on a pull/merge request"
    author = str(event.get("author") or "").lower()
    bot = str(settings.chatops.bot_username or "").lower()
    if author in (bot, f"{bot}[bot]") or author.endswith("[bot]"):
        return f"comment by a bot ({event.get('author')})"
    if settings.repo_for(event["forge"], event["repo"], event.get("project_id")) is None:
        return f"repository {event['repo']} is not configured"
    return None


def _redis(settings: Any) -> Any:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        return job.connection
    import redis

    if not settings.redis_url:
        raise BotError("no Redis to run chat-ops against: set REDIS_URL or run under a worker")
    return redis.Redis.from_url(settings.redis_url)


def handle_comment_job(event_dict: Mapping[str, Any], settings: Any = None) -> dict:
    """RQ job (queue ``control``): handle one comment event.

    Ignore what is not for us → acknowledge with a reaction → check the commenter's level →
    run the command → reply with a comment. Returns a small summary (kept as the job result).
    """
    from bot import config
    from bot.forge import forge_for

    settings = settings or config.current()
    event = dict(event_dict)
    reason = should_handle(settings, event)
    if reason is not None:
        log.debug("comment %s ignored: %s", event.get("comment_id"), reason)
        return {"handled": False, "reason": reason}
    chatops = settings.chatops
    try:
        command: Command | None = parse_command(event.get("body") or "", chatops.prefix,
                                                chatops.bot_username)
        error: CommandError | None = None
    except CommandError as exc:
        command, error = None, exc
    if command is None and error is None:
        return {"handled": False, "reason": "not a command"}

    forge_name = event["forge"]
    sep = "#" if forge_name == "github" else "!"
    where = f"{event['repo']}{sep}{event['number']}"
    forge = forge_for(settings, forge_name)
    try:
        forge.react(event, "eyes")
    except BotError as exc:  # the reply matters more than the acknowledgement
        log.warning("could not acknowledge comment %s on %s: %s", event.get("comment_id"),
                    where, exc)

    name = command.name if command is not None else "help"
    need = required_level(settings, forge_name, name)
    user: str | int = event["author"]
    if forge_name == "gitlab" and event.get("author_id"):
        user = int(event["author_id"])
    have = forge.permission(event["repo"], user, project_id=event.get("project_id"))
    mention = f"@{event['author']}"
    if not allowed(forge_name, have, need):
        log.warning("chat-ops %s denied: %s on %s has %s, needs %s", name, event["author"],
                    where, level_name(forge_name, have), level_name(forge_name, need))
        body = (f"{mention} :no_entry: `{name}` needs {level_name(forge_name, need)} access to "
                f"{event['repo']}; you have {level_name(forge_name, have)}.")
        forge.comment(event, body)
        return {"handled": True, "command": name, "allowed": False}

    if error is not None:
        body = f"{mention} {error}\n\n{help_text(settings, forge_name)}"
        forge.comment(event, truncate(body))
        return {"handled": True, "command": None, "allowed": True, "error": str(error)}

    assert command is not None
    repo = settings.repo_for(forge_name, event["repo"], event.get("project_id"))
    reply_to = {"forge": forge_name, "repo": event["repo"], "number": int(event["number"]),
                "project_id": event.get("project_id")}
    ctx = Context(settings, _redis(settings), forge_name, repo, str(event["author"]), where,
                  reply_to)
    log.info("chat-ops %s by %s on %s", command.name, event["author"], where)
    try:
        reply = execute(ctx, command)
    except Exception:
        forge.comment(event, f"{mention} :boom: `{command.name}` hit an internal error; "
                             "the bot's log has the details.")
        raise
    base = getattr(settings, "status_page_url", None)
    forge.comment(event, truncate(f"{mention} {reply}", more_url=base))
    return {"handled": True, "command": command.name, "allowed": True}
