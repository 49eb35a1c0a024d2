"""The webhook HTTP edge around :mod:`bot.pipeline` (verify → normalise → route → enqueue). No git or model work here.

Both forges go through one :class:`Pipeline`, one method per step (like
:mod:`serving.repository`): :meth:`Pipeline.verify` (secret, required headers, delivery id),
:meth:`Pipeline.normalise` (bytes → a typed :mod:`bot.events` event), :meth:`Pipeline.route`
(which jobs, if any, and which dedupe markers), :meth:`Pipeline.enqueue` (markers and jobs in
one Redis transaction). A step that decides the answer early raises :class:`_Stop`.

Routes::

    POST /webhooks/github   X-Hub-Signature-256 (HMAC-SHA256 of the raw body); ping, push, issue_comment
    POST /webhooks/gitlab   X-Gitlab-Token; Push Hook, Note Hook, Merge Request Hook
    GET  /healthz           200 when Redis answers, 503 otherwise (never needs a token)
    GET  /metrics           Prometheus text format                      (status views, below)
    GET  /api/status        :func:`bot.status.public` of the snapshot   (status views)
    GET  /, /status, /runs/…, /charts/…  the status page (:mod:`bot.status_page`; status views)

Status views (everything but ``/webhooks/*`` and ``/healthz``) need ``Authorization: Bearer
<webhook.status_token>`` when that token is set (compared in constant time); when it is not set
they answer only when the listener is a loopback address and the client is local (the embedded
demo), and 403 otherwise. They read atomically written summaries only (see :mod:`bot.status`), so
no lock an ingest holds can make them wait. Errors are answered as short JSON: no traceback,
no exception text, no server path (the log has the details).

Answers: 202 accepted (delivery id and the jobs queued), 200 ignored (with the reason) or duplicate
(the same delivery id, or a replay of an accepted delivery under a new id: the same body, or the
same forge comment/note id), 401 bad or missing signature/token, 400 malformed body (wrong JSON
types and deep nesting included) or missing headers, 413 body over
``webhook.max_body_bytes``, 503 Redis unreachable (nothing was recorded, so the forge's
redelivery will be processed).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import typing as t

import redis as redis_lib
from flask import Flask, Response, jsonify, request
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bot import config
from bot import queue as q
from bot.errors import ConfigError
from bot.pipeline import Pipeline, WebhookMetrics, check_secrets, reply

log = logging.getLogger(__name__)


def _is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Guard:
    """Who may see the status views (everything but ``/webhooks/*`` and ``/healthz``)."""

    def __init__(self, token: str | None, listen_host: str) -> None:
        self.token = token.encode() if token else None
        self.loopback_listener = _is_loopback(listen_host)

    @staticmethod
    def is_open(path: str) -> bool:
        """Forges and probes never need the token."""
        return path.startswith("/webhooks/") or path == "/healthz"

    def refuse(self, path: str, authorization: str | None, remote_addr: str | None) -> tuple[Response, int] | None:
        """None when the request may proceed, else the 401/403 answer."""
        if self.is_open(path):
            return None
        if self.token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
                return None
            resp, code = reply(401, "unauthorized",
                                error="this view needs Authorization: Bearer <webhook.status_token>")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="repotune"'
            return resp, code
        if self.loopback_listener and _is_loopback(remote_addr):
            return None
        return reply(403, "forbidden", error="the status views answer only on a loopback listener while no "
                      "status token is set: set REPOTUNE_STATUS_TOKEN (webhook.status_token); "
                      "see docs/operations.md")


def create_app(settings: config.Settings | None = None, redis: redis_lib.Redis | None = None, *,
               listen_host: str | None = None) -> Flask:
    """The webhook Flask app. ``settings`` default to :func:`bot.config.current`; ``redis`` to a
    client for ``settings.redis_url``; ``listen_host`` (the interface the server binds, default
    ``webhook.host``) decides whether the status views may stay open without a token. Raises
    ConfigError when it must not start."""
    settings = settings or config.current()
    check_secrets(settings)
    if redis is None:
        if not settings.redis_url:
            raise ConfigError("the webhook needs Redis: set REDIS_URL (or use `repotune up`, which "
                              "starts an embedded Redis)")
        redis = q.connect(settings.redis_url)
    from bot.status import bounded

    connection = redis
    metrics = WebhookMetrics()
    guard = _Guard(settings.webhook.status_token, listen_host or settings.webhook.host)
    if guard.token is None and not guard.loopback_listener:
        log.warning("webhook: no status token (REPOTUNE_STATUS_TOKEN) and a non-loopback listener: "
                    "/, /status, /api/status, /metrics and the run pages answer 403")

    app = Flask("bot.webhook")
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook.max_body_bytes
    app.extensions["repotune"] = {"settings": settings, "redis": connection, "metrics": metrics,
                                  "status_redis": bounded(connection)}
    pipeline = Pipeline(settings, connection, metrics)

    @app.before_request
    def authorise() -> tuple[Response, int] | None:
        return guard.refuse(request.path, request.headers.get("Authorization"), request.remote_addr)

    _routes(app, settings, pipeline)
    _error_pages(app, settings)

    from bot import status_page  # the server-rendered status page (GET /)

    app.register_blueprint(status_page.blueprint)
    return app


def _routes(app: Flask, settings: config.Settings, pipeline: Pipeline) -> None:
    connection, metrics = pipeline.connection, pipeline.metrics
    status_redis = app.extensions["repotune"]["status_redis"]

    def deliver(forge: str) -> tuple[Response, int]:
        answer = pipeline.handle(forge, request.headers, request.get_data(cache=False),
                                 request.content_type)
        return jsonify(answer.body), answer.code

    @app.post("/webhooks/github")
    def github() -> tuple[Response, int]:
        return deliver("github")

    @app.post("/webhooks/gitlab")
    def gitlab() -> tuple[Response, int]:
        return deliver("gitlab")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            connection.ping()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            log.warning("healthz: Redis unreachable: %s", exc)
            return reply(503, "unavailable", redis=False, error="Redis is unreachable")
        return reply(200, "ok", redis=True)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/api/status")
    def api_status() -> Response:
        from bot.status import collect, public

        return jsonify(public(collect(settings, status_redis)))


def _error_pages(app: Flask, settings: config.Settings) -> None:
    """Short JSON for every error: the HTTP reason, never exception text, a traceback or a path."""

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return reply(413, "too_large", error=f"body over {settings.webhook.max_body_bytes} bytes")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return reply(code, exc.name.lower().replace(" ", "_"), error=exc.name)

    @app.errorhandler(Exception)
    def internal(exc: Exception) -> tuple[Response, int]:
        if isinstance(exc, HTTPException):
            return http_error(exc)
        log.error("%s %s failed", request.method, request.path, exc_info=exc)
        return reply(500, "error", error="internal error; the server log has the details")


WEBHOOK_THREADS = 8
"""Worker threads of ``repotune webhook`` (``--threads``): each answers one request at a time,
and a delivery takes milliseconds; slow clients never hold one (the edge buffers them)."""


def server(settings: config.Settings, host: str | None = None, port: int | None = None,
           threads: int = WEBHOOK_THREADS, redis: redis_lib.Redis | None = None) -> t.Any:
    """The webhook app under :class:`serving.http.HttpServer`, as ``repotune webhook`` runs it
    (and ``benchmarks/webhook_bench.py`` measures it): waitress reads each request completely
    before a thread sees it, so clients that dribble bytes cost a socket, not a thread, and the
    forge's deliveries are answered while they wait. Bodies over ``webhook.max_body_bytes`` are
    answered 413 before the app runs. Not bound yet: call ``bind()``/``start()``."""
    from serving.http import HttpLimits, HttpServer

    host = host or settings.webhook.host
    app = create_app(settings, redis, listen_host=host)
    limits = HttpLimits(max_body_bytes=settings.webhook.max_body_bytes, threads=max(1, threads))
    return HttpServer(app, host, settings.webhook.port if port is None else port, limits, name="webhook")
