"""The chat-ops grammar: a comment's first line → a :class:`Command`, or a :class:`CommandError`.

Pure: no I/O. Whether a comment is addressed to the bot at all is :func:`bot.events.addressed`
(shared with the webhook, so the two never disagree). The line is split with
:func:`shlex.split` (POSIX rules) and each argument is checked against an allowlist pattern;
nothing from a comment ever reaches a shell or a file path unchecked.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import CommandError
from bot.events import addressed, first_line

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
"""A run id: letters, digits, ``-`` and ``_`` (no dots or slashes, so never a path)."""

VERSION_RE = re.compile(r"v?([1-9][0-9]{0,8})")
"""A serving model version: a positive integer, optionally written ``v3``."""

COMMAND_NAME_RE = re.compile(r"[a-z][a-z-]{0,31}")

MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A model name (as :data:`bot.models.NAME_RE`); checked again against the configured names."""


@dataclass(frozen=True)
class CommandSpec:
    """One command of the grammar."""

    name: str
    usage: str
    summary: str


SPECS: dict[str, CommandSpec] = {s.name: s for s in (
    CommandSpec("help", "help [<command>]", "List the commands (or explain one)."),
    CommandSpec("status", "status", "Serving version, last runs, corpus size and queues."),
    CommandSpec("retrain", "retrain [--full] [--model <name>]",
                "Train a model on its repositories now, skipping the debounce (`--full`: rebuild the "
                "corpus; `--model`: which model, needed only when this repository feeds several)."),
    CommandSpec("eval", "eval [--run <run-id>]",
                "Post the evaluation table of a run (default: the latest evaluated run)."),
    CommandSpec("promote", "promote <run-id>", "Serve the model of a run that passed or was rejected."),
    CommandSpec("rollback", "rollback [<version>] [--model <name>]",
                "Serve the previous model version (or the given one) of a model."),
    CommandSpec("canary", "canary <status/stop/promote> [--model <name>]",
                "`status`: the canary's acceptance test so far; `stop`: roll it back; "
                "`promote`: serve it to everyone (`--model`: which model, needed only when this "
                "repository feeds several)."),
    CommandSpec("pause", "pause [--model <name>]",
                "Stop automatic retraining of every model, or of one (commands still work)."),
    CommandSpec("resume", "resume [--model <name>]",
                "Resume automatic retraining (`--model`: lift that model's own pause)."),
)}
"""Every command, in the order ``help`` lists them (docs/chatops.md documents each; a test
checks both ways)."""


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


def parse_command(body: str, prefix: str = "/repotune", bot_username: str = "repotune",
                  models: Sequence[str] | None = None) -> Command | None:
    """Parse a comment. None when it is not addressed to the bot; :class:`CommandError` (or
    :class:`UnknownCommand`) when it is, but the command is malformed. ``models``: the configured
    model names a ``--model`` must be one of (None: only the name's form is checked)."""
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
        raise UnknownCommand(shown(word), suggest(word))
    args, model = _take_model(word, args, models)
    parsed = _PARSERS[word](args)
    return Command(word, {**parsed, "model": model} if model is not None else parsed)


def suggest(word: str) -> str | None:
    """The known command closest to ``word`` (difflib), if any is close enough."""
    found = difflib.get_close_matches(word.lower(), list(SPECS), n=1, cutoff=0.6)
    return found[0] if found else None


def shown(text: str, limit: int = 40) -> str:
    """A user-supplied word made safe to quote back inside backticks."""
    clean = re.sub(r"[^\w.\-/@:=+ ]", "?", text)[:limit]
    return clean + ("…" if len(text) > limit else "")


MODEL_COMMANDS = frozenset({"retrain", "rollback", "canary", "pause", "resume"})
"""Commands that take ``--model <name>`` (the key ``model`` of their args, present only when given)."""


def _take_model(word: str, args: list[str], models: Sequence[str] | None) -> tuple[list[str], str | None]:
    """``args`` without ``--model NAME`` / ``--model=NAME``, and the name (validated)."""
    rest: list[str] = []
    model = None
    items = list(args)
    while items:
        arg = items.pop(0)
        if word in MODEL_COMMANDS and (arg == "--model" or arg.startswith("--model=")):
            value = arg.split("=", 1)[1] if "=" in arg else (items.pop(0) if items else "")
            model = _model_name(value, word, models)
        else:
            rest.append(arg)
    return rest, model


def _model_name(value: str, command: str, models: Sequence[str] | None) -> str:
    if not MODEL_RE.fullmatch(value):
        raise CommandError(f"`{shown(value)}` is not a model name (letters, digits, `_`, `-`). "
                           f"Usage: `{SPECS[command].usage}`")
    if models is not None and value not in models:
        close = difflib.get_close_matches(value, list(models), n=1, cutoff=0.6)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise CommandError(f"No model `{shown(value)}`.{hint} Configured: "
                           f"{', '.join(f'`{m}`' for m in models)}.")
    return value


def _no_args(name: str) -> Callable[[list[str]], dict]:
    def parse(args: list[str]) -> dict:
        if args:
            raise CommandError(f"`{name}` takes no arguments (got `{shown(' '.join(args))}`). "
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
            raise CommandError(f"`retrain` does not understand `{shown(arg)}`. "
                               f"Usage: `{SPECS['retrain'].usage}`")
    return {"full": full}


def _run_id(value: str, command: str) -> str:
    if not RUN_ID_RE.fullmatch(value):
        raise CommandError(f"`{shown(value)}` is not a run id (letters, digits, `-`, `_`). "
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
            raise CommandError(f"`eval` does not understand `{shown(arg)}`. "
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
        raise CommandError(f"`{shown(' '.join(args))}` is not a model version (a positive "
                           f"number). Usage: `{SPECS['rollback'].usage}`")
    return {"version": int(m.group(1))}


def _parse_canary(args: list[str]) -> dict:
    if len(args) != 1 or args[0].lower() not in ("status", "stop", "promote"):
        raise CommandError(f"`canary` needs one of `status`, `stop`, `promote`. Usage: `{SPECS['canary'].usage}`")
    return {"action": args[0].lower()}


_PARSERS: dict[str, Callable[[list[str]], dict]] = {
    "help": _parse_help,
    "status": _no_args("status"),
    "retrain": _parse_retrain,
    "eval": _parse_eval,
    "promote": _parse_promote,
    "rollback": _parse_rollback,
    "canary": _parse_canary,
    "pause": _no_args("pause"),
    "resume": _no_args("resume"),
}
