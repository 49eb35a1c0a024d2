"""bot: RepoTune's orchestrator — configuration, the webhook app, jobs, runs, the scheduler, the CLI.

Heavy packages (trainer, converter, serving) are imported inside the jobs that need them, and
every public name below is resolved on first use (:func:`__getattr__`): ``import bot`` — which
every ``repotune`` call pays for, ``--help`` included — loads no Flask, RQ or Redis.
``bot.cli`` is the CLI module; its click group is ``bot.cli.cli``.
"""

from __future__ import annotations

import importlib
import typing as t

if t.TYPE_CHECKING:
    from bot.cli import main as main
    from bot.config import RepoConfig as RepoConfig
    from bot.config import Settings as Settings
    from bot.config import load as load_settings
    from bot.errors import BotError as BotError
    from bot.errors import ConfigError as ConfigError
    from bot.errors import QueueUnavailable as QueueUnavailable
    from bot.events import CommentEvent as CommentEvent
    from bot.events import PushEvent as PushEvent
    from bot.jobs import convert as convert
    from bot.jobs import eval as eval  # noqa: A004 - the job kind's name
    from bot.jobs import evaluate as evaluate
    from bot.jobs import ingest as ingest
    from bot.jobs import promote as promote
    from bot.jobs import publish as publish
    from bot.jobs import reconcile as reconcile
    from bot.jobs import rollback as rollback
    from bot.jobs import run_ingest as run_ingest
    from bot.jobs import train as train
    from bot.runs import RunRecord as RunRecord
    from bot.runs import RunStatus as RunStatus
    from bot.webhook import create_app as create_app

_LAZY: dict[str, tuple[str, str]] = {
    "main": ("bot.cli", "main"),
    "RepoConfig": ("bot.config", "RepoConfig"),
    "Settings": ("bot.config", "Settings"),
    "load_settings": ("bot.config", "load"),
    "BotError": ("bot.errors", "BotError"),
    "ConfigError": ("bot.errors", "ConfigError"),
    "QueueUnavailable": ("bot.errors", "QueueUnavailable"),
    "CommentEvent": ("bot.events", "CommentEvent"),
    "PushEvent": ("bot.events", "PushEvent"),
    "RunRecord": ("bot.runs", "RunRecord"),
    "RunStatus": ("bot.runs", "RunStatus"),
    "create_app": ("bot.webhook", "create_app"),
    **{name: ("bot.jobs", name) for name in ("convert", "eval", "evaluate", "ingest", "promote",
                                             "publish", "reconcile", "rollback", "run_ingest",
                                             "train")},
}
"""Public name -> (module, attribute) it is loaded from on first use."""


def __getattr__(name: str) -> t.Any:
    if name == "cli":  # the submodule, as ``import bot.cli`` would bind it
        return importlib.import_module("bot.cli")
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'bot' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), attribute)


__all__ = [
    "BotError", "CommentEvent", "ConfigError", "PushEvent", "QueueUnavailable", "RepoConfig",
    "RunRecord", "RunStatus", "Settings", "cli", "convert", "create_app", "eval", "evaluate",
    "ingest", "load_settings", "main", "promote", "publish", "reconcile", "rollback", "run_ingest",
    "train",
]
