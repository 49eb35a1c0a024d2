"""The completion proxy: OpenAI/FauxPilot-compatible HTTP in front of Triton (Flask).

Routes: ``POST /v1/completions`` (OpenAI, or Tabby's shape when the body has ``segments``),
``POST /completions`` and ``POST /v1/engines/<engine>/completions`` (OpenAI), ``POST /infill``
and ``POST /completion`` (llama.cpp), ``GET /v1/health``, ``GET /v1beta/server_setting`` and
``POST /v1/events`` (Tabby), ``POST /v1/completions/<id>/feedback``, ``GET /v1/models``, ``GET /copilot_internal/v2/token``,
``GET /healthz``, ``GET /metrics`` (Prometheus). The protocol shapes live in
:mod:`serving.protocols`, the routes in :mod:`serving._routes`.

A request with a ``suffix`` is completed fill-in-the-middle with the serving version's family
sentinels (:mod:`families`); for a left-to-right family the suffix is ignored and the
``X-RepoTune-Suffix`` header says so (``strict_suffix``: a 400). A prompt that does not fit the
window is trimmed (:mod:`serving._fitting`) and ``X-RepoTune-Trimmed`` says what was cut
(``strict_context``: OpenAI's 400). Limits on body size, prompt characters, completions per
request, stop strings and concurrent streams answer 413/400/429 in OpenAI's shape.

One proxy serves every model of the model repository (each folder with a pointer file) plus
``model_name``, the default; the engine in the path or the body's ``model`` picks one, and API
keys may be limited to some models (:mod:`serving.models` has the routing rules, 404
``model_not_found`` for a model a key may not use, whether or not it exists). ``/v1/models``
lists the models the caller may use, each with its serving version.

Each request goes to the exact version named by its model's pointer file
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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving._auth import ApiKey, authenticate, matching_key, mint_token, presented_credential
from serving._routes import VERSION_HEADER as VERSION_HEADER
from serving.completer import CompletionObserver
from serving.completions import ApiError
from serving.config import ProxyConfig as ProxyConfig
from serving.models import ModelSet


@dataclass(frozen=True)
class _Metrics:
    """The proxy's Prometheus series, in a registry of its own (one per app)."""

    registry: Any
    requests: Any
    latency: Any
    tokens: Any
    retries: Any
    served: Any
    served_chars: Any
    events: Any
    events_rejected: Any
    telemetry_dropped: Any
    model_requests: Any
    model_tokens: Any

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
            served=Counter("repotune_proxy_served_completions", "Completions recorded by telemetry",
                           ["version", "language"], registry=registry),
            served_chars=Histogram("repotune_proxy_completion_chars", "Characters per served completion",
                                   ["version"], registry=registry,
                                   buckets=(0, 10, 25, 50, 100, 200, 400, 800, 1600)),
            events=Counter("repotune_proxy_events", "Editor events recorded (view, select, dismiss, "
                           "accepted, rejected)", ["type"], registry=registry),
            events_rejected=Counter("repotune_proxy_events_rejected", "Editor events refused "
                                    "(unknown, replay, malformed)", ["reason"], registry=registry),
            telemetry_dropped=Counter("repotune_proxy_telemetry_dropped", "Telemetry records dropped "
                                      "because the writer's queue was full", registry=registry),
            model_requests=Counter("repotune_proxy_model_requests", "Completion requests by served model "
                                   "and status (requests no model was resolved for are not counted)",
                                   ["model", "status"], registry=registry),
            model_tokens=Counter("repotune_proxy_model_completion_tokens", "Tokens generated, by model",
                                 ["model"], registry=registry),
        )

    def observer(self, model: str) -> CompletionObserver:
        """The counters one model's completer reports to."""
        tokens = self.model_tokens.labels(model)

        def generated(n: int) -> None:
            self.tokens.inc(n)
            tokens.inc(n)
        return CompletionObserver(tokens=generated, retry=self.retries.inc)

    def telemetry_hooks(self):
        from serving.telemetry import TelemetryHooks

        def served(version: str, language: str, chars: int) -> None:
            self.served.labels(version, language).inc()
            self.served_chars.labels(version).observe(chars)

        return TelemetryHooks(served=served, event=lambda kind: self.events.labels(kind).inc(),
                              rejected=lambda reason: self.events_rejected.labels(reason).inc(),
                              dropped=self.telemetry_dropped.inc)


def create_proxy_app(cfg: ProxyConfig):
    """The Flask app serving completions through Triton according to ``cfg``."""
    from flask import Flask

    from serving._routes import completion_routes

    app = Flask("repotune.proxy")
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    metrics = _Metrics.create()
    models = ModelSet(cfg, metrics.observer)
    default = models.completer(cfg.model_name)
    app.config["repotune.models"] = models
    app.config["repotune.router"] = default.router  # the default model's, as before several models
    app.config["repotune.triton"] = models.triton(cfg.model_name)
    app.config["repotune.completer"] = default
    telemetry = _telemetry(cfg, metrics)
    app.config["repotune.telemetry"] = telemetry
    _error_handlers(app, cfg)
    completion_routes(app, cfg, models, metrics, telemetry)
    _info_routes(app, cfg, models, metrics)
    app.wsgi_app = _ModelPrefix(app.wsgi_app)
    return app


MODEL_PREFIX = "/m/"
"""``/m/<model>/<any route>`` is ``<any route>`` on that model: a base URL that picks the model for
clients whose requests carry no model name (Tabby, llama.cpp)."""
MODEL_ENVIRON = "repotune.model"


class _ModelPrefix:
    """WSGI middleware: moves ``/m/<model>`` from the path into the environ (``repotune.model``)."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(MODEL_PREFIX):
            name, slash, rest = path[len(MODEL_PREFIX):].partition("/")
            if name and slash:
                environ[MODEL_ENVIRON] = name
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + MODEL_PREFIX + name
                environ["PATH_INFO"] = "/" + rest
        return self.app(environ, start_response)


def _telemetry(cfg: ProxyConfig, metrics: _Metrics):
    """The app's :class:`serving.telemetry.Telemetry`, or None when ``telemetry_dir`` is unset."""
    if cfg.telemetry_dir is None:
        return None
    from serving.telemetry import Telemetry, load_salt

    folder = Path(cfg.telemetry_dir)
    salt = load_salt(cfg.telemetry_salt_file or folder / ".salt")
    return Telemetry(folder, salt, store_code=cfg.store_code, hooks=metrics.telemetry_hooks(),
                     window_s=cfg.telemetry_window_s, retention_days=cfg.telemetry_retention_days,
                     max_file_bytes=cfg.telemetry_max_file_bytes, queue_size=cfg.telemetry_queue_size)


def error_response(err: ApiError):
    from flask import jsonify

    resp = jsonify(err.body())
    resp.status_code = err.status
    return resp


def authorize(cfg: ProxyConfig) -> ApiKey | None:
    """The caller's key and its models; 401 unless the request presents one of ``cfg.api_keys``
    or a live token minted from one. ``None`` when the proxy has no keys (every model is open)."""
    from flask import request

    if not cfg.api_keys:
        return None
    key = authenticate(presented_credential(request.headers.get("Authorization", "")), cfg.api_keys)
    if key is None:
        raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                       code="invalid_api_key")
    return key


def _error_handlers(app, cfg: ProxyConfig) -> None:
    from flask import request

    app.register_error_handler(ApiError, error_response)

    @app.before_request
    def _body_limit():
        length = request.content_length
        if length is not None and length > cfg.max_body_bytes:
            return error_response(_too_large(cfg))
        return None

    @app.errorhandler(413)
    def _too_big(_err):
        return error_response(_too_large(cfg))

    @app.errorhandler(404)
    def _not_found(_err):
        return error_response(ApiError(404, f"no route {request.method} {request.path}", code="not_found"))

    @app.errorhandler(405)
    def _bad_method(_err):
        return error_response(ApiError(405, f"{request.method} is not allowed on {request.path}"))

    @app.after_request
    def _headers(resp):
        for key, value in cfg.extra_headers.items():
            resp.headers.setdefault(key, value)
        return resp


def _too_large(cfg: ProxyConfig) -> ApiError:
    return ApiError(413, f"the request body is larger than this server accepts ({cfg.max_body_bytes} bytes); "
                         "send less context", code="body_too_large")


def _info_routes(app, cfg: ProxyConfig, models: ModelSet, metrics: _Metrics) -> None:
    from flask import Response, jsonify, request
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    @app.get("/v1/models")
    def list_models():
        key = authorize(cfg)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "repotune",
                 "version": models.version(name)} for name in _listed(models, key)]
        return jsonify({"object": "list", "data": data})

    @app.get("/v1/engines")
    def engines():
        key = authorize(cfg)
        return jsonify({"object": "list", "data": [{"id": name, "object": "engine", "ready": True}
                                                   for name in _listed(models, key)]})

    @app.get("/copilot_internal/v2/token")
    def copilot_token():
        # Copilot-era clients fetch a session token first, then send it as their bearer token.
        if not cfg.api_keys:
            return jsonify({"token": "repotune", "expires_at": int(time.time()) + cfg.token_ttl_s,
                            "refresh_in": cfg.token_ttl_s // 2})
        presented = presented_credential(request.headers.get("Authorization", ""))
        key = matching_key(presented, cfg.api_keys) if presented else None
        if key is None:
            raise ApiError(401, "a token is handed out only for a valid API key: send "
                                "`Authorization: token <key>` (or `Bearer <key>`)", code="invalid_api_key")
        token, expires = mint_token(key, cfg.token_ttl_s)  # carries the key's models, signed
        return jsonify({"token": token, "expires_at": expires, "refresh_in": cfg.token_ttl_s // 2})

    @app.get("/healthz")
    def healthz():
        # Unauthenticated: it speaks of the default model only and names no other.
        triton = models.triton(cfg.model_name)
        live = triton.live()
        try:
            router = models.router(cfg.model_name)
            loaded, adapter = router.route()
            version = router.served(loaded, adapter)
            ready = live and triton.model_ready(loaded)
        except ApiError:
            version, ready = None, False
        resp = jsonify({"triton_live": live, "version": version, "ready": ready})
        resp.status_code = 200 if ready else 503
        return resp

    @app.get("/metrics")
    def metrics_page():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)


def _listed(models: ModelSet, key: ApiKey | None) -> list[str]:
    """The models a caller sees: those its key may use (``/m/<model>`` narrows it to that one)."""
    from flask import request

    visible = models.visible(key)
    pinned = request.environ.get(MODEL_ENVIRON)
    return [n for n in visible if n == pinned] if pinned else visible
