"""bot: RepoTune's orchestrator — configuration, the webhook app, jobs, runs, the scheduler, the CLI.

Heavy packages (trainer, converter, serving) are imported inside the jobs that need them, so
``import bot`` stays cheap.
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

__all__ = [
    "BotError", "CommentEvent", "ConfigError", "PushEvent", "QueueUnavailable", "RepoConfig",
    "RunRecord", "RunStatus", "Settings", "cli", "convert", "create_app", "eval", "evaluate",
    "ingest", "load_settings", "main", "promote", "publish", "reconcile", "rollback", "run_ingest",
    "train",
]
