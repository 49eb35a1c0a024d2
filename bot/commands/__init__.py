"""CLI command modules, one per area; each exposes ``COMMANDS`` (see :mod:`bot.cli`)."""
