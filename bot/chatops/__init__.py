"""Chat-ops: commands in pull/merge-request comments, who may run them, and what they do.

A comment is a command when its FIRST line starts with the prefix (``/repotune`` by default) or
an @mention of the bot (``@repotune``); every later line is free text and never read.

    /repotune help [<command>]
    /repotune status
    /repotune retrain [--full] [--model <name>]
    /repotune eval [--run <run-id>]
    /repotune promote <run-id>
    /repotune rollback [<version>] [--model <name>]
    /repotune canary status|stop|promote
    /repotune pause
    /repotune resume

One module per layer: :mod:`~bot.chatops.grammar` (pure: text → :class:`Command` or
:class:`~bot.errors.CommandError`), :mod:`~bot.chatops.auth` (pure: forge level vs the
configured least level, and on every repository feeding the model for the commands that act on
it), :mod:`~bot.chatops.scope` (pure: what a ``status`` / ``eval`` reply may show a commenter
of one repository), :mod:`~bot.chatops.handlers` (one function per command, calling the
bot core), :mod:`~bot.chatops.render` (markdown), and :mod:`~bot.chatops.job`
(:func:`handle_comment_job`, the RQ job the webhook enqueues as
``bot.chatops.handle_comment_job``).
"""

from __future__ import annotations

from bot.chatops.auth import GITHUB_ROLES as GITHUB_ROLES
from bot.chatops.auth import GITLAB_NAMES as GITLAB_NAMES
from bot.chatops.auth import SHARED_MODEL_COMMANDS as SHARED_MODEL_COMMANDS
from bot.chatops.auth import Decision as Decision
from bot.chatops.auth import allowed as allowed
from bot.chatops.auth import decide_shared as decide_shared
from bot.chatops.auth import is_operator as is_operator
from bot.chatops.auth import level_name as level_name
from bot.chatops.auth import model_feeders as model_feeders
from bot.chatops.auth import required_level as required_level
from bot.chatops.grammar import _PARSERS as _PARSERS
from bot.chatops.grammar import RUN_ID_RE as RUN_ID_RE
from bot.chatops.grammar import SPECS as SPECS
from bot.chatops.grammar import VERSION_RE as VERSION_RE
from bot.chatops.grammar import Command as Command
from bot.chatops.grammar import CommandSpec as CommandSpec
from bot.chatops.grammar import UnknownCommand as UnknownCommand
from bot.chatops.grammar import addressed as addressed
from bot.chatops.grammar import first_line as first_line
from bot.chatops.grammar import parse_command as parse_command
from bot.chatops.grammar import suggest as suggest
from bot.chatops.handlers import _HANDLERS as _HANDLERS
from bot.chatops.handlers import Context as Context
from bot.chatops.handlers import execute as execute
from bot.chatops.handlers import help_text as help_text
from bot.chatops.job import handle_comment_job as handle_comment_job
from bot.chatops.job import should_handle as should_handle
from bot.chatops.render import MAX_COMMENT_CHARS as MAX_COMMENT_CHARS
from bot.chatops.render import render_status as render_status
from bot.chatops.render import table as table
from bot.chatops.render import truncate as truncate
from bot.chatops.scope import redact as redact
from bot.chatops.scope import scope_status as scope_status
