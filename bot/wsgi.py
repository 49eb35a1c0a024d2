"""WSGI entry point for production: ``gunicorn 'bot.wsgi:app'`` (settings from the environment
and ``$REPOTUNE_CONFIG``; Redis from ``REDIS_URL``)."""

from __future__ import annotations

from bot.webhook import create_app

app = create_app()
