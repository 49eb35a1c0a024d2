"""bot: RepoTune's orchestrator — configuration, the webhook app, jobs, runs, the scheduler, the CLI.

The job functions are not re-exported here: RQ finds them by dotted path (``bot.jobs.train_step``
…, see :mod:`bot.lifecycle`), and ``bot.train`` would read like the trainer's own ``train``.
Heavy packages (torch via trainer, Triton clients via serving) are imported inside the jobs
that need them, so ``import bot`` stays cheap.
"""

from __future__ import annotations

from bot.cli import cli as cli
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

__all__ = [
    "BotError", "CommentEvent", "ConfigError", "PushEvent", "QueueUnavailable", "RepoConfig",
    "RunRecord", "RunStatus", "Settings", "Trigger", "cli", "create_app", "load_settings", "main",
]
