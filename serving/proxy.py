"""The completion proxy: OpenAI/FauxPilot-compatible HTTP in front of Triton (Flask).

Routes: ``POST /v1/completions``, ``POST /v1/engines/<engine>/completions``, ``GET /v1/models``,
``GET /copilot_internal/v2/token``, ``GET /healthz``, ``GET /metrics`` (Prometheus).

Each request goes to the exact version named by the model repository's pointer file
(``<repository>/<model>/serving.json``, a symlink to the serving version's own
``<N>/serving.json``; re-read when the link changes). If that version was
unloaded in the instant between reading the pointer and calling Triton, the request is retried
once with a freshly read pointer: this is what makes swaps invisible to editors. Every response
carries ``x-repotune-model-version`` and ``"model": "<name>@<version>"``.

Streaming (``stream: true``) generates in chunks of ``stream_chunk_tokens`` tokens — one Triton
call per chunk, the prompt growing by what was generated — and sends each chunk's text as a
server-sent event as soon as it exists, ending with ``data: [DONE]``. This works identically
with the FasterTransformer backend (which has no token streaming in its non-decoupled mode) at
the cost of re-reading the prompt once per chunk. The first chunk is generated before the
response starts, so a Triton failure still becomes a proper 5xx status instead of a broken
stream.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
requests (including prompt + max_tokens over the context window), 401 for a bad API key,
503 when Triton is unreachable or no version serves, 504 on timeout, 502 when Triton answers
with an error. Never a 200 with empty choices.

This module is only the HTTP edge: routes, error handlers, Prometheus metrics. The steps of a
completion (parse → prepare → Triton → response) are :class:`serving.completer.Completer`'s
methods, and request/response shapes live in :mod:`serving.completions`; both run without Flask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.client import TritonClient
from serving.completer import Completer, CompletionObserver, VersionRouter
from serving.completions import ApiError, from_serving
from serving.errors import ServingError

VERSION_HEADER = "x-repotune-model-version"


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of the completion proxy."""

    triton_url: str
    """``host:port`` of Triton's HTTP endpoint."""
    model_repository: str | Path
    """Root of the Triton model repository (holds ``<model>/serving.json`` and the versions)."""
    model_name: str = "codegen"
    """The Triton model (and the engine/model name clients send; any name is accepted)."""
    timeout_s: float = 30.0
    """Deadline of one completion request (all stream chunks together), in seconds."""
    api_keys: tuple[str, ...] = ()
    """Accepted ``Authorization: Bearer`` keys; empty means no authentication."""
    max_tokens_limit: int = 2048
    """Largest ``max_tokens`` accepted."""
    default_context_window: int = 2048
    """Context window when the serving version does not state one."""
    stream_chunk_tokens: int = 8
    """Tokens generated per Triton call when streaming."""
    extra_headers: dict[str, str] = field(default_factory=dict)
    """Headers added to every response (e.g. CORS for a browser client)."""


@dataclass(frozen=True)
class _Metrics:
    """The proxy's Prometheus series, in a registry of its own (one per app)."""

    registry: Any
    requests: Any
    latency: Any
    tokens: Any
    retries: Any

    @classmethod
    def create(cls) -> _Metrics:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("repotune_proxy_requests", "Completion requests by route and status",
                             ["route", "status"], registry=registry),
            latency=Histogram("repotune_proxy_request_seconds", "Completion latency (to last byte for "
                              "plain requests, to first chunk for streams)", ["route"], registry=registry,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            tokens=Counter("repotune_proxy_completion_tokens", "Tokens generated", registry=registry),
            retries=Counter("repotune_proxy_version_retries", "Requests retried after their version "
                            "was unloaded mid-swap", registry=registry),
        )


def create_proxy_app(cfg: ProxyConfig):
    """The Flask app serving completions through Triton according to ``cfg``."""
    from flask import Flask

    app = Flask("repotune.proxy")
    router = VersionRouter(cfg.model_repository, cfg.model_name, cfg.default_context_window)
    triton = TritonClient(cfg.triton_url, cfg.model_name, timeout_s=cfg.timeout_s)
    metrics = _Metrics.create()
    completer = Completer(router, triton, model_name=cfg.model_name, timeout_s=cfg.timeout_s,
                          max_tokens_limit=cfg.max_tokens_limit, stream_chunk_tokens=cfg.stream_chunk_tokens,
                          observer=CompletionObserver(tokens=metrics.tokens.inc, retry=metrics.retries.inc))
    app.config["repotune.router"] = router
    app.config["repotune.triton"] = triton
    app.config["repotune.completer"] = completer
    _error_handlers(app, cfg)
    _completion_routes(app, cfg, completer, metrics)
    _info_routes(app, cfg, router, triton, metrics)
    return app


def _error_response(err: ApiError):
    from flask import jsonify

    resp = jsonify(err.body())
    resp.status_code = err.status
    return resp


def _authorize(cfg: ProxyConfig) -> None:
    """401 unless ``Authorization: Bearer <key>`` names one of ``cfg.api_keys`` (if any)."""
    from flask import request

    if not cfg.api_keys:
        return
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if token not in cfg.api_keys:
        raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                       code="invalid_api_key")


def _error_handlers(app, cfg: ProxyConfig) -> None:
    from flask import request

    app.register_error_handler(ApiError, _error_response)

    @app.errorhandler(404)
    def _not_found(_err):
        return _error_response(ApiError(404, f"no route {request.method} {request.path}", code="not_found"))

    @app.errorhandler(405)
    def _bad_method(_err):
        return _error_response(ApiError(405, f"{request.method} is not allowed on {request.path}"))

    @app.after_request
    def _headers(resp):
        for key, value in cfg.extra_headers.items():
            resp.headers.setdefault(key, value)
        return resp


def _completion_routes(app, cfg: ProxyConfig, completer: Completer, metrics: _Metrics) -> None:
    from flask import Response, jsonify, request

    def complete(route: str):
        started = time.monotonic()
        status = 500
        try:
            _authorize(cfg)
            req = completer.parse(request.get_json(silent=True))
            prompt = completer.prepare(req)
            if req.stream:
                stream = completer.stream(req, prompt, started)
                resp = Response(_sse_events(stream.events), mimetype="text/event-stream")
                resp.headers["Cache-Control"] = "no-cache"
                resp.headers["X-Accel-Buffering"] = "no"
                resp.headers[VERSION_HEADER] = str(stream.version)
            else:
                done = completer.complete(req, prompt)
                resp = jsonify(done.body)
                resp.headers[VERSION_HEADER] = str(done.version)
            status = resp.status_code
            return resp
        except ApiError as err:
            status = err.status
            return _error_response(err)
        except ServingError as exc:
            err = from_serving(exc)
            status = err.status
            return _error_response(err)
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.monotonic() - started)

    @app.post("/v1/completions")
    def completions():
        return complete("/v1/completions")

    @app.post("/v1/engines/<engine>/completions")
    def engine_completions(engine: str):
        return complete("/v1/engines/completions")


def _info_routes(app, cfg: ProxyConfig, router: VersionRouter, triton: TritonClient, metrics: _Metrics) -> None:
    from flask import Response, jsonify
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    @app.get("/v1/models")
    def models():
        _authorize(cfg)
        try:
            version = router.version()
        except ApiError:
            version = None
        data = [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "repotune",
                 "version": version}]
        return jsonify({"object": "list", "data": data})

    @app.get("/v1/engines")
    def engines():
        _authorize(cfg)
        return jsonify({"object": "list", "data": [{"id": cfg.model_name, "object": "engine", "ready": True}]})

    @app.get("/copilot_internal/v2/token")
    def copilot_token():
        # Copilot-era clients fetch a session token first; any value works against this proxy.
        return jsonify({"token": "repotune", "expires_at": int(time.time()) + 3600,
                        "refresh_in": 1800})

    @app.get("/healthz")
    def healthz():
        live = triton.live()
        try:
            version = router.version()
            ready = live and triton.model_ready(version)
        except ApiError:
            version, ready = None, False
        resp = jsonify({"triton_live": live, "version": version, "ready": ready})
        resp.status_code = 200 if ready else 503
        return resp

    @app.get("/metrics")
    def metrics_page():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)


def _sse_events(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events of the completer's event bodies, ending with ``data: [DONE]``."""
    for body in events:
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
