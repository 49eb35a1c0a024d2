"""The other completion protocols editors speak, as pure request/response shapes.

- llama.cpp's server (llama.vscode and friends): ``POST /infill`` with ``input_prefix``,
  ``input_suffix``, ``input_extra`` file chunks and ``n_predict``, and ``POST /completion``
  with ``prompt``; answered ``{content, stop, tokens_predicted, …}`` or, streamed, one
  ``data: {content, stop}`` event per chunk (no ``[DONE]``).
- Tabby (tabby-agent in VS Code, JetBrains, Vim): ``POST /v1/completions`` with
  ``{language, segments: {prefix, suffix}}``, answered ``{id, choices: [{index, text}]}``;
  health and server-setting probes; ``POST /v1/events`` telemetry (view/select/dismiss), kept
  append-only as JSON lines for a later look at what editors accept.

Each parser returns the same :class:`serving.completions.CompletionRequest` the OpenAI route
builds, so one :class:`serving.completer.Completer` serves them all.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from durable import write_atomic
from serving.completions import (
    ApiError,
    CompletionRequest,
    RequestLimits,
    check_prompt_size,
    fresh_seed,
    parse_bool,
    parse_number,
    parse_stops,
)

LLAMA_DEFAULT_N_PREDICT = 128
"""``n_predict`` when a llama.cpp request sends none or -1 (llama.cpp's "until the end")."""
TABBY_MAX_TOKENS = 64
"""Tokens a Tabby completion may have (Tabby's server default ``max_decoding_tokens``)."""
EVENT_TYPES = ("view", "select", "dismiss", "completion", "chat_completion")
"""Tabby ``/v1/events`` types RepoTune accepts."""


def _text(body: Mapping, name: str, required: bool = False) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", param=name)
    return value


# ----------------------------------------------------------------------------- llama.cpp

def _n_predict(body: Mapping, limits: RequestLimits) -> int:
    value = body.get("n_predict")
    if value is None or value == -1:
        return min(LLAMA_DEFAULT_N_PREDICT, limits.max_tokens)
    return parse_number(dict(body), "n_predict", 0, 1, limits.max_tokens, int)


def _extra(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, dict) and isinstance(c.get("text", ""), str)
                                               for c in value):
        raise ApiError(400, "input_extra must be a list of {filename, text} objects", param="input_extra")
    return tuple((str(c.get("filename") or ""), c.get("text") or "") for c in value)


def _llama_request(body: Mapping, prefix: str, suffix: str, extra: tuple[tuple[str, str], ...],
                   limits: RequestLimits) -> CompletionRequest:
    check_prompt_size(len(prefix) + len(suffix) + sum(len(t) for _, t in extra), limits)
    return CompletionRequest(
        prompts=[prefix], suffix=suffix, extra=extra, max_tokens=_n_predict(body, limits),
        temperature=parse_number(dict(body), "temperature", 0.8, 0.0, 2.0),
        top_p=parse_number(dict(body), "top_p", 0.95, 0.0, 1.0),
        stop=parse_stops(body.get("stop"), limits), stream=parse_bool(dict(body), "stream"),
        seed=fresh_seed({} if body.get("seed") == -1 else dict(body)),  # -1: llama.cpp's "random"
    )


def parse_infill(body: Any, limits: RequestLimits) -> CompletionRequest:
    """llama.cpp ``/infill``: ``prompt`` is text typed after ``input_prefix`` (appended to it)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    prefix = _text(body, "input_prefix") + _text(body, "prompt")
    return _llama_request(body, prefix, _text(body, "input_suffix"), _extra(body.get("input_extra")), limits)


def parse_llama_completion(body: Any, limits: RequestLimits) -> CompletionRequest:
    """llama.cpp ``/completion``: a left-to-right ``prompt`` (a string)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return _llama_request(body, _text(body, "prompt", required=True), "", (), limits)


def llama_body(openai_body: Mapping[str, Any], *, stopped_word: bool = False) -> dict[str, Any]:
    """llama.cpp's answer built from the OpenAI body the completer made (first choice)."""
    first = openai_body["choices"][0]
    usage = openai_body.get("usage") or {}
    return {"content": first["text"], "stop": True, "model": openai_body["model"],
            "tokens_predicted": usage.get("completion_tokens", 0),
            "tokens_evaluated": usage.get("prompt_tokens", 0),
            "stopped_eos": first["finish_reason"] == "stop" and not stopped_word,
            "stopped_word": stopped_word, "stopped_limit": first["finish_reason"] == "length",
            "truncated": False}


def llama_event(openai_event: Mapping[str, Any]) -> dict[str, Any] | None:
    """One streamed llama.cpp event from an OpenAI chunk (``None`` for chunks without choices)."""
    if "error" in openai_event:
        return {"content": "", "stop": True, "error": openai_event["error"]}
    if not openai_event.get("choices"):
        return None
    first = openai_event["choices"][0]
    done = first["finish_reason"] is not None
    event: dict[str, Any] = {"content": first["text"], "stop": done}
    if done:
        event.update(model=openai_event["model"], stopped_limit=first["finish_reason"] == "length")
    return event


# ----------------------------------------------------------------------------- Tabby

def is_tabby_request(body: Any) -> bool:
    """The two shapes of ``/v1/completions`` differ by body: Tabby's has ``segments``."""
    return isinstance(body, dict) and "segments" in body and "prompt" not in body


def parse_tabby(body: Mapping[str, Any], limits: RequestLimits) -> CompletionRequest:
    """Tabby's ``{language, segments: {prefix, suffix, filepath?, clipboard?}}``.

    Tabby's clients send no temperature: absent means greedy (a completion an editor shows
    should not change from one keystroke to the next); a request may still ask for sampling."""
    segments = body.get("segments")
    if not isinstance(segments, dict):
        raise ApiError(400, "segments must be an object with prefix and suffix", param="segments")
    prefix, suffix = _text(segments, "prefix"), _text(segments, "suffix")
    check_prompt_size(len(prefix) + len(suffix), limits, param="segments")
    return CompletionRequest(prompts=[prefix], suffix=suffix, max_tokens=min(TABBY_MAX_TOKENS, limits.max_tokens),
                             temperature=parse_number(dict(body), "temperature", 0.0, 0.0, 2.0),
                             seed=fresh_seed(dict(body)))


def tabby_body(openai_body: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": openai_body["id"],
            "choices": [{"index": c["index"], "text": c["text"]} for c in openai_body["choices"]]}


def tabby_health(model: str, version: int | None) -> dict[str, Any]:
    """Tabby's ``/v1/health`` shape (the agent shows model and device in its status)."""
    import os

    return {"model": f"{model}@{version}" if version is not None else model, "chat_model": None,
            "device": "triton", "arch": platform.machine(), "cpu_info": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count() or 1, "cuda_devices": [], "version": {"git_describe": "repotune"},
            "webserver": None}


def parse_event(body: Any) -> dict[str, Any]:
    """A validated Tabby ``/v1/events`` body (400 naming what is wrong)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the event must be a JSON object")
    kind = body.get("type")
    if kind not in EVENT_TYPES:
        raise ApiError(400, f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}",
                       param="type", code="unknown_event")
    if kind in ("view", "select", "dismiss"):
        if not isinstance(body.get("completion_id"), str) or not body["completion_id"]:
            raise ApiError(400, "completion_id must be a non-empty string", param="completion_id")
        index = body.get("choice_index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ApiError(400, "choice_index must be a non-negative integer", param="choice_index")
    return dict(body)


class EventLog:
    """Tabby events as JSON lines, one file per UTC day under ``folder``.

    Each append rewrites the day's file atomically under a lock (as :func:`bot.freshness.append`
    does), so a reader never sees half a line and two proxy threads lose none."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, when: _dt.datetime | None = None) -> Path:
        day = (when or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%d")
        return self.folder / f"events-{day}.jsonl"

    def append(self, event: Mapping[str, Any], received_at: float) -> Path:
        path = self.path()
        line = json.dumps({**event, "received_at": received_at}, sort_keys=True, default=str)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                existing = path.read_text(encoding="utf-8") if path.exists() else ""
                if existing and not existing.endswith("\n"):
                    existing += "\n"
                write_atomic(path, existing + line + "\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return path
