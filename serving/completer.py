"""The completion pipeline without HTTP: parse → prepare (prompt building) → Triton → response.

:class:`Completer` is what :mod:`serving.proxy`'s routes call, one method per step:

- :meth:`Completer.parse` validates a request body into a :class:`CompletionRequest`;
- :meth:`Completer.prepare` finds the serving version, tokenizes the prompts and stop strings
  and checks the context window: a :class:`Prompt`;
- :meth:`Completer.complete` makes one Triton call and shapes a :class:`Completion`;
- :meth:`Completer.stream` generates in chunks and yields each chunk's event body.

Triton is reached through :class:`Generator`, the one method of
:class:`serving.client.TritonClient` the pipeline uses; a request whose version was unloaded
mid-swap is retried once on a freshly read pointer. A version served by Triton's vLLM backend
takes prompt text instead of token ids: ``complete`` and ``stream`` then hand the same prepared
prompt to :class:`serving.textgen.TextCompleter`. Counters (tokens generated, retries) go
to a :class:`CompletionObserver`, so the pipeline carries no metrics library.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from families import Family, FamilyError, detect_checkpoint_family, stop_tokens
from serving._files import checkpoint_dir, context_window
from serving._fitting import fit
from serving.canary import CanaryState, canary_of, routes_to_canary
from serving.client import Generation
from serving.completions import (
    ApiError,
    Completion,
    CompletionRequest,
    RequestLimits,
    choice,
    envelope,
    from_serving,
    held_back,
    parse_request,
    trim_at_stop,
)
from serving.errors import ServingError, VersionUnavailable
from serving.repository import POINTER_FILE, load_tokenizer
from serving.textgen import TextCompleter, speaks_text

log = logging.getLogger(__name__)

SUFFIX_HEADER = "X-RepoTune-Suffix"
"""Says that a request's suffix was ignored (a left-to-right family)."""
TRIMMED_HEADER = "X-RepoTune-Trimmed"
"""Says what was cut to fit the context window."""


class Generator(Protocol):
    """The Triton call the pipeline needs (:meth:`serving.client.TritonClient.generate`)."""

    def generate(self, input_ids: Sequence[Sequence[int]], output_len: int, *, top_k: int, top_p: float,
                 temperature: float, random_seed: int, stop_words: Sequence[Sequence[int]],
                 end_id: int | None, return_log_probs: bool, version: int | None,
                 **adapter: str) -> list[Generation]: ...


class VersionRouter:
    """Finds the serving version (pointer symlink, cached by the link's inode) and its tokenizer.

    An adapter model's pointer also names its serving ``adapter`` (:mod:`serving.adapters`):
    :meth:`route` returns both, read together. During a canary, a client in the canary's share
    gets the canary version (:mod:`serving.canary`)."""

    def __init__(self, model_repository: str | Path, model_name: str, default_context_window: int = 2048,
                 family: str | None = None) -> None:
        self.model_dir = Path(model_repository).resolve() / model_name
        self.default_context_window = default_context_window
        self.explicit_family = family
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._version: int | None = None
        self._canary: CanaryState | None = None
        self._adapter: str | None = None
        self._adapter_model = False
        self._tokenizers: dict[Any, Any] = {}
        self._families: dict[int, Family | None] = {}
        self._text: dict[int, bool] = {}

    def version(self, fresh: bool = False, client: str = "") -> int:
        """The version serving ``client`` (a telemetry client hash; empty: production), as
        :meth:`served` numbers it; 503 :class:`ApiError` when none serves."""
        return self.served(*self.route(fresh, client))

    def served(self, version: int, adapter: str | None) -> int:
        """The number a completion, telemetry and ``/v1/models`` give the version that served:
        the Triton version, or for an adapter model (:mod:`serving.adapters`) its adapter version,
        0 for the bare base. These are the numbers the model's repository, runs and rollback use."""
        if adapter is not None:
            return int(adapter)
        return 0 if self._adapter_model else version

    def route(self, fresh: bool = False, client: str = "") -> tuple[int, str | None]:
        """The (Triton version, adapter name or ``None``) serving ``client``, from one pointer read."""
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
                    pointer = json.loads(path.read_text())
                except (OSError, json.JSONDecodeError):
                    pointer = {}
                adapter = pointer.get("adapter")
                self._stamp, self._version, self._canary = stamp, pointer.get("version"), canary_of(pointer)
                self._adapter = str(adapter) if adapter is not None else None
                self._adapter_model = "adapter" in pointer
            if self._version is None:
                raise ApiError(503, "no model version is serving yet; deploy one with "
                                    "`repotune deploy <checkpoint>`", code="model_unavailable")
            if routes_to_canary(client, self._canary):
                if self._adapter_model:  # the candidate adapter, on the same loaded base
                    return int(self._version), str(self._canary.version)  # type: ignore[union-attr]
                return self._canary.version, None  # type: ignore[union-attr]
            return int(self._version), self._adapter

    def tokenizer(self, version: int, adapter: str | None = None) -> Any:
        """The version's tokenizer; an adapter's own (its folder's, the same as its base's)."""
        key = (version, adapter) if adapter else version
        with self._lock:
            tok = self._tokenizers.get(key)
        if tok is None:
            tok = load_tokenizer(self.model_dir / ("adapters/" + adapter if adapter else str(version)))
            with self._lock:
                self._tokenizers[key] = tok
                for old in [v for v in self._tokenizers if v != key][:-2]:
                    del self._tokenizers[old]  # keep a few, versions come and go
        return tok

    def speaks_text(self, version: int) -> bool:
        """True when the version takes prompt text (the vLLM backend), read once per version."""
        with self._lock:
            known = self._text.get(version)
        if known is None:
            known = speaks_text(self.model_dir / str(version))
            with self._lock:
                self._text[version] = known
        return known

    def context(self, version: int) -> int:
        return context_window(self.model_dir / str(version), self.default_context_window)

    def family(self, version: int) -> Family | None:
        """The version's model family (detected once from its checkpoint folder and tokenizer);
        ``None`` when it cannot be told, which serves it left-to-right."""
        with self._lock:
            if version in self._families:
                return self._families[version]
        ckpt = checkpoint_dir(self.model_dir / str(version))
        family = None
        try:
            if ckpt is not None or self.explicit_family:
                family = detect_checkpoint_family(ckpt or self.model_dir, explicit=self.explicit_family,
                                                  tokenizer=self.tokenizer(version))
        except FamilyError as exc:
            log.warning("version %s: %s; serving it left-to-right (suffixes are ignored)", version, exc)
        with self._lock:
            self._families[version] = family
        return family


@dataclass
class CompletionObserver:
    """Where the pipeline reports what it did (the proxy wires Prometheus counters here)."""

    tokens: Callable[[int], None] = lambda n: None
    """Called with the number of tokens each Triton call generated."""
    retry: Callable[[], None] = lambda: None
    """Called when a request is retried because its version was unloaded mid-swap."""


@dataclass(frozen=True)
class Prompt:
    """A request turned into Triton's terms on one version: the output of :meth:`Completer.prepare`."""

    version: int
    tokenizer: Any
    rows: list[list[int]]
    """Token ids per completion: each prompt repeated ``n`` times."""
    stop_ids: list[list[int]]
    end_id: int | None
    max_tokens: int = 16
    """The request's ``max_tokens``, clamped to what the window leaves."""
    stops: list[str] = field(default_factory=list)
    """Stop strings the text is cut at: the request's and the family's end markers."""
    headers: dict[str, str] = field(default_factory=dict)
    """Response headers saying what was changed (suffix ignored, context trimmed)."""
    adapter: str | None = None
    """The LoRA adapter applied on ``version`` (adapter models), else ``None``."""
    texts: list[str] = field(default_factory=list)
    """The prompt text per completion (as ``rows``): what a text model (vLLM) is sent."""
    text_protocol: bool = False
    """``version`` takes text, not token ids (:mod:`serving.textgen`)."""


@dataclass
class CompletionStream:
    """A started stream: the first chunk is already generated (so its failure was still a
    proper status), ``events`` yields one OpenAI chunk body (or error body) per event."""

    version: int
    """The version of the first chunk (sent as the response's version header)."""
    events: Iterator[dict[str, Any]]


@dataclass
class _StreamState:
    """Per-row progress of a stream between Triton calls."""

    version: int
    """The version the last chunk came from (a swap mid-stream moves it on)."""
    produced: list[list[int]]
    asked: list[int]
    sent: list[str] = field(default_factory=list)
    finished: list[str | None] = field(default_factory=list)
    log_probs: list[list[float]] = field(default_factory=list)
    reported: list[int] = field(default_factory=list)
    """Tokens per row whose logprobs were already sent."""


class Completer:
    """Completions against one model: validation, prompt building, Triton, response shaping."""

    def __init__(self, router: VersionRouter, triton: Generator, *, model_name: str, timeout_s: float = 30.0,
                 limits: RequestLimits | None = None, stream_chunk_tokens: int = 8,
                 strict_suffix: bool = False, strict_context: bool = False,
                 observer: CompletionObserver | None = None) -> None:
        self.router = router
        self.triton = triton
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.limits = limits or RequestLimits()
        self.stream_chunk_tokens = stream_chunk_tokens
        self.strict_suffix = strict_suffix
        self.strict_context = strict_context
        self.observer = observer or CompletionObserver()
        self._texts = TextCompleter(router, triton, model_name=model_name, timeout_s=timeout_s,  # type: ignore[arg-type]
                                    observer=self.observer)

    def parse(self, body: Any) -> CompletionRequest:
        """Validate a request body (400 :class:`ApiError` naming the parameter)."""
        return parse_request(body, self.limits)

    def prepare(self, req: CompletionRequest, *, infill: bool = False, client: str = "") -> Prompt:
        """Serving version (``client``'s, during a canary), the model's prompts (FIM where the family has it and the request has
        a suffix, or always for ``infill``), fitted into the window, and the stop strings."""
        version, adapter = self.router.route(client=client)
        try:
            tok = self.router.tokenizer(version, adapter) if adapter else self.router.tokenizer(version)
        except (OSError, ServingError) as exc:
            raise ApiError(503, f"cannot load the tokenizer of version {version}: {exc}",
                           code="model_unavailable") from exc
        family = self.router.family(version)
        fim = bool(family is not None and family.has_fim and (req.suffix or infill))
        headers: dict[str, str] = {}
        if req.suffix and not fim:
            name = family.name if family is not None else "this model"
            why = f"{name} has no fill-in-the-middle"
            if self.strict_suffix:
                raise ApiError(400, f"suffix is not supported: {why}; send the prefix alone",
                               param="suffix", code="suffix_not_supported")
            headers[SUFFIX_HEADER] = f"ignored ({why})"
        ctx = self.router.context(version)
        fitted = [fit(tok, family, p, req.suffix, req.extra, fim=fim, max_tokens=req.max_tokens, window=ctx,
                      strict=self.strict_context) for p in req.prompts]
        rows = [f.ids for f in fitted for _ in range(req.n)]
        max_tokens = min(f.max_tokens for f in fitted)
        cut_p, cut_s = sum(f.trimmed_prefix for f in fitted), sum(f.trimmed_suffix for f in fitted)
        dropped = sum(f.dropped_extra for f in fitted)
        if cut_p or cut_s or dropped or max_tokens != req.max_tokens:
            headers[TRIMMED_HEADER] = (f"prefix={cut_p} suffix={cut_s} extra={dropped} "
                                       f"max_tokens={req.max_tokens}->{max_tokens}")
        stops = list(req.stop) + [s for s in (stop_tokens(family) if family else ()) if s not in req.stop]
        stop_ids = [ids for ids in (tok(s, add_special_tokens=False)["input_ids"] for s in stops) if ids]
        return Prompt(version, tok, rows, stop_ids, tok.eos_token_id, max_tokens, stops, headers, adapter,
                      texts=[f.text for f in fitted for _ in range(req.n)],
                      text_protocol=self.router.speaks_text(version))

    def complete(self, req: CompletionRequest, prompt: Prompt) -> Completion:
        """One Triton call for every row; choices cut at the stop strings, usage counted."""
        if prompt.text_protocol:
            return self._texts.complete(req, prompt)
        version, gens = self._generate(prompt.version, prompt.rows, prompt.max_tokens, req, prompt)
        tok = prompt.tokenizer
        choices, completion_tokens, stopped_at = [], 0, []
        for i, gen in enumerate(gens):
            text, stopped = trim_at_stop(tok.decode(gen.tokens, skip_special_tokens=True), prompt.stops)
            stopped_at.append(stopped)
            finish = "stop" if stopped or len(gen.tokens) < prompt.max_tokens else "length"
            completion_tokens += len(gen.tokens)
            choices.append(choice(i, text, finish, tok, req, req.prompts[i // req.n], tokens=gen.tokens,
                                  log_probs=gen.log_probs))
        self.observer.tokens(completion_tokens)
        usage = _usage(prompt, [g.tokens for g in gens])
        served = self.router.served(version, prompt.adapter)
        body = envelope(self.model_name, served, choices, usage, _completion_id(), int(time.time()))
        return Completion(version=served, body=body, completion_tokens=completion_tokens,
                          stopped_at=tuple(stopped_at))

    def stream(self, req: CompletionRequest, prompt: Prompt, started: float | None = None) -> CompletionStream:
        """Generate in chunks of ``stream_chunk_tokens``; the first before returning.

        ``started`` (``time.monotonic()``) is when the request arrived: the deadline
        ``timeout_s`` covers all chunks together.
        """
        if prompt.text_protocol:
            return self._texts.stream(req, prompt, started)
        deadline = (time.monotonic() if started is None else started) + self.timeout_s
        first_n = min(max(1, self.stream_chunk_tokens), prompt.max_tokens)
        # The first chunk runs before the response starts: failures still get a real status.
        version, first = self._generate(prompt.version, prompt.rows, first_n, req, prompt)
        return CompletionStream(self.router.served(version, prompt.adapter),
                                self._events(req, prompt, version, first, first_n, deadline))

    # ------------------------------------------------------------------ internals

    def _generate(self, version: int, rows: list[list[int]], n_new: int, req: CompletionRequest,
                  prompt: Prompt, seed_offset: int = 0) -> tuple[int, list[Generation]]:
        """One Triton call on ``version``; on "version unavailable", once more on a fresh pointer."""
        kwargs = dict(top_k=1 if req.temperature == 0 else 0, top_p=req.top_p if req.top_p < 1 else 0.0,
                      temperature=req.temperature, random_seed=req.seed + seed_offset,
                      stop_words=prompt.stop_ids, end_id=prompt.end_id, return_log_probs=req.logprobs is not None)
        adapter = {"adapter": prompt.adapter} if prompt.adapter else {}
        try:
            return version, self.triton.generate(rows, n_new, version=version, **adapter, **kwargs)
        except VersionUnavailable:
            self.observer.retry()
            fresh, name = self.router.route(fresh=True)
            adapter = {"adapter": name} if name else {}
            return fresh, self.triton.generate(rows, n_new, version=fresh, **adapter, **kwargs)

    def _events(self, req: CompletionRequest, prompt: Prompt, version: int, first: list[Generation],
                first_n: int, deadline: float) -> Iterator[dict[str, Any]]:
        """Event bodies: each row's new safe text per chunk, then more chunks until every row ends."""
        n_rows = len(prompt.rows)
        state = _StreamState(version=version, produced=[list(g.tokens) for g in first], asked=[first_n] * n_rows,
                             sent=[""] * n_rows, finished=[None] * n_rows,
                             log_probs=[list(g.log_probs) for g in first], reported=[0] * n_rows)
        cid, created = _completion_id(), int(time.time())
        if req.echo:
            for i in range(n_rows):
                c = choice(i, "", None, prompt.tokenizer, req, req.prompts[i // req.n])
                yield envelope(self.model_name, self.router.served(state.version, prompt.adapter), [c], None, cid, created)
        pending, step = first, 0
        while True:
            for c in self._deltas(req, prompt, state, pending):
                yield envelope(self.model_name, self.router.served(state.version, prompt.adapter), [c], None, cid, created)
            if all(f is not None for f in state.finished):
                if req.include_usage:  # OpenAI's last chunk: usage and no choices
                    yield envelope(self.model_name, self.router.served(state.version, prompt.adapter), [], _usage(prompt, state.produced), cid, created)
                return
            if time.monotonic() > deadline:
                yield ApiError(504, "the completion exceeded its deadline", code="timeout").body()
                return
            step += 1
            try:
                pending = self._next_chunk(req, prompt, state, step)
            except ServingError as exc:
                yield from_serving(exc).body()
                return

    def _deltas(self, req: CompletionRequest, prompt: Prompt, state: _StreamState,
                pending: list[Generation]) -> Iterator[dict[str, Any]]:
        """The choice of each unfinished row whose safe text grew or which just ended.

        Text that may be the start of a stop string, or half a UTF-8 character, is held back
        until the next chunk decides it.
        """
        for i, gen in enumerate(pending):
            if state.finished[i] is not None:
                continue
            text = prompt.tokenizer.decode(state.produced[i], skip_special_tokens=True)
            text, stopped = trim_at_stop(text, prompt.stops)
            short = len(gen.tokens) < state.asked[i]
            ended = stopped or short or len(state.produced[i]) >= prompt.max_tokens
            safe = text if ended else text[: len(text) - held_back(text, prompt.stops)]
            if not ended and safe.endswith("\ufffd"):
                safe = safe.rstrip("\ufffd")  # half a UTF-8 character: wait for the rest
            delta = safe[len(state.sent[i]):] if safe.startswith(state.sent[i]) else ""
            if ended:
                state.finished[i] = "stop" if (stopped or short) else "length"
            if delta or ended:
                new_tokens = state.produced[i][state.reported[i]:]
                new_lps = state.log_probs[i][state.reported[i]:]
                offset = len(state.sent[i])
                state.sent[i] += delta
                state.reported[i] = len(state.produced[i])
                yield choice(i, delta, state.finished[i], prompt.tokenizer, req, "", tokens=new_tokens,
                             log_probs=new_lps, offset=offset)

    def _next_chunk(self, req: CompletionRequest, prompt: Prompt, state: _StreamState,
                    step: int) -> list[Generation]:
        """One more Triton call for the unfinished rows (prompt + what they produced so far)."""
        todo = [i for i, f in enumerate(state.finished) if f is None]
        n_new = min(max(1, self.stream_chunk_tokens),
                    min(prompt.max_tokens - len(state.produced[i]) for i in todo))
        state.version, more = self._generate(state.version, [prompt.rows[i] + state.produced[i] for i in todo],
                                              n_new, req, prompt, seed_offset=step)
        pending = [Generation(tokens=[]) for _ in prompt.rows]
        for i, gen in zip(todo, more, strict=True):
            state.produced[i].extend(gen.tokens)
            state.log_probs[i].extend(gen.log_probs)
            state.asked[i] = n_new
            pending[i] = gen
        self.observer.tokens(sum(len(g.tokens) for g in more))
        return pending


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _usage(prompt: Prompt, produced: list[list[int]]) -> dict[str, int]:
    prompt_tokens = sum(len(r) for r in prompt.rows)
    completion_tokens = sum(len(t) for t in produced)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
