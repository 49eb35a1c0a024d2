"""The webhook's verify → normalise → route → enqueue pipeline, with no HTTP server in it.

:class:`Pipeline` takes (forge, headers, body bytes, content type) and returns an
:class:`Answer`; one method per step (like :mod:`serving.repository`): :meth:`Pipeline.verify`
(secret, required headers, delivery id), :meth:`Pipeline.normalise` (bytes → a typed
:mod:`bot.events` event), :meth:`Pipeline.route` (which jobs, if any, and which dedupe markers),
:meth:`Pipeline.enqueue` (markers and jobs in one Redis transaction). A step that decides the
answer early raises :class:`_Stop`. :mod:`bot.webhook` is the Flask edge around it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import typing as t
from dataclasses import dataclass, field

import redis as redis_lib
from flask import Response, jsonify
from prometheus_client import CollectorRegistry, Counter, Histogram
from werkzeug.datastructures import Headers

from bot import config, events
from bot import queue as q
from bot.errors import ConfigError, QueueUnavailable

log = logging.getLogger(__name__)


class WebhookMetrics:
    """Per-app Prometheus metrics (a private registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("repotune_webhook_deliveries_total", "Webhook deliveries by outcome.",
                                  ["forge", "outcome"], registry=self.registry)
        self.latency = Histogram("repotune_webhook_seconds", "Time to answer a webhook delivery.",
                                 ["forge"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


def reply(code: int, status: str, **extra: t.Any) -> tuple[Response, int]:
    return jsonify({"status": status, **extra}), code


@dataclass(frozen=True)
class Answer:
    """The HTTP answer to a delivery: status code, metrics outcome, JSON body."""

    code: int
    outcome: str
    body: dict[str, t.Any]


class _Stop(Exception):
    """A step decided the answer (401, 400, ignored, ping); later steps do not run."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.outcome)
        self.answer = answer


def _stop(code: int, outcome: str, **body: t.Any) -> _Stop:
    return _Stop(Answer(code, outcome, body))


def _ignored(reason: str, delivery_id: str | None) -> _Stop:
    return _stop(200, "ignored", status="ignored", reason=reason, delivery=delivery_id)


@dataclass(frozen=True)
class Delivery:
    """A verified delivery, still bytes."""

    forge: str
    name: str
    """The forge's event name (``X-GitHub-Event`` / ``X-Gitlab-Event``)."""
    delivery_id: str
    body: bytes
    content_type: str | None


@dataclass(frozen=True)
class Plan:
    """What :meth:`Pipeline.route` decided to queue, and how a replay is recognised."""

    jobs: list[q.JobSpec]
    describe: list[dict[str, t.Any]]
    replay_keys: list[str] = field(default_factory=list)
    """Dedupe markers besides the delivery id: the body digest, and the comment/note id."""


class Pipeline:
    """verify → normalise → route → enqueue for one forge delivery."""

    def __init__(self, settings: config.Settings, connection: redis_lib.Redis, metrics: WebhookMetrics) -> None:
        self.settings = settings
        self.connection = connection
        self.metrics = metrics

    def handle(self, forge: str, headers: Headers, body: bytes, content_type: str | None) -> Answer:
        """Run the steps; count and time the answer."""
        started = time.perf_counter()
        try:
            delivery = self.verify(forge, headers, body, content_type)
            answer = self.enqueue(delivery, self.route(delivery, self.normalise(delivery)))
        except _Stop as stop:
            answer = stop.answer
        self.metrics.deliveries.labels(forge, answer.outcome).inc()
        self.metrics.latency.labels(forge).observe(time.perf_counter() - started)
        return answer

    def verify(self, forge: str, headers: Headers, body: bytes, content_type: str | None) -> Delivery:
        """Check the signature (GitHub) or token (GitLab) against the raw body, then the headers."""
        if forge == "github":
            secret, header, what = (self.settings.github.webhook_secret,
                                    headers.get("X-Hub-Signature-256"), "X-Hub-Signature-256")
            ok = bool(secret) and events.verify_github_signature(secret or "", body, header)
        else:
            secret, header, what = (self.settings.gitlab.webhook_token,
                                    headers.get("X-Gitlab-Token"), "X-Gitlab-Token")
            ok = bool(secret) and events.verify_gitlab_token(secret or "", header)
        if secret and not ok:
            raise _stop(401, "unauthorized", status="unauthorized", error=f"missing or bad {what}")
        if not secret and not self.settings.insecure_no_webhook_secret:
            label = "GitHub" if forge == "github" else "GitLab"
            raise _stop(401, "unauthorized", status="unauthorized",
                        error=f"{label} webhooks are not configured")
        if forge == "github":
            name, delivery_id = headers.get("X-GitHub-Event"), headers.get("X-GitHub-Delivery")
            if not name or not delivery_id:
                raise _stop(400, "malformed", status="malformed",
                            error="X-GitHub-Event and X-GitHub-Delivery headers are required")
        else:
            name = headers.get("X-Gitlab-Event")
            if not name:
                raise _stop(400, "malformed", status="malformed",
                            error="X-Gitlab-Event header is required")
            delivery_id = events.gitlab_delivery_id(headers, body)
        return Delivery(forge, name, delivery_id, body, content_type)

    def normalise(self, delivery: Delivery) -> events.Event:
        """Bytes → a typed event; any malformed shape is a 400 with the reason, never a 500."""
        try:
            if delivery.forge == "github":
                payload = events.decode_github_body(delivery.body, delivery.content_type)
                return events.parse_github(delivery.name, delivery.delivery_id, payload)
            payload = events.decode_json(delivery.body)
            return events.parse_gitlab(delivery.name, delivery.delivery_id, payload)
        except events.MalformedDelivery as exc:
            raise _stop(400, "malformed", status="malformed", error=str(exc)) from exc
        except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
            # The typed reads should catch every shape; this is the net for one they miss.
            log.warning("%s delivery %s: unexpected payload shape", delivery.forge,
                        delivery.delivery_id, exc_info=True)
            raise _stop(400, "malformed", status="malformed",
                        error=f"payload has an unexpected shape ({type(exc).__name__}: {exc})") from exc

    def route(self, delivery: Delivery, event: events.Event) -> Plan:
        """Which jobs the event asks for; a ping or an ignored event stops here."""
        if isinstance(event, events.Ignored):
            raise _ignored(event.reason, delivery.delivery_id)
        if isinstance(event, events.Ping):
            raise _stop(200, "ping", status="pong", delivery=delivery.delivery_id, zen=event.zen)
        digest = q.key("body", delivery.forge, hashlib.sha256(delivery.body).hexdigest())
        if isinstance(event, events.PushEvent):
            return self._route_push(delivery, event, digest)
        if isinstance(event, events.BranchDeleted):
            return self._route_deletion(delivery, event, digest)
        if isinstance(event, events.CommentEvent):
            return self._route_comment(delivery, event, digest)
        raise _ignored("unhandled event", delivery.delivery_id)

    def _route_push(self, delivery: Delivery, event: events.PushEvent, digest: str) -> Plan:
        repo = self.settings.repo_for(delivery.forge, event.repo, event.project_id)
        if repo is None:
            raise _ignored(f"repository {event.repo} is not configured", delivery.delivery_id)
        if not repo.tracks(event.branch):
            patterns = ", ".join(repo.branches or [repo.branch])
            raise _ignored(f"branch {event.branch} is not tracked (tracked: {patterns})",
                           delivery.delivery_id)
        from bot.lifecycle import ingest_spec

        spec = ingest_spec(repo.name, event.branch, dict(event.as_dict(), kind="push"))
        return Plan([spec], [{"queue": "ingest", "kind": "ingest", "repo": repo.name,
                              "branch": event.branch, "after": event.after}], [digest])

    def _route_deletion(self, delivery: Delivery, event: events.BranchDeleted, digest: str) -> Plan:
        """A tracked branch other than the default one was deleted: retire its corpus now
        (:func:`bot.jobs.retire_job`), so the next run neither fails on it nor trains on it."""
        repo = self.settings.repo_for(delivery.forge, event.repo, event.project_id)
        if repo is None:
            raise _ignored(f"repository {event.repo} is not configured", delivery.delivery_id)
        if not repo.tracks(event.branch):
            raise _ignored(f"{event.reason}; it is not tracked", delivery.delivery_id)
        if event.branch == repo.branch:
            raise _ignored(f"{event.reason}; it is the default branch of {repo.name}, whose corpus "
                           "is kept: set `branch` in repotune.toml to the new default", delivery.delivery_id)
        from bot.lifecycle import retire_spec

        spec = retire_spec(repo.name, event.branch, dict(event.as_dict(), kind="branch-deleted"))
        return Plan([spec], [{"queue": "ingest", "kind": "retire", "repo": repo.name,
                              "branch": event.branch}], [digest])

    def _route_comment(self, delivery: Delivery, event: events.CommentEvent, digest: str) -> Plan:
        chatops = self.settings.chatops
        repo = self.settings.repo_for(delivery.forge, event.repo, event.project_id)
        why = events.for_bot(event, prefix=chatops.prefix, bot_username=chatops.bot_username,
                             repo_configured=repo is not None)
        if why is not None:
            raise _ignored(events.not_for_bot_reason(why, event, chatops.bot_username),
                           delivery.delivery_id)
        assert repo is not None  # for_bot said the repository is configured
        spec = q.JobSpec("control", "bot.chatops.handle_comment_job", (event.as_dict(),), {},
                         {"timeout": 300, "description": f"chat-ops {event.repo}#{event.number}"})
        comment = q.key("comment", delivery.forge, event.repo, str(event.comment_id))
        return Plan([spec], [{"queue": "control", "kind": "chatops", "repo": repo.name,
                              "number": event.number}], [comment, digest])

    def enqueue(self, delivery: Delivery, plan: Plan) -> Answer:
        """Set the delivery marker and the replay markers and queue the jobs, all or nothing."""
        forge, delivery_id = delivery.forge, delivery.delivery_id
        markers = [q.delivery_key(forge, delivery_id), *plan.replay_keys]
        try:
            ids = q.enqueue_once(self.connection, markers,
                                 self.settings.webhook.delivery_ttl_seconds, plan.jobs)
        except QueueUnavailable as exc:
            log.error("%s delivery %s: %s", forge, delivery_id, exc)
            return Answer(503, "unavailable", {
                "status": "unavailable", "delivery": delivery_id,
                "error": "the job queue is unreachable; nothing was queued, redeliver later"})
        if ids is None:
            return Answer(200, "duplicate", {
                "status": "duplicate", "delivery": delivery_id,
                "reason": "this delivery (or a replay of it: the same body, or the same comment) "
                          "was already accepted"})
        queued = [dict(d, job=i) for d, i in zip(plan.describe, ids, strict=True)]
        log.info("%s delivery %s accepted: %s", forge, delivery_id, queued)
        return Answer(202, "accepted", {"status": "accepted", "delivery": delivery_id, "queued": queued})


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
