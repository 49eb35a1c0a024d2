"""The completion routes of :mod:`serving.proxy`: one handler per protocol, sharing one
:class:`serving.completer.Completer`, the error shapes, the metrics and the stream limit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from serving.completer import Completer
from serving.completions import ApiError, from_serving
from serving.errors import ServingError
from serving.protocols import (
    EventLog,
    is_tabby_request,
    llama_body,
    llama_event,
    parse_event,
    parse_infill,
    parse_llama_completion,
    parse_tabby,
    tabby_body,
    tabby_health,
)

if TYPE_CHECKING:
    from serving.proxy import ProxyConfig

VERSION_HEADER = "x-repotune-model-version"


class _StreamSlots:
    """At most ``limit`` streams in flight: a stream holds a slot until its last byte is sent
    or the client goes away; one more is answered 429 rather than queued behind the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(max(1, limit))

    def take(self) -> Callable[[], None]:
        if not self._sem.acquire(blocking=False):
            raise ApiError(429, f"{self.limit} completion streams are already running; retry shortly",
                           code="too_many_streams", kind="rate_limit_error")
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._sem.release()
        return release


def completion_routes(app, cfg: ProxyConfig, completer: Completer, metrics) -> None:
    from flask import Response, jsonify, request

    from serving.proxy import authorize, error_response

    slots = _StreamSlots(cfg.max_concurrent_streams)
    events_log = EventLog(cfg.events_dir) if cfg.events_dir is not None else None

    def run(route: str, handler: Callable[[Any], Any]):
        started = time.monotonic()
        status = 500
        try:
            authorize(cfg)
            resp = handler(request.get_json(silent=True))
            status = resp.status_code
            return resp
        except ApiError as err:
            status = err.status
            return error_response(err)
        except ServingError as exc:
            err = from_serving(exc)
            status = err.status
            return error_response(err)
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.monotonic() - started)

    def streamed(events: Iterator[str], version: int, headers: dict[str, str], release) -> Any:
        def body() -> Iterator[str]:
            try:
                yield from events
            finally:
                release()
        resp = Response(body(), mimetype="text/event-stream")
        resp.call_on_close(release)
        resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             VERSION_HEADER: str(version), **headers})
        return resp

    def start_stream(req, prompt):
        release = slots.take()
        try:
            return completer.stream(req, prompt, time.monotonic()), release
        except BaseException:
            release()
            raise

    def openai(body: Any):
        req = completer.parse(body)
        prompt = completer.prepare(req)
        if req.stream:
            stream, release = start_stream(req, prompt)
            return streamed(_sse(stream.events, done=True), stream.version, prompt.headers, release)
        done = completer.complete(req, prompt)
        resp = jsonify(done.body)
        resp.headers.update({VERSION_HEADER: str(done.version), **prompt.headers})
        return resp

    def tabby(body: Any):
        req = parse_tabby(body, completer.limits)
        prompt = completer.prepare(req)
        done = completer.complete(req, prompt)
        resp = jsonify(tabby_body(done.body))
        resp.headers.update({VERSION_HEADER: str(done.version), **prompt.headers})
        return resp

    def llama(body: Any, infill: bool):
        req = parse_infill(body, completer.limits) if infill else parse_llama_completion(body, completer.limits)
        prompt = completer.prepare(req, infill=infill)
        if req.stream:
            stream, release = start_stream(req, prompt)
            events = (e for e in map(llama_event, stream.events) if e is not None)
            return streamed(_sse(events, done=False), stream.version, prompt.headers, release)
        done = completer.complete(req, prompt)
        # A stop string cut the text when the model was still going (it had not ended on its own).
        tokens = done.completion_tokens
        resp = jsonify(llama_body(done.body, stopped_word=bool(req.stop) and 0 < tokens == prompt.max_tokens))
        resp.headers.update({VERSION_HEADER: str(done.version), **prompt.headers})
        return resp

    @app.post("/v1/completions")
    def completions():
        body = request.get_json(silent=True)
        if is_tabby_request(body):
            return run("/v1/completions:tabby", tabby)
        return run("/v1/completions", openai)

    @app.post("/completions")
    def bare_completions():
        return run("/completions", openai)

    @app.post("/v1/engines/<engine>/completions")
    def engine_completions(engine: str):
        return run("/v1/engines/completions", openai)

    @app.post("/infill")
    def infill():
        return run("/infill", lambda body: llama(body, infill=True))

    @app.post("/completion")
    def llama_completion():
        return run("/completion", lambda body: llama(body, infill=False))

    @app.get("/v1/health")
    def tabby_health_route():
        authorize(cfg)
        router = completer.router
        try:
            version = router.version()
        except ApiError:
            version = None
        return jsonify(tabby_health(cfg.model_name, version))

    @app.get("/v1beta/server_setting")
    def tabby_server_setting():
        authorize(cfg)
        return jsonify({"disable_client_side_telemetry": False})

    @app.post("/v1/events")
    def tabby_events():
        authorize(cfg)
        event = parse_event(request.get_json(silent=True))
        if events_log is not None:
            events_log.append(event, time.time())
        return "", 200


def _sse(events: Iterator[dict[str, Any]], *, done: bool) -> Iterator[str]:
    """Server-sent events of ``events``; OpenAI's end with ``data: [DONE]``, llama.cpp's do not."""
    for body in events:
        yield f"data: {json.dumps(body)}\n\n"
    if done:
        yield "data: [DONE]\n\n"
