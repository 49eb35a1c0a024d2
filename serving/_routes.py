"""The completion routes of :mod:`serving.proxy`: one handler per protocol, sharing the served
models (:class:`serving.models.ModelSet`: the request's model picks its
:class:`serving.completer.Completer`), the error shapes, the metrics and the stream limit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from serving.completer import SUFFIX_HEADER, Completer, Prompt
from serving.completions import ApiError, CompletionRequest, from_serving
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
    from serving.models import ModelSet
    from serving.proxy import ProxyConfig
    from serving.telemetry import Telemetry

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
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):  # the generator's end and the close hook both call it
                self._sem.release()
        return release


class _Handlers:
    """One method per protocol; :meth:`run` wraps each with auth, model routing, error shapes
    and metrics, and hands it the body and the chosen model's completer."""

    def __init__(self, cfg: ProxyConfig, models: ModelSet, metrics, telemetry: Telemetry | None = None) -> None:
        self.cfg = cfg
        self.models = models
        self.metrics = metrics
        self.telemetry = telemetry
        self.slots = _StreamSlots(cfg.max_concurrent_streams)
        self.events = EventLog(cfg.events_dir) if cfg.events_dir is not None else None
        self._started = threading.local()

    def run(self, route: str, handler: Callable[[Any, Completer], Any], engine: str | None = None):
        from flask import request

        from serving.proxy import authorize, error_response

        started = self._started.value = time.monotonic()
        status, model = 500, None
        try:
            key = authorize(self.cfg)
            body = request.get_json(silent=True)
            model = self.models.resolve(requested_model(body, engine), key)
            resp = handler(body, self.models.completer(model))
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
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.monotonic() - started)
            if model is not None:
                self.metrics.model_requests.labels(model, str(status)).inc()

    def _stream(self, completer: Completer, req, prompt, to_sse: Callable[[Iterator[dict[str, Any]]], Iterator[str]], route: str):
        """Start a stream in a free slot; the slot is released when the last byte is sent or the
        client goes away (whichever comes first). Telemetry records it once it ends."""
        from flask import Response

        release = self.slots.take()
        try:
            stream = completer.stream(req, prompt, time.monotonic())
        except BaseException:
            release()
            raise
        events = stream.events
        if self.telemetry is not None:
            events = self._watch(stream.events, completer.model_name, req, prompt, route, self._context(),
                                 self._started.value, stream.version)

        def body() -> Iterator[str]:
            try:
                yield from to_sse(events)
            finally:
                release()
        resp = Response(body(), mimetype="text/event-stream")
        resp.call_on_close(release)
        resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                             VERSION_HEADER: str(stream.version), **prompt.headers})
        return resp

    @staticmethod
    def _json(body: dict[str, Any], version: int, headers: dict[str, str]):
        from flask import jsonify

        resp = jsonify(body)
        resp.headers.update({VERSION_HEADER: str(version), **headers})
        return resp

    def openai(self, body: Any, completer: Completer, route: str = "/v1/completions"):
        req = completer.parse(body)
        prompt = completer.prepare(req, client=self._client())
        if req.stream:
            return self._stream(completer, req, prompt, lambda events: _sse(events, done=True), route)
        done = completer.complete(req, prompt)
        self._record(completer.model_name, route, req, prompt, done.body, done.version)
        return self._json(done.body, done.version, prompt.headers)

    def tabby(self, body: Any, completer: Completer):
        req = parse_tabby(body, completer.limits)
        prompt = completer.prepare(req, client=self._client())
        done = completer.complete(req, prompt)
        self._record(completer.model_name, "/v1/completions:tabby", req, prompt, done.body, done.version)
        return self._json(tabby_body(done.body), done.version, prompt.headers)

    def llama(self, body: Any, completer: Completer, infill: bool):
        limits = completer.limits
        route = "/infill" if infill else "/completion"
        req = parse_infill(body, limits) if infill else parse_llama_completion(body, limits)
        prompt = completer.prepare(req, infill=infill, client=self._client())
        if req.stream:
            return self._stream(completer, req, prompt, lambda events: _sse(
                (e for e in map(llama_event, events) if e is not None), done=False), route)
        done = completer.complete(req, prompt)
        self._record(completer.model_name, route, req, prompt, done.body, done.version)
        stopped_word = bool(done.stopped_at and done.stopped_at[0])
        return self._json(llama_body(done.body, stopped_word=stopped_word), done.version, prompt.headers)

    def event(self):
        from flask import request

        from serving.proxy import authorize

        authorize(self.cfg)
        try:
            event = parse_event(request.get_json(silent=True))
        except ApiError:
            if self.telemetry is not None:
                self.telemetry.hooks.rejected("malformed")
            raise
        if request.args.get("select_kind"):  # tabby-agent sends it as a query parameter
            event.setdefault("select_kind", request.args["select_kind"])
        if self.telemetry is not None:
            self.telemetry.event(event, self._context()[1])
        if self.events is not None:
            self.events.append(event, time.time())
        return "", 200

    def feedback(self, cid: str):
        """``POST /v1/completions/<id>/feedback`` for clients without Tabby's events."""
        from flask import jsonify, request

        from serving.proxy import authorize

        authorize(self.cfg)
        if self.telemetry is None:
            raise ApiError(404, "completion feedback is off on this proxy (no telemetry folder is "
                                "configured); ask the operator to set the serving telemetry_dir",
                           code="telemetry_off")
        rec = self.telemetry.feedback(cid, request.get_json(silent=True), self._context()[1])
        return jsonify({"id": cid, "choice_index": rec["choice_index"], "accepted": rec["accepted"],
                        "kept_chars": rec.get("kept_chars")})

    # ------------------------------------------------------------------ telemetry

    def _context(self) -> tuple[str, str]:
        """(language, client hash) of the current request; the language from Tabby's body, the
        ``X-RepoTune-Language`` header or the OpenAI body's ``language``/``user``."""
        from flask import request

        from serving._auth import presented_credential

        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        language = body.get("language") or request.headers.get("X-RepoTune-Language") or "unknown"
        credential = (presented_credential(request.headers.get("Authorization", ""))
                      or (body.get("user") if isinstance(body.get("user"), str) else "")
                      or f"{request.remote_addr} {request.headers.get('User-Agent', '')}")
        assert self.telemetry is not None
        return str(language)[:64], self.telemetry.client(credential)

    def _client(self) -> str:
        """The request's client hash, which a canary routes by ("" without telemetry: production)."""
        return self._context()[1] if self.telemetry is not None else ""

    def _record(self, model: str, route: str, req: CompletionRequest, prompt: Prompt, body: dict[str, Any],
                version: int, context: tuple[str, str] | None = None, started: float | None = None) -> None:
        if self.telemetry is None:
            return
        language, client = context or self._context()
        suffix = req.suffix if SUFFIX_HEADER not in prompt.headers else ""
        tok = prompt.tokenizer
        self.telemetry.completion(
            cid=body["id"], model=model, version=version,
            language=language, route=route, client=client, prompt_tokens=sum(len(r) for r in prompt.rows),
            texts=[c["text"] for c in body["choices"]],
            latency_s=time.monotonic() - (started if started is not None else self._started.value),
            suffix=suffix, prompt=req.prompts[0] if req.prompts else "",
            count_suffix=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]))

    def _watch(self, events: Iterator[dict[str, Any]], model: str, req: CompletionRequest, prompt: Prompt,
               route: str, context: tuple[str, str], started: float, version: int) -> Iterator[dict[str, Any]]:
        """Pass a stream's events through; when it ends, record the text it sent (under the
        version of its first chunk, the one its response header named)."""
        texts: dict[int, str] = {}
        cid = ""
        for ev in events:
            for c in ev.get("choices") or ():
                texts[c["index"]] = texts.get(c["index"], "") + c.get("text", "")
            cid = ev.get("id", cid)
            yield ev
        if cid:
            body = {"id": cid, "choices": [{"text": texts[i]} for i in sorted(texts)]}
            self._record(model, route, req, prompt, body, version, context, started)


def requested_model(body: Any, engine: str | None = None) -> str | None:
    """The model a request names: the engine in its path (FauxPilot, Copilot), else the base
    URL's ``/m/<model>`` (:data:`serving.proxy.MODEL_PREFIX`), else the body's ``model``."""
    from flask import request

    from serving.proxy import MODEL_ENVIRON

    if engine:
        return engine
    pinned = request.environ.get(MODEL_ENVIRON)
    if pinned:
        return str(pinned)
    named = body.get("model") if isinstance(body, dict) else None
    return named if isinstance(named, str) and named else None


def completion_routes(app, cfg: ProxyConfig, models: ModelSet, metrics,
                      telemetry: Telemetry | None = None) -> None:
    """Register the completion routes of every protocol, Tabby's probes and events, and the
    feedback endpoint."""
    from flask import jsonify, request

    from serving.proxy import authorize

    h = _Handlers(cfg, models, metrics, telemetry)

    @app.post("/v1/completions")
    def completions():
        if is_tabby_request(request.get_json(silent=True)):
            return h.run("/v1/completions:tabby", h.tabby)
        return h.run("/v1/completions", h.openai)

    app.add_url_rule("/completions", "bare_completions",
                     lambda: h.run("/completions", lambda b, c: h.openai(b, c, "/completions")), methods=["POST"])
    app.add_url_rule("/v1/engines/<engine>/completions", "engine_completions",
                     lambda engine: h.run("/v1/engines/completions",
                                          lambda b, c: h.openai(b, c, "/v1/engines/completions"), engine),
                     methods=["POST"])
    app.add_url_rule("/infill", "infill", lambda: h.run("/infill", lambda b, c: h.llama(b, c, infill=True)),
                     methods=["POST"])
    app.add_url_rule("/completion", "llama_completion",
                     lambda: h.run("/completion", lambda b, c: h.llama(b, c, infill=False)), methods=["POST"])
    app.add_url_rule("/v1/events", "tabby_events", h.event, methods=["POST"])
    app.add_url_rule("/v1/completions/<cid>/feedback", "completion_feedback", h.feedback, methods=["POST"])

    @app.get("/v1/health")
    def tabby_health_route():
        model = models.resolve(requested_model(None), authorize(cfg))
        return jsonify(tabby_health(model, models.version(model)))

    @app.get("/v1beta/server_setting")
    def tabby_server_setting():
        authorize(cfg)
        return jsonify({"disable_client_side_telemetry": False})


def _sse(events: Iterator[dict[str, Any]], *, done: bool) -> Iterator[str]:
    """Server-sent events of ``events``; OpenAI's end with ``data: [DONE]``, llama.cpp's do not."""
    for body in events:
        yield f"data: {json.dumps(body)}\n\n"
    if done:
        yield "data: [DONE]\n\n"
