"""bot: RepoTune's orchestrator — configuration, the webhook app, jobs, runs, the scheduler, the CLI.

The job functions are not re-exported here: RQ finds them by dotted path (``bot.jobs.train_step``
…, see :mod:`bot.lifecycle`), and ``bot.train`` would read like the trainer's own ``train``.
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
    from bot.runs import RunRecord as RunRecord
    from bot.runs import RunStatus as RunStatus
    from bot.runs import Trigger as Trigger
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
    "Trigger": ("bot.runs", "Trigger"),
    "create_app": ("bot.webhook", "create_app"),
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
    "RunRecord", "RunStatus", "Settings", "Trigger", "cli", "create_app", "load_settings", "main",
]
