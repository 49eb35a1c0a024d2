"""The webhook HTTP edge: verify → normalise → dedupe → enqueue. No git or model work here.

Routes::

    POST /webhooks/github   X-Hub-Signature-256 (HMAC-SHA256 of the raw body); ping, push, issue_comment
    POST /webhooks/gitlab   X-Gitlab-Token; Push Hook, Note Hook, Merge Request Hook
    GET  /healthz           200 when Redis answers, 503 otherwise
    GET  /metrics           Prometheus text format
    GET  /api/status        :func:`bot.status.collect` as JSON

Answers: 202 accepted (delivery id and the jobs queued), 200 ignored (with the reason) or duplicate,
401 bad or missing signature/token, 400 malformed body or missing headers, 413 body over
``webhook.max_body_bytes``, 503 Redis unreachable (nothing was recorded, so the forge's
redelivery will be processed).
"""

from __future__ import annotations

import logging
import time
import typing as t

import redis as redis_lib
from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import RequestEntityTooLarge

from bot import config, events
from bot import queue as q
from bot.errors import ConfigError, QueueUnavailable

log = logging.getLogger(__name__)


class _Metrics:
    """Per-app Prometheus metrics (a private registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("repotune_webhook_deliveries_total", "Webhook deliveries by outcome.",
                                  ["forge", "outcome"], registry=self.registry)
        self.latency = Histogram("repotune_webhook_seconds", "Time to answer a webhook delivery.",
                                 ["forge"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


def _reply(code: int, status: str, **extra: t.Any) -> tuple[Response, int]:
    return jsonify({"status": status, **extra}), code


def check_secrets(settings: config.Settings) -> None:
    """Refuse to serve without a way to authenticate deliveries (unless explicitly insecure)."""
    if settings.insecure_no_webhook_secret:
        log.warning("webhooks are accepted WITHOUT verification where no secret is set "
                    "(insecure_no_webhook_secret); never do this on a reachable network")
        return
    have = {"github": bool(settings.github.webhook_secret), "gitlab": bool(settings.gitlab.webhook_token)}
    env = {"github": "REPOTUNE_GITHUB_WEBHOOK_SECRET", "gitlab": "REPOTUNE_GITLAB_WEBHOOK_TOKEN"}
    missing = sorted({r.forge for r in settings.repos if r.forge in have and not have[r.forge]})
    if missing:
        raise ConfigError(f"repositories on {', '.join(missing)} are configured but no webhook secret is set: "
                          + ", ".join(f"set {env[f]} (or {env[f]}_FILE)" for f in missing)
                          + "; for local development only, pass --insecure-no-webhook-secret")
    if not any(have.values()):
        raise ConfigError("no webhook secret is configured: set REPOTUNE_GITHUB_WEBHOOK_SECRET and/or "
                          "REPOTUNE_GITLAB_WEBHOOK_TOKEN (or their _FILE variants); for local development "
                          "only, pass --insecure-no-webhook-secret")


def create_app(settings: config.Settings | None = None, redis: redis_lib.Redis | None = None) -> Flask:
    """The webhook Flask app. ``settings`` default to :func:`bot.config.current`; ``redis`` to a
    client for ``settings.redis_url``. Raises ConfigError when it must not start."""
    settings = settings or config.current()
    check_secrets(settings)
    if redis is None:
        if not settings.redis_url:
            raise ConfigError("the webhook needs Redis: set REDIS_URL (or use `repotune up`, which "
                              "starts an embedded Redis)")
        redis = q.connect(settings.redis_url)
    connection = redis
    metrics = _Metrics()

    app = Flask("bot.webhook")
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook.max_body_bytes
    app.extensions["repotune"] = {"settings": settings, "redis": connection, "metrics": metrics}

    def handled(forge: str, code: int, outcome: str, started: float, body: Response) -> tuple[Response, int]:
        metrics.deliveries.labels(forge, outcome).inc()
        metrics.latency.labels(forge).observe(time.perf_counter() - started)
        return body, code

    def enqueue(forge: str, delivery_id: str, jobs: list[q.JobSpec],
                describe: list[dict[str, t.Any]], started: float) -> tuple[Response, int]:
        try:
            ids = q.enqueue_once(connection, q.delivery_key(forge, delivery_id),
                                 settings.webhook.delivery_ttl_seconds, jobs)
        except QueueUnavailable as exc:
            log.error("%s delivery %s: %s", forge, delivery_id, exc)
            return handled(forge, 503, "unavailable", started,
                           jsonify({"status": "unavailable", "delivery": delivery_id,
                                    "error": "the job queue is unreachable; nothing was queued, "
                                             "redeliver later"}))
        if ids is None:
            return handled(forge, 200, "duplicate", started,
                           jsonify({"status": "duplicate", "delivery": delivery_id,
                                    "reason": "this delivery was already accepted"}))
        queued = [dict(d, job=i) for d, i in zip(describe, ids, strict=True)]
        log.info("%s delivery %s accepted: %s", forge, delivery_id, queued)
        return handled(forge, 202, "accepted", started,
                       jsonify({"status": "accepted", "delivery": delivery_id, "queued": queued}))

    def ignore(forge: str, reason: str, started: float, delivery_id: str | None = None):
        return handled(forge, 200, "ignored", started,
                       jsonify({"status": "ignored", "reason": reason, "delivery": delivery_id}))

    def route_event(forge: str, event: events.Event, started: float, delivery_id: str):
        if isinstance(event, events.Ignored):
            return ignore(forge, event.reason, started, delivery_id)
        if isinstance(event, events.Ping):
            return handled(forge, 200, "ping", started,
                           jsonify({"status": "pong", "delivery": delivery_id, "zen": event.zen}))
        if isinstance(event, events.PushEvent):
            repo = settings.repo_for(forge, event.repo, event.project_id)
            if repo is None:
                return ignore(forge, f"repository {event.repo} is not configured", started, delivery_id)
            if not repo.tracks(event.branch):
                patterns = ", ".join(repo.branches or [repo.branch])
                return ignore(forge, f"branch {event.branch} is not tracked (tracked: {patterns})",
                              started, delivery_id)
            from bot.jobs import ingest_spec

            push = dict(event.as_dict(), kind="push")
            spec = ingest_spec(repo.name, event.branch, push)
            return enqueue(forge, delivery_id, [spec],
                           [{"queue": "ingest", "kind": "ingest", "repo": repo.name,
                             "branch": event.branch, "after": event.after}], started)
        if isinstance(event, events.CommentEvent):
            if not event.on_review:
                return ignore(forge, "comment is not on a pull/merge request", started, delivery_id)
            if event.action not in ("created", "create"):
                return ignore(forge, f"comment {event.action}: only new comments are commands",
                              started, delivery_id)
            repo = settings.repo_for(forge, event.repo, event.project_id)
            if repo is None:
                return ignore(forge, f"repository {event.repo} is not configured", started, delivery_id)
            if event.author.lower() == settings.chatops.bot_username.lower():
                return ignore(forge, "comment by the bot itself", started, delivery_id)
            first = (event.body.strip().splitlines() or [""])[0].strip()
            if not (first.startswith(settings.chatops.prefix)
                    or first.lower().startswith(f"@{settings.chatops.bot_username.lower()}")):
                return ignore(forge, "comment is not a command", started, delivery_id)
            spec = q.JobSpec("control", "bot.chatops.handle_comment_job", (event.as_dict(),), {},
                             {"timeout": 300, "description": f"chat-ops {event.repo}#{event.number}"})
            return enqueue(forge, delivery_id, [spec],
                           [{"queue": "control", "kind": "chatops", "repo": repo.name,
                             "number": event.number}], started)
        return ignore(forge, "unhandled event", started, delivery_id)

    @app.post("/webhooks/github")
    def github() -> tuple[Response, int]:
        started = time.perf_counter()
        body = request.get_data(cache=False)
        name = request.headers.get("X-GitHub-Event")
        delivery_id = request.headers.get("X-GitHub-Delivery")
        secret = settings.github.webhook_secret
        if secret:
            if not events.verify_github_signature(secret, body, request.headers.get("X-Hub-Signature-256")):
                return handled("github", 401, "unauthorized", started,
                               jsonify({"status": "unauthorized",
                                        "error": "missing or bad X-Hub-Signature-256"}))
        elif not settings.insecure_no_webhook_secret:
            return handled("github", 401, "unauthorized", started,
                           jsonify({"status": "unauthorized", "error": "GitHub webhooks are not configured"}))
        if not name or not delivery_id:
            return handled("github", 400, "malformed", started,
                           jsonify({"status": "malformed",
                                    "error": "X-GitHub-Event and X-GitHub-Delivery headers are required"}))
        try:
            payload = events.decode_github_body(body, request.content_type)
            event = events.parse_github(name, delivery_id, payload)
        except events.MalformedDelivery as exc:
            return handled("github", 400, "malformed", started,
                           jsonify({"status": "malformed", "error": str(exc)}))
        return route_event("github", event, started, delivery_id)

    @app.post("/webhooks/gitlab")
    def gitlab() -> tuple[Response, int]:
        started = time.perf_counter()
        body = request.get_data(cache=False)
        token = settings.gitlab.webhook_token
        if token:
            if not events.verify_gitlab_token(token, request.headers.get("X-Gitlab-Token")):
                return handled("gitlab", 401, "unauthorized", started,
                               jsonify({"status": "unauthorized", "error": "missing or bad X-Gitlab-Token"}))
        elif not settings.insecure_no_webhook_secret:
            return handled("gitlab", 401, "unauthorized", started,
                           jsonify({"status": "unauthorized", "error": "GitLab webhooks are not configured"}))
        name = request.headers.get("X-Gitlab-Event")
        if not name:
            return handled("gitlab", 400, "malformed", started,
                           jsonify({"status": "malformed", "error": "X-Gitlab-Event header is required"}))
        delivery_id = events.gitlab_delivery_id(request.headers, body)
        try:
            event = events.parse_gitlab(name, delivery_id, events.decode_json(body))
        except events.MalformedDelivery as exc:
            return handled("gitlab", 400, "malformed", started,
                           jsonify({"status": "malformed", "error": str(exc)}))
        return route_event("gitlab", event, started, delivery_id)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return _reply(413, "too_large", error=f"body over {settings.webhook.max_body_bytes} bytes")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            connection.ping()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            return _reply(503, "unavailable", redis=False, error=str(exc))
        return _reply(200, "ok", redis=True)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/api/status")
    def api_status() -> Response:
        from bot.status import collect

        return jsonify(collect(settings, connection))

    from bot import status_page  # the server-rendered status page (GET /)

    app.register_blueprint(status_page.blueprint)
    return app
