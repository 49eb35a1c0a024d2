"""The completion protocol with no I/O: request parsing and validation, stop strings, errors
in OpenAI's shape, and the response bodies.

Everything here is a pure function of its arguments (no Flask, no Triton), so the HTTP edge
(:mod:`serving.proxy`) and the pipeline (:mod:`serving.completer`) share one definition of what
a request and a response look like.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from serving.errors import InferenceFailed, ServingError, TritonTimeout, TritonUnavailable


class ApiError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""

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


def from_serving(exc: ServingError) -> ApiError:
    """The HTTP status and message a Triton-side failure is answered with (504/503/502)."""
    if isinstance(exc, TritonTimeout):
        return ApiError(504, f"the model did not answer in time: {exc}", code="timeout")
    if isinstance(exc, TritonUnavailable):
        return ApiError(503, f"the model server is unavailable: {exc}", code="model_unavailable")
    if isinstance(exc, InferenceFailed):
        return ApiError(502, f"the model server failed this request: {exc}", code="inference_failed")
    return ApiError(502, str(exc), code="serving_error")


# ----------------------------------------------------------------------------- request

@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (issue 13 §3); every excess is a 4xx naming the setting."""

    max_tokens: int = 2048
    """Largest ``max_tokens`` (``n_predict``) accepted."""
    max_prompt_chars: int = 1_000_000
    """Characters of prompt + suffix + extra context together, checked before tokenizing."""
    max_choices: int = 16
    """Prompts × ``n``: completions one request may ask for."""
    max_stops: int = 16
    """Stop strings per request."""
    max_stop_chars: int = 256
    """Characters of one stop string."""


@dataclass(frozen=True)
class CompletionRequest:
    """A validated completion request (the fields RepoTune honours), whatever protocol sent it."""

    prompts: list[str]
    """One or more prompts (the code before the cursor); each is completed ``n`` times."""
    max_tokens: int = 16
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    """Stop strings, each kept whole (``"\\n\\n"`` is one stop, never two newlines); never empty."""
    stream: bool = False
    logprobs: int | None = None
    echo: bool = False
    seed: int = 0
    """The request's seed, or a freshly drawn one: sampling twice must not repeat itself."""
    suffix: str = ""
    """The code after the cursor (fill-in-the-middle), empty for left-to-right."""
    extra: tuple[tuple[str, str], ...] = ()
    """Other files' chunks as (filename, text) context (llama.cpp ``input_extra``)."""
    include_usage: bool = False
    """``stream_options.include_usage``: a last stream chunk with ``usage`` and no choices."""


def parse_number(body: dict, name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
    value = body.get(name)
    if value is None:
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name} must be a number", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return kind(value)


def parse_bool(body: dict, name: str, default: bool = False) -> bool:
    """A JSON boolean, or the strings ``"true"`` / ``"false"``; anything else is a 400 (a
    truthy ``"false"`` once started a stream)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name)


def parse_stops(stop: Any, limits: RequestLimits, param: str = "stop") -> list[str]:
    """Stop strings: one string stays whole; empty strings are dropped (an empty stop would
    cut every completion to nothing); count and length are limited."""
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]  # one stop string, never its characters
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ApiError(400, f"{param} must be a string or a list of strings", param=param)
    stops = [s for s in stops if s]
    if len(stops) > limits.max_stops:
        raise ApiError(400, f"at most {limits.max_stops} stop strings are accepted, got {len(stops)}",
                       param=param, code="too_many_stops")
    longest = max((len(s) for s in stops), default=0)
    if longest > limits.max_stop_chars:
        raise ApiError(400, f"a stop string may have at most {limits.max_stop_chars} characters, got "
                            f"{longest}", param=param, code="stop_too_long")
    return stops


def check_prompt_size(chars: int, limits: RequestLimits, param: str = "prompt") -> None:
    """413 when the text to complete is over ``max_prompt_chars`` (cheap: before tokenizing)."""
    if chars > limits.max_prompt_chars:
        raise ApiError(413, f"the prompt has {chars} characters, more than this server accepts "
                            f"({limits.max_prompt_chars}); send less context", param=param,
                       code="prompt_too_long")


def check_choices(prompts: int, n: int, limits: RequestLimits) -> None:
    if prompts * n > limits.max_choices:
        raise ApiError(400, f"{prompts} prompt(s) × n={n} asks for {prompts * n} completions; at most "
                            f"{limits.max_choices} per request", param="n", code="too_many_choices")


def fresh_seed(body: dict, name: str = "seed") -> int:
    """The request's seed, or a new random one (sampling must differ from call to call)."""
    if body.get(name) is None:
        return secrets.randbelow(2**31 - 1)
    return parse_number(body, name, 0, 0, 2**31 - 1, int)


def parse_request(body: Any, limits: RequestLimits | int) -> CompletionRequest:
    """Validate an OpenAI completion request body (pure; raises :class:`ApiError` naming the
    parameter at fault). An int ``limits`` is the ``max_tokens`` limit alone."""
    if isinstance(limits, int):
        limits = RequestLimits(max_tokens=limits)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
    suffix = body.get("suffix") or ""
    if not isinstance(suffix, str):
        raise ApiError(400, "suffix must be a string", param="suffix")
    check_prompt_size(sum(map(len, prompts)) + len(suffix), limits)
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise ApiError(400, "logprobs must be a non-negative integer", param="logprobs")
    n = parse_number(body, "n", 1, 1, limits.max_choices, int)
    check_choices(len(prompts), n, limits)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return CompletionRequest(
        prompts=prompts,
        max_tokens=parse_number(body, "max_tokens", 16, 1, limits.max_tokens, int),
        temperature=parse_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=parse_number(body, "top_p", 1.0, 0.0, 1.0),
        n=n,
        stop=parse_stops(body.get("stop"), limits),
        stream=parse_bool(body, "stream"),
        logprobs=logprobs,
        echo=parse_bool(body, "echo"),
        seed=fresh_seed(body),
        suffix=suffix,
        include_usage=parse_bool(options, "include_usage"),
    )


# ----------------------------------------------------------------------------- stop strings

def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; returns (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string (not yet safe to send)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


# ----------------------------------------------------------------------------- response

@dataclass(frozen=True)
class Completion:
    """A finished (non-streamed) completion: the version that produced it and the body."""

    version: int
    body: dict[str, Any]
    """OpenAI ``text_completion`` object: id, created, model ``<name>@<version>``, choices, usage."""
    completion_tokens: int
    stopped_at: tuple[bool, ...] = ()
    """Per choice: True when a stop string cut the text (llama.cpp's ``stopped_word``)."""


def choice(index: int, text: str, finish: str | None, tok: Any, req: CompletionRequest, prompt: str, *,
           tokens: list[int] | None = None, log_probs: list[float] | None = None,
           offset: int = 0) -> dict[str, Any]:
    """One entry of ``choices``, with OpenAI ``logprobs`` when asked for and ``tokens`` given.

    ``top_logprobs`` holds, per position, ``{token: logprob}`` of the chosen token only: the
    FasterTransformer interface returns the chosen tokens' log probabilities, not the top-k
    alternatives (documented in docs/serving.md). ``offset`` is where this text starts in the
    whole completion (stream chunks)."""
    logprobs = None
    if req.logprobs is not None and tokens is not None:
        pieces = [tok.decode([t]) for t in tokens]
        lps = list(log_probs or [])[: len(pieces)]
        lps += [None] * (len(pieces) - len(lps))
        offsets, pos = [], offset + (len(prompt) if req.echo else 0)
        for piece in pieces:
            offsets.append(pos)
            pos += len(piece)
        top = [{piece: lp} if lp is not None else None for piece, lp in zip(pieces, lps, strict=True)]
        logprobs = {"tokens": pieces, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}
    return {"text": (prompt + text) if req.echo else text, "index": index,
            "finish_reason": finish, "logprobs": logprobs}


def envelope(model: str, version: int, choices: list[dict], usage: dict | None, cid: str,
             created: int) -> dict[str, Any]:
    """The ``text_completion`` object around ``choices`` (one per stream event, or the whole)."""
    body = {"id": cid, "object": "text_completion", "created": created,
            "model": f"{model}@{version}", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
