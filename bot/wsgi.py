"""WSGI entry point for people who run a WSGI server of their own (settings from the
environment and ``$REPOTUNE_CONFIG``; Redis from ``REDIS_URL``).

RepoTune's own deployments do not use it: ``repotune webhook`` serves the same app on
:class:`serving.http.HttpServer` (waitress), which reads each request completely before a
thread runs it, closes idle connections and answers oversized bodies 413. A server that hands
the socket to a worker before the body has arrived (gunicorn's sync workers, for one) lets a
few clients that dribble bytes hold every worker, and the forge's deliveries then time out.
So if you serve ``bot.wsgi:app`` yourself, put a buffering reverse proxy in front of it (nginx
with request buffering on, which is its default) that reads whole requests, limits body size
and times out idle clients.
"""

from __future__ import annotations

from bot.webhook import create_app

app = create_app()
