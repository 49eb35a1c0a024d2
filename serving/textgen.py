"""Completions from a text model: Triton's vLLM backend (prompt text in, completion text out).

A version of the python or FasterTransformer backend takes token ids (the FasterTransformer
GPT-J tensors); a vLLM version takes ``text_input`` and ``sampling_parameters`` and tokenizes
itself. :func:`speaks_text` tells them apart from the version's ``config.pbtxt``;
:class:`TextCompleter` is what :class:`serving.completer.Completer` hands a prepared
:class:`~serving.completer.Prompt` to when it does. The prompt is built exactly as for a token
model (FIM sentinels, context fitting: :func:`serving._fitting.fit`) and sent as that text; the
completion comes back as text.

What differs from the token path, and why:

* sampling: :func:`sampling_parameters` maps the request onto vLLM ``SamplingParams`` fields
  (``max_tokens``, ``temperature`` (0 is greedy), ``top_p``, ``top_k``, ``seed``, ``stop``), and
  the family's end markers that are single special tokens go as ``stop_token_ids``: vLLM skips
  special tokens when it detokenizes, so as stop *strings* they would never match;
* usage: vLLM counts tokens itself, but the generate endpoint returns only text, so
  ``completion_tokens`` is the completion re-tokenized with the version's tokenizer (the prompt's
  count is exact: it is the prompt RepoTune tokenized to fit the window). ``finish_reason`` is
  ``length`` when that count reached ``max_tokens``, else ``stop``;
* streaming: one ``generate_stream`` request per choice (Server-Sent Events), the backend's pieces
  passed on as they arrive, minus any text that may still become a stop string; choices are
  streamed one after another (each event names its index), not interleaved;
* ``logprobs`` are refused (400): the backend returns them only as an extra output RepoTune
  does not request yet.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from serving.completions import (
    ApiError,
    Completion,
    CompletionRequest,
    choice,
    envelope,
    from_serving,
    held_back,
    trim_at_stop,
)
from serving.errors import ServingError, SmokeTestFailed, VersionUnavailable

if TYPE_CHECKING:
    from serving.completer import CompletionObserver, CompletionStream, Prompt, VersionRouter
    from serving.repository import SmokeTest

log = logging.getLogger(__name__)

TEXT_BACKENDS = ("vllm",)
"""Backends that take prompt text (``text_input``) rather than token ids."""


def speaks_text(version_dir: str | Path) -> bool:
    """True when the version's ``config.pbtxt`` names a text backend or declares ``text_input``
    (the vLLM backend's interface, also served by its test stand-in under ``backend: "python"``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = Path(version_dir) / "config.pbtxt"
    try:
        cfg = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError):
        return False  # no readable config: the token path reports the real problem
    return cfg.backend in TEXT_BACKENDS or any(t.name == "text_input" for t in cfg.input)


def sampling_parameters(*, max_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                        seed: int | None = None, stop: list[str] | tuple[str, ...] = (),
                        stop_token_ids: list[int] | tuple[int, ...] = (),
                        lora_name: str | None = None) -> dict[str, Any]:
    """The vLLM ``SamplingParams`` fields of one completion (sent as ``sampling_parameters``).

    ``temperature`` 0 is greedy (vLLM then ignores top-p/top-k); ``top_k`` 0 and ``top_p`` 1 mean
    "off" and are left out, as is ``seed`` for greedy requests, so vLLM's own defaults apply.
    ``lora_name`` picks an adapter listed in the version's ``multi_lora.json``."""
    params: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature)}
    if temperature > 0:
        if 0.0 < top_p < 1.0:
            params["top_p"] = float(top_p)
        if top_k > 0:
            params["top_k"] = int(top_k)
        if seed is not None:
            params["seed"] = int(seed)
    if stop:
        params["stop"] = list(stop)
    if stop_token_ids:
        params["stop_token_ids"] = sorted({int(t) for t in stop_token_ids})
    if lora_name:
        params["lora_name"] = lora_name
    return params


def special_stop_ids(tok: Any, stops: list[str]) -> list[int]:
    """Ids of the stop strings that are one special token each (end-of-text, FIM sentinels)."""
    specials = set(getattr(tok, "all_special_tokens", ())) | set(getattr(tok, "added_tokens_encoder", {}))
    out = []
    for s in stops:
        if s in specials:
            ids = tok(s, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                out.append(int(ids[0]))
    return out


def check_text_smoke(client: TextGenerator, version: int, vdir: Path, smoke: SmokeTest, label: str,
                     adapter: str | None = None) -> None:
    """:meth:`serving.repository.ModelRepository.activate`'s smoke test for a text (vLLM) version.

    A greedy completion of ``smoke.prompt`` through the generate endpoint must hold at least
    ``smoke.min_new_tokens`` tokens (counted with ``vdir``'s tokenizer) and must not echo the
    prompt (the backend prepends it unless ``exclude_input_in_output`` reached it). Log
    probabilities are not checked: the generate endpoint returns text only. Raises
    :class:`~serving.errors.SmokeTestFailed` naming ``label``."""
    from serving.repository import load_tokenizer

    try:
        tokenizer = load_tokenizer(vdir)
        text = client.generate_text(smoke.prompt, sampling_parameters(
            max_tokens=smoke.max_tokens, temperature=0.0, lora_name=adapter), version=version)
    except (ServingError, OSError) as exc:
        raise SmokeTestFailed(f"smoke completion on {label} failed: {exc}") from exc
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    problems = []
    if count < smoke.min_new_tokens:
        problems.append(f"it generated {count} tokens of text {text!r} (need {smoke.min_new_tokens})")
    if text.startswith(smoke.prompt):
        problems.append("the answer repeats the prompt (exclude_input_in_output was not honoured)")
    if problems:
        raise SmokeTestFailed(f"{label} failed its smoke completion of {smoke.prompt!r} "
                              "(generate endpoint): " + "; ".join(problems))


class TextGenerator(Protocol):
    """The Triton calls the text path needs (:class:`serving.client.TritonClient`)."""

    def generate_text(self, text: str, sampling: dict[str, Any], *, version: int | None = None) -> str: ...

    def stream_text(self, text: str, sampling: dict[str, Any], *, version: int | None = None) -> Iterator[str]: ...


class TextCompleter:
    """:class:`serving.completer.Completer`'s ``complete`` / ``stream`` for text-model versions."""

    def __init__(self, router: VersionRouter, triton: TextGenerator, *, model_name: str, timeout_s: float,
                 observer: CompletionObserver) -> None:
        self.router = router
        self.triton = triton
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.observer = observer

    def complete(self, req: CompletionRequest, prompt: Prompt) -> Completion:
        """One generate call per choice; choices cut at the stop strings, usage counted."""
        _refuse_logprobs(req)
        version, choices, produced, stopped_at = prompt.version, [], [], []
        for i, text_in in enumerate(prompt.texts):
            version, raw = self._call(version, lambda v, t=text_in, i=i: self.triton.generate_text(
                t, self._sampling(req, prompt, i), version=v))
            text, stopped = trim_at_stop(raw, prompt.stops)
            count = self._count(prompt, text)
            produced.append(count)
            stopped_at.append(stopped)
            finish = "length" if count >= prompt.max_tokens and not stopped else "stop"
            choices.append(choice(i, text, finish, prompt.tokenizer, req, req.prompts[i // req.n]))
        self.observer.tokens(sum(produced))
        body = envelope(self.model_name, version, choices, _usage(prompt, produced), _cid(), int(time.time()))
        return Completion(version=version, body=body, completion_tokens=sum(produced),
                          stopped_at=tuple(stopped_at))

    def stream(self, req: CompletionRequest, prompt: Prompt, started: float | None = None) -> CompletionStream:
        """The first choice's request is sent, and its first piece read, before returning, so a
        failure there still gets a proper status; the rest follows as events."""
        from serving.completer import CompletionStream

        _refuse_logprobs(req)
        deadline = (time.monotonic() if started is None else started) + self.timeout_s

        def open_first(v: int) -> Iterator[str]:
            pieces = self.triton.stream_text(prompt.texts[0], self._sampling(req, prompt, 0), version=v)
            first = next(pieces, None)  # sends the request: errors surface here
            return _chain(first, pieces)

        version, first = self._call(prompt.version, open_first)
        return CompletionStream(version, self._events(req, prompt, version, first, deadline))

    # ------------------------------------------------------------------ internals

    def _events(self, req: CompletionRequest, prompt: Prompt, version: int, first: Iterator[str],
                deadline: float) -> Iterator[dict[str, Any]]:
        cid, created = _cid(), int(time.time())
        if req.echo:
            for i in range(len(prompt.texts)):
                c = choice(i, "", None, prompt.tokenizer, req, req.prompts[i // req.n])
                yield envelope(self.model_name, version, [c], None, cid, created)
        produced: list[int] = []
        for i, text_in in enumerate(prompt.texts):
            try:
                pieces = first if i == 0 else self.triton.stream_text(
                    text_in, self._sampling(req, prompt, i), version=version)
                for c in self._row(req, prompt, i, pieces, deadline, produced):
                    yield envelope(self.model_name, version, [c], None, cid, created)
            except ServingError as exc:
                yield from_serving(exc).body()
                return
            except ApiError as exc:
                yield exc.body()
                return
        self.observer.tokens(sum(produced))
        if req.include_usage:
            yield envelope(self.model_name, version, [], _usage(prompt, produced), cid, created)

    def _row(self, req: CompletionRequest, prompt: Prompt, i: int, pieces: Iterator[str], deadline: float,
             produced: list[int]) -> Iterator[dict[str, Any]]:
        """Choice ``i``'s events: its safe new text as pieces arrive, then its finish."""
        full, sent, stopped = "", "", False
        for piece in pieces:
            full += piece
            text, stopped = trim_at_stop(full, prompt.stops)
            safe = text if stopped else text[: len(text) - held_back(text, prompt.stops)]
            if len(safe) > len(sent):
                yield choice(i, safe[len(sent):], None, prompt.tokenizer, req, "", offset=len(sent))
                sent = safe
            if stopped:
                break  # the rest of this choice is not wanted
            if time.monotonic() > deadline:
                raise ApiError(504, "the completion exceeded its deadline", code="timeout")
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # releases the connection of a stream left early
        text, stopped = trim_at_stop(full, prompt.stops)
        count = self._count(prompt, text)
        produced.append(count)
        finish = "length" if count >= prompt.max_tokens and not stopped else "stop"
        yield choice(i, text[len(sent):], finish, prompt.tokenizer, req, "", offset=len(sent))

    def _call(self, version: int, fn):
        """``fn(version)``; on "version unavailable" (unloaded mid-swap) once more on a fresh pointer."""
        try:
            return version, fn(version)
        except VersionUnavailable:
            self.observer.retry()
            fresh, _ = self.router.route(fresh=True)
            return fresh, fn(fresh)

    def _sampling(self, req: CompletionRequest, prompt: Prompt, i: int) -> dict[str, Any]:
        return sampling_parameters(max_tokens=prompt.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                   seed=req.seed + i, stop=prompt.stops,
                                   stop_token_ids=special_stop_ids(prompt.tokenizer, prompt.stops),
                                   lora_name=prompt.adapter)

    @staticmethod
    def _count(prompt: Prompt, text: str) -> int:
        return len(prompt.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _refuse_logprobs(req: CompletionRequest) -> None:
    if req.logprobs is not None:
        raise ApiError(400, "logprobs are not available from this model (it is served by the vLLM "
                            "backend, which RepoTune asks for text only); send the request without logprobs",
                       param="logprobs", code="logprobs_not_supported")


def _chain(first: str | None, rest: Iterator[str]) -> Iterator[str]:
    if first is not None:
        yield first
        yield from rest


def _cid() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _usage(prompt: Prompt, produced: list[int]) -> dict[str, int]:
    prompt_tokens = sum(len(r) for r in prompt.rows)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": sum(produced),
            "total_tokens": prompt_tokens + sum(produced)}
