"""Errors raised by the bot package.

    BotError
    ├── ConfigError       configuration is missing or invalid (names the key)
    ├── ForgeError        GitHub/GitLab answered with an error
    ├── QueueUnavailable  Redis cannot be reached
    └── CommandError      a chat-ops command is malformed or not allowed
"""

from __future__ import annotations


class BotError(Exception):
    """Root of every error the bot package raises on purpose."""


class ConfigError(BotError):
    """Configuration is missing or invalid; the message names the key and the fix."""


class ForgeError(BotError):
    """The forge (GitHub or GitLab) answered with an error."""


class QueueUnavailable(BotError):
    """Redis (the job queue) cannot be reached."""


class CommandError(BotError):
    """A chat-ops command is malformed or not allowed."""
