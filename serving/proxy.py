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
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving._files import context_window
from serving.client import Generation, TritonClient
from serving.errors import (
    InferenceFailed,
    ServingError,
    TritonTimeout,
    TritonUnavailable,
    VersionUnavailable,
)
from serving.repository import POINTER_FILE, load_tokenizer

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


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _from_serving(exc: ServingError) -> ApiError:
    if isinstance(exc, TritonTimeout):
        return ApiError(504, f"the model did not answer in time: {exc}", code="timeout")
    if isinstance(exc, TritonUnavailable):
        return ApiError(503, f"the model server is unavailable: {exc}", code="model_unavailable")
    if isinstance(exc, InferenceFailed):
        return ApiError(502, f"the model server failed this request: {exc}", code="inference_failed")
    return ApiError(502, str(exc), code="serving_error")


@dataclass
class _Request:
    prompts: list[str]
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    stream: bool
    logprobs: int | None
    echo: bool
    seed: int


def parse_request(body: Any, max_tokens_limit: int) -> _Request:
    """Validate an OpenAI completion request body (pure; raises :class:`ApiError`)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]  # one stop string, never its characters
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = [s for s in stop if s]
    else:
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")

    def number(name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
        value = body.get(name)
        if value is None:
            return kind(default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError(400, f"{name} must be a number", param=name)
        if not lo <= value <= hi:
            raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}", param=name)
        return kind(value)

    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise ApiError(400, "logprobs must be a non-negative integer", param="logprobs")
    return _Request(
        prompts=prompts,
        max_tokens=number("max_tokens", 16, 1, max_tokens_limit, int),
        temperature=number("temperature", 1.0, 0.0, 2.0),
        top_p=number("top_p", 1.0, 0.0, 1.0),
        n=number("n", 1, 1, 16, int),
        stop=stops,
        stream=bool(body.get("stream", False)),
        logprobs=logprobs,
        echo=bool(body.get("echo", False)),
        seed=number("seed", 0, 0, 2**31 - 1, int),
    )


def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; returns (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string (not yet safe to send)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class _Router:
    """Finds the serving version (pointer symlink, cached by the link's inode) and its tokenizer."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.model_dir = Path(cfg.model_repository).resolve() / cfg.model_name
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._version: int | None = None
        self._tokenizers: dict[int, Any] = {}

    def version(self, fresh: bool = False) -> int:
        path = self.model_dir / POINTER_FILE
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise ApiError(503, f"no model version is serving yet (no {path}); deploy one with "
                                "`repotune deploy <checkpoint>`", code="model_unavailable") from None
        # Every switch renames a new symlink into place: a new inode and ctime (a regular file
        # from an older layout changes the same way).
        stamp = (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)
        with self._lock:
            if fresh or stamp != self._stamp:
                try:
                    version = json.loads(path.read_text()).get("version")
                except (OSError, json.JSONDecodeError):
                    version = None
                self._stamp, self._version = stamp, version
            if self._version is None:
                raise ApiError(503, "no model version is serving yet; deploy one with "
                                    "`repotune deploy <checkpoint>`", code="model_unavailable")
            return int(self._version)

    def tokenizer(self, version: int):
        with self._lock:
            tok = self._tokenizers.get(version)
        if tok is None:
            tok = load_tokenizer(self.model_dir / str(version))
            with self._lock:
                self._tokenizers[version] = tok
                for old in [v for v in self._tokenizers if v != version][:-2]:
                    del self._tokenizers[old]  # keep a few, versions come and go
        return tok

    def context(self, version: int) -> int:
        return context_window(self.model_dir / str(version), self.cfg.default_context_window)


def create_proxy_app(cfg: ProxyConfig):
    """The Flask app serving completions through Triton according to ``cfg``."""
    from flask import Flask, Response, jsonify, request
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    app = Flask("repotune.proxy")
    router = _Router(cfg)
    triton = TritonClient(cfg.triton_url, cfg.model_name, timeout_s=cfg.timeout_s)
    registry = CollectorRegistry()
    m_requests = Counter("repotune_proxy_requests", "Completion requests by route and status",
                         ["route", "status"], registry=registry)
    m_latency = Histogram("repotune_proxy_request_seconds", "Completion latency (to last byte for "
                          "plain requests, to first chunk for streams)", ["route"], registry=registry,
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
    m_tokens = Counter("repotune_proxy_completion_tokens", "Tokens generated", registry=registry)
    m_retries = Counter("repotune_proxy_version_retries", "Requests retried after their version "
                        "was unloaded mid-swap", registry=registry)
    app.config["repotune.router"] = router
    app.config["repotune.triton"] = triton

    def error_response(err: ApiError):
        resp = jsonify(err.body())
        resp.status_code = err.status
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return error_response(err)

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

    def authorize() -> None:
        if not cfg.api_keys:
            return
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if token not in cfg.api_keys:
            raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    def generate(version: int, rows: list[list[int]], n_new: int, req: _Request, stop_ids, end_id,
                 seed_offset: int = 0) -> tuple[int, list[Generation]]:
        """One Triton call on ``version``; on "version unavailable", once more on a fresh pointer."""
        kwargs = dict(top_k=1 if req.temperature == 0 else 0, top_p=req.top_p if req.top_p < 1 else 0.0,
                      temperature=req.temperature, random_seed=req.seed + seed_offset,
                      stop_words=stop_ids, end_id=end_id, return_log_probs=req.logprobs is not None)
        try:
            return version, triton.generate(rows, n_new, version=version, **kwargs)
        except VersionUnavailable:
            m_retries.inc()
            fresh = router.version(fresh=True)
            return fresh, triton.generate(rows, n_new, version=fresh, **kwargs)

    def prepare(req: _Request):
        version = router.version()
        try:
            tok = router.tokenizer(version)
        except (OSError, ServingError) as exc:
            raise ApiError(503, f"cannot load the tokenizer of version {version}: {exc}",
                           code="model_unavailable") from exc
        rows = []
        for prompt in req.prompts:
            ids = tok(prompt)["input_ids"] or [tok.eos_token_id or 0]
            rows.extend([ids] * req.n)
        ctx = router.context(version)
        longest = max(len(r) for r in rows)
        if longest + req.max_tokens > ctx:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens, but the prompt "
                                f"has {longest} tokens and max_tokens is {req.max_tokens} "
                                f"({longest + req.max_tokens} in total); shorten the prompt or lower "
                                "max_tokens", param="max_tokens", code="context_length_exceeded")
        stop_ids = [ids for ids in (tok(s, add_special_tokens=False)["input_ids"] for s in req.stop) if ids]
        return version, tok, rows, stop_ids, tok.eos_token_id

    def choice(index: int, text: str, finish: str | None, tok, gen: Generation | None, req: _Request,
               prompt: str) -> dict[str, Any]:
        logprobs = None
        if req.logprobs is not None and gen is not None:
            tokens = [tok.decode([t]) for t in gen.tokens]
            offsets, pos = [], len(prompt) if req.echo else 0
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            logprobs = {"tokens": tokens, "token_logprobs": gen.log_probs, "top_logprobs": None,
                        "text_offset": offsets}
        return {"text": (prompt + text) if req.echo else text, "index": index,
                "finish_reason": finish, "logprobs": logprobs}

    def complete(route: str):
        started = time.monotonic()
        status = 500
        try:
            authorize()
            req = parse_request(request.get_json(silent=True), cfg.max_tokens_limit)
            version, tok, rows, stop_ids, end_id = prepare(req)
            if req.stream:
                resp = stream(req, version, tok, rows, stop_ids, end_id, started)
            else:
                resp = plain(req, version, tok, rows, stop_ids, end_id)
            status = resp.status_code
            return resp
        except ApiError as err:
            status = err.status
            return error_response(err)
        except ServingError as exc:
            err = _from_serving(exc)
            status = err.status
            return error_response(err)
        finally:
            m_requests.labels(route, str(status)).inc()
            m_latency.labels(route).observe(time.monotonic() - started)

    def envelope(version: int, choices: list[dict], usage: dict | None, cid: str, created: int):
        body = {"id": cid, "object": "text_completion", "created": created,
                "model": f"{cfg.model_name}@{version}", "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def plain(req: _Request, version, tok, rows, stop_ids, end_id):
        version, gens = generate(version, rows, req.max_tokens, req, stop_ids, end_id)
        choices, completion_tokens = [], 0
        for i, gen in enumerate(gens):
            text, stopped = trim_at_stop(tok.decode(gen.tokens, skip_special_tokens=True), req.stop)
            finish = "stop" if stopped or len(gen.tokens) < req.max_tokens else "length"
            completion_tokens += len(gen.tokens)
            choices.append(choice(i, text, finish, tok, gen, req, req.prompts[i // req.n]))
        m_tokens.inc(completion_tokens)
        prompt_tokens = sum(len(r) for r in rows)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        body = envelope(version, choices, usage, f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()))
        resp = jsonify(body)
        resp.headers[VERSION_HEADER] = str(version)
        return resp

    def stream(req: _Request, version, tok, rows, stop_ids, end_id, started: float):
        deadline = started + cfg.timeout_s
        chunk = max(1, cfg.stream_chunk_tokens)
        first_n = min(chunk, req.max_tokens)
        # The first chunk runs before the response starts: failures still get a real status.
        version, first = generate(version, rows, first_n, req, stop_ids, end_id)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def events() -> Iterator[str]:
            nonlocal version
            produced: list[list[int]] = [list(g.tokens) for g in first]
            sent = [""] * len(rows)
            finished: list[str | None] = [None] * len(rows)
            asked = [first_n] * len(rows)
            pending = first
            step = 0
            if req.echo:
                for i in range(len(rows)):
                    yield _sse(envelope(version, [choice(i, "", None, tok, None, req, req.prompts[i // req.n])],
                                        None, cid, created))
            while True:
                for i, gen in enumerate(pending):
                    if finished[i] is not None:
                        continue
                    text = tok.decode(produced[i], skip_special_tokens=True)
                    text, stopped = trim_at_stop(text, req.stop)
                    ended = stopped or len(gen.tokens) < asked[i] or len(produced[i]) >= req.max_tokens
                    safe = text if ended else text[: len(text) - _held_back(text, req.stop)]
                    if not ended and safe.endswith("\ufffd"):
                        safe = safe.rstrip("\ufffd")  # half a UTF-8 character: wait for the rest
                    delta = safe[len(sent[i]):] if safe.startswith(sent[i]) else ""
                    if ended:
                        finished[i] = "stop" if (stopped or len(gen.tokens) < asked[i]) else "length"
                    if delta or ended:
                        sent[i] += delta
                        c = choice(i, delta, finished[i], tok, None, req, "")
                        yield _sse(envelope(version, [c], None, cid, created))
                if all(f is not None for f in finished):
                    break
                if time.monotonic() > deadline:
                    yield _sse(ApiError(504, "the completion exceeded its deadline", code="timeout").body())
                    break
                step += 1
                todo = [i for i, f in enumerate(finished) if f is None]
                n_new = min(chunk, min(req.max_tokens - len(produced[i]) for i in todo))
                try:
                    version, more = generate(version, [rows[i] + produced[i] for i in todo], n_new, req,
                                             stop_ids, end_id, seed_offset=step)
                except ServingError as exc:
                    yield _sse(_from_serving(exc).body())
                    break
                pending = [Generation(tokens=[]) for _ in rows]
                for i, gen in zip(todo, more, strict=True):
                    produced[i].extend(gen.tokens)
                    asked[i] = n_new
                    pending[i] = gen
                m_tokens.inc(sum(len(g.tokens) for g in more))
            yield "data: [DONE]\n\n"

        resp = Response(events(), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.headers[VERSION_HEADER] = str(version)
        return resp

    @app.post("/v1/completions")
    def completions():
        return complete("/v1/completions")

    @app.post("/v1/engines/<engine>/completions")
    def engine_completions(engine: str):
        return complete("/v1/engines/completions")

    @app.get("/v1/models")
    def models():
        authorize()
        try:
            version = router.version()
        except ApiError:
            version = None
        data = [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "repotune",
                 "version": version}]
        return jsonify({"object": "list", "data": data})

    @app.get("/v1/engines")
    def engines():
        authorize()
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
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"

