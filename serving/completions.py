"""The completion protocol with no I/O: request parsing and validation, stop strings, errors
in OpenAI's shape, and the response bodies.

Everything here is a pure function of its arguments (no Flask, no Triton), so the HTTP edge
(:mod:`serving.proxy`) and the pipeline (:mod:`serving.completer`) share one definition of what
a request and a response look like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.client import Generation
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
class CompletionRequest:
    """A validated OpenAI completion request (the fields RepoTune honours)."""

    prompts: list[str]
    """One or more prompts; each is completed ``n`` times."""
    max_tokens: int = 16
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    """Stop strings, each kept whole (``"\\n\\n"`` is one stop, never two newlines)."""
    stream: bool = False
    logprobs: int | None = None
    echo: bool = False
    seed: int = 0


def _number(body: dict, name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
    value = body.get(name)
    if value is None:
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name} must be a number", param=name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}", param=name)
    return kind(value)


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]  # one stop string, never its characters
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise ApiError(400, "stop must be a string or a list of strings", param="stop")


def parse_request(body: Any, max_tokens_limit: int) -> CompletionRequest:
    """Validate an OpenAI completion request body (pure; raises :class:`ApiError` naming the
    parameter at fault)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
    stops = _stops(body.get("stop"))
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
        raise ApiError(400, "logprobs must be a non-negative integer", param="logprobs")
    return CompletionRequest(
        prompts=prompts,
        max_tokens=_number(body, "max_tokens", 16, 1, max_tokens_limit, int),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        n=_number(body, "n", 1, 1, 16, int),
        stop=stops,
        stream=bool(body.get("stream", False)),
        logprobs=logprobs,
        echo=bool(body.get("echo", False)),
        seed=_number(body, "seed", 0, 0, 2**31 - 1, int),
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


def choice(index: int, text: str, finish: str | None, tok: Any, gen: Generation | None,
           req: CompletionRequest, prompt: str) -> dict[str, Any]:
    """One entry of ``choices`` (with OpenAI ``logprobs`` when asked for and ``gen`` is given)."""
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


def envelope(model: str, version: int, choices: list[dict], usage: dict | None, cid: str,
             created: int) -> dict[str, Any]:
    """The ``text_completion`` object around ``choices`` (one per stream event, or the whole)."""
    body = {"id": cid, "object": "text_completion", "created": created,
            "model": f"{model}@{version}", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body
