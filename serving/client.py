"""The one seam between RepoTune and Triton: a small typed client over ``tritonclient.http``.

It speaks the FasterTransformer GPT-J tensors, so the same calls drive the FasterTransformer
backend in production and RepoTune's python-backend model on CPU. Every tritonclient or socket
error is translated here into :mod:`serving.errors` (chained with ``from``), so callers catch
RepoTune's errors only.

Transport: ``tritonclient.http`` encodes and decodes the KServe v2 binary bodies
(``generate_request_body`` / ``parse_response_body``), and a thread-safe urllib3 pool carries
them. (tritonclient's own geventhttpclient transport needs one client — and one gevent hub with
its pipes — per thread; under a thread-per-request WSGI server that leaks file descriptors until
the process runs out.)

One connection per request (``Connection: close``), never a kept-alive one: Triton's HTTP
server pins each connection to one of its worker threads and runs a model load (seconds to
minutes) on the worker that received it, so every request on a kept-alive connection pinned to
that worker waits for the whole load — during a hot swap that stalled a share of the proxy's
requests for the full load time (and past their deadline on a busy machine). A new connection
is handed to a free worker. Measured on localhost the extra connect costs well under 1 ms.

Text models (Triton's vLLM backend: ``text_input`` in, ``text_output`` out, decoupled) are
reached through Triton's HTTP generate extension instead of ``infer``, which refuses decoupled
models: :meth:`TritonClient.generate_text` (``POST .../generate``, one JSON answer) and
:meth:`TritonClient.stream_text` (``POST .../generate_stream``, Server-Sent Events). The body is
``{"text_input", "sampling_parameters", "exclude_input_in_output", "stream"}``: the generate
extension passes fields named like model inputs as those tensors, and the backend reads
``sampling_parameters`` (a JSON string) before the request's parameters, whose values may not
be lists (stop strings are).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import (
    InferenceFailed,
    ModelLoadFailed,
    ServingError,
    TritonTimeout,
    TritonUnavailable,
    VersionUnavailable,
)


@dataclass(frozen=True)
class Generation:
    """What one prompt row produced."""

    tokens: list[int]
    """Newly generated token ids (prompt excluded)."""
    log_probs: list[float] = field(default_factory=list)
    """Per-token log probabilities of ``tokens`` (empty unless asked for)."""
    cum_log_prob: float = 0.0
    """Sum of ``log_probs`` as the backend reports it (NaN reveals a broken model)."""
    version: int | None = None
    """The model version that answered, when the request named one."""


def encode_stop_words(stop_sequences: Sequence[Sequence[int]], batch: int) -> np.ndarray:
    """FasterTransformer's ``stop_words_list`` [batch, 2, S]: row 0 the sequences' ids
    concatenated (zero padded), row 1 their cumulative end offsets (padded with -1)."""
    flat: list[int] = []
    offsets: list[int] = []
    for seq in stop_sequences:
        if not seq:
            continue
        flat.extend(int(t) for t in seq)
        offsets.append(len(flat))
    width = max(1, len(flat))
    out = np.zeros((batch, 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    out[:, 0, : len(flat)] = flat
    out[:, 1, : len(offsets)] = offsets
    return out


def _status_error(status: int, message: str, what: str, model: str, version: int | None) -> ServingError:
    """Map a non-200 Triton answer to the most specific :mod:`serving.errors` class."""
    lowered = message.lower()
    if ("unknown model" in lowered or "not at ready state" in lowered or "is not found" in lowered
            or "unavailable" in lowered):
        where = f"{model} version {version}" if version is not None else model
        return VersionUnavailable(f"{what}: {where} is not loaded ({message})")
    if status in (502, 503):
        return TritonUnavailable(f"{what}: Triton is not ready (HTTP {status}: {message})")
    return InferenceFailed(f"{what}: Triton returned HTTP {status}: {message}")


class TritonClient:
    """Typed access to one model on one Triton server (``host:port`` of its HTTP endpoint).

    ``timeout_s`` bounds every inference call; ``admin_timeout_s`` bounds model loads,
    which can take minutes for a large checkpoint. Safe to share between threads.
    """

    def __init__(self, url: str, model_name: str, *, timeout_s: float = 30.0,
                 admin_timeout_s: float = 600.0, pool_size: int = 32) -> None:
        import urllib3

        self.url = url.removeprefix("http://").rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.admin_timeout_s = admin_timeout_s
        self._pool = urllib3.PoolManager(maxsize=pool_size, block=False, retries=False)
        self._declared: dict[str, str] | None = None

    def _path(self, version: int | None, suffix: str = "") -> str:
        base = f"http://{self.url}/v2/models/{self.model_name}"
        if version is not None:
            base += f"/versions/{int(version)}"
        return base + suffix

    def _request(self, method: str, url: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None, admin: bool = False, what: str,
                 version: int | None = None):
        """One HTTP exchange; transport failures become :mod:`serving.errors`."""
        import urllib3

        timeout = self.admin_timeout_s if admin else self.timeout_s
        headers = {**(headers or {}), "Connection": "close"}  # see the module docstring
        try:
            return self._pool.request(method, url, body=body, headers=headers,
                                      timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout))
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError) as exc:
            # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
            raise TritonUnavailable(f"{what}: cannot reach Triton at {self.url} ({exc}); is it running?") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise TritonTimeout(f"{what}: Triton did not answer within {timeout:.0f}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TritonUnavailable(f"{what}: cannot reach Triton at {self.url} ({exc}); is it running?") from exc

    @staticmethod
    def _error_text(resp) -> str:
        try:
            return str(json.loads(resp.data).get("error", resp.data[:500]))
        except (ValueError, AttributeError):
            return resp.data[:500].decode(errors="replace")

    # -- health and model control -------------------------------------------------------------

    def live(self) -> bool:
        """True if the server answers and reports live."""
        try:
            return self._request("GET", f"http://{self.url}/v2/health/live", what="health").status == 200
        except ServingError:
            return False

    def model_ready(self, version: int | None = None) -> bool:
        """True if the model (or that exact version) is loaded and ready."""
        try:
            return self._request("GET", self._path(version, "/ready"), what="readiness").status == 200
        except ServingError:
            return False

    def load(self, config: dict | None = None) -> None:
        """(Re)load the model, with ``config`` (a ModelConfig as JSON dict) overriding
        ``config.pbtxt``; raises :class:`ModelLoadFailed` with Triton's reason."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else {}
        what = f"loading model {self.model_name!r}"
        resp = self._request("POST", f"http://{self.url}/v2/repository/models/{self.model_name}/load",
                             body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                             admin=True, what=what)
        if resp.status != 200:
            raise ModelLoadFailed(f"Triton refused to load {self.model_name!r}: {self._error_text(resp)}")
        self._declared = None

    def unload(self) -> None:
        """Unload every version of the model."""
        resp = self._request("POST", f"http://{self.url}/v2/repository/models/{self.model_name}/unload",
                             body=b"{}", headers={"Content-Type": "application/json"}, admin=True,
                             what=f"unloading {self.model_name!r}")
        if resp.status != 200:
            raise InferenceFailed(f"unloading {self.model_name!r} failed: {self._error_text(resp)}")

    def statistics(self, version: int | None = None) -> dict:
        """Triton's inference statistics for the model (or one version)."""
        resp = self._request("GET", self._path(version, "/stats"), what="reading statistics")
        if resp.status != 200:
            raise _status_error(resp.status, self._error_text(resp), "reading statistics",
                                self.model_name, version)
        return json.loads(resp.data)

    # -- inference ----------------------------------------------------------------------------

    def generate(
        self,
        input_ids: Sequence[int] | Sequence[Sequence[int]],
        output_len: int,
        *,
        top_k: int = 1,
        top_p: float = 0.0,
        temperature: float = 1.0,
        repetition_penalty: float = 1.0,
        random_seed: int = 0,
        stop_words: Sequence[Sequence[int]] = (),
        end_id: int | None = None,
        return_log_probs: bool = False,
        version: int | None = None,
        adapter: str | None = None,
    ) -> list[Generation]:
        """Complete one prompt (a list of ids) or a batch (list of lists); one
        :class:`Generation` per row. ``top_k=1`` or ``temperature=0`` is greedy.

        ``adapter`` names a LoRA adapter the model applies to every row (see
        :mod:`serving.adapters`); a model that does not declare the ``adapter`` input refuses
        it rather than quietly answering with its base."""
        import tritonclient.http as httpclient

        rows = [list(input_ids)] if input_ids and isinstance(input_ids[0], int) else [list(r) for r in input_ids]
        if not rows or any(not r for r in rows):
            raise InferenceFailed("generate needs at least one non-empty prompt row")
        tensors = _request_tensors(rows, output_len, top_k=top_k, top_p=top_p, temperature=temperature,
                                   repetition_penalty=repetition_penalty, random_seed=random_seed,
                                   stop_words=stop_words, end_id=end_id, return_log_probs=return_log_probs)
        declared = self._input_types(version)
        if adapter:
            if declared and "adapter" not in declared:
                raise InferenceFailed(f"{self.model_name!r} takes no adapter input, so adapter {adapter!r} "
                                      "cannot be applied; serve adapters with serving.adapters.AdapterRepository")
            tensors["adapter"] = np.array([[adapter.encode()]] * len(rows), dtype=object)
        inputs = []
        for name, value in tensors.items():
            if declared and name not in declared:
                continue  # this deployment's config does not declare it (e.g. end_id)
            dtype = declared.get(name) or _triton_dtype(value)
            if dtype != _triton_dtype(value):
                value = value.astype(_NUMPY[dtype])
            tensor = httpclient.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        wanted = ["output_ids", "sequence_length"]
        if return_log_probs:
            wanted += ["cum_log_probs", "output_log_probs"]
        outputs = [httpclient.InferRequestedOutput(n) for n in wanted]
        what = (f"completing with {self.model_name!r}" + (f" version {version}" if version else "")
                + (f" adapter {adapter}" if adapter else ""))
        body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        headers = {"Content-Type": "application/octet-stream"}
        if json_size is not None:
            headers["Inference-Header-Content-Length"] = str(json_size)
        resp = self._request("POST", self._path(version, "/infer"), body=body, headers=headers,
                             what=what, version=version)
        if resp.status != 200:
            self._declared = None  # the next version may declare other inputs
            raise _status_error(resp.status, self._error_text(resp), what, self.model_name, version)
        result = httpclient.InferenceServerClient.parse_response_body(
            resp.data, header_length=resp.headers.get("Inference-Header-Content-Length"))
        return _generations(result, rows, return_log_probs, version)


    def generate_text(self, text: str, sampling: dict[str, Any], *, version: int | None = None) -> str:
        """Complete ``text`` on a text model; the completion alone (prompt excluded).

        ``sampling`` is the vLLM ``SamplingParams`` object (:func:`serving.textgen.sampling_parameters`)."""
        what = f"completing with {self.model_name!r}" + (f" version {version}" if version else "")
        resp = self._request("POST", self._path(version, "/generate"), body=_text_body(text, sampling, False),
                             headers={"Content-Type": "application/json"}, what=what, version=version)
        if resp.status != 200:
            raise _status_error(resp.status, self._error_text(resp), what, self.model_name, version)
        try:
            return str(json.loads(resp.data)["text_output"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InferenceFailed(f"{what}: Triton's generate answer has no text_output ({resp.data[:300]!r})") from exc

    def stream_text(self, text: str, sampling: dict[str, Any], *, version: int | None = None) -> Iterator[str]:
        """Complete ``text`` on a text model, yielding each new piece of the completion as the
        backend sends it (``generate_stream``). The request is sent before the first ``next``
        returns; an error object in the event stream raises :class:`InferenceFailed`."""
        import urllib3

        what = f"streaming from {self.model_name!r}" + (f" version {version}" if version else "")
        try:
            resp = self._pool.request(
                "POST", self._path(version, "/generate_stream"), body=_text_body(text, sampling, True),
                headers={"Content-Type": "application/json", "Connection": "close"}, preload_content=False,
                timeout=urllib3.Timeout(connect=min(self.timeout_s, 10.0), read=self.timeout_s))
        except urllib3.exceptions.TimeoutError as exc:
            raise TritonTimeout(f"{what}: Triton did not answer within {self.timeout_s:.0f}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TritonUnavailable(f"{what}: cannot reach Triton at {self.url} ({exc}); is it running?") from exc
        try:
            if resp.status != 200:
                resp.read()
                raise _status_error(resp.status, self._error_text(resp), what, self.model_name, version)
            for event in _sse_events(resp):
                if "error" in event:
                    raise InferenceFailed(f"{what}: the backend failed mid-stream: {event['error']}")
                if event.get("text_output"):
                    yield str(event["text_output"])
        except urllib3.exceptions.TimeoutError as exc:
            raise TritonTimeout(f"{what}: no event within {self.timeout_s:.0f}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TritonUnavailable(f"{what}: the stream from Triton broke off ({exc})") from exc
        finally:
            resp.release_conn()

    def _input_types(self, version: int | None) -> dict[str, str]:
        """Input name → Triton dtype as the model declares it (``random_seed`` is INT32 in
        FasterTransformer backend v1.1 and UINT64 later); read once, then cached."""
        if self._declared is None:
            what = "reading model metadata"
            resp = self._request("GET", self._path(version), what=what, version=version)
            if resp.status != 200:
                raise _status_error(resp.status, self._error_text(resp), what, self.model_name, version)
            meta = json.loads(resp.data)
            self._declared = {i["name"]: i["datatype"] for i in meta.get("inputs", [])}
        return self._declared


_NUMPY = {"UINT32": np.uint32, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64,
          "INT64": np.int64, "BOOL": bool, "BYTES": object}


def _text_body(text: str, sampling: dict[str, Any], stream: bool) -> bytes:
    """A generate-extension request for the vLLM backend's tensors."""
    return json.dumps({"text_input": text, "sampling_parameters": json.dumps(sampling),
                       "exclude_input_in_output": True, "stream": stream}).encode()


def _sse_events(resp) -> Iterator[dict[str, Any]]:
    """The JSON objects of a Server-Sent Events body (``data: {...}`` lines, blank-line separated)."""
    buffer = b""
    for chunk in resp.stream(4096):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            yield from _sse_block(block)
    if buffer.strip():
        yield from _sse_block(buffer)


def _sse_block(block: bytes) -> Iterator[dict[str, Any]]:
    data = b"\n".join(line[5:].strip() for line in block.splitlines() if line.startswith(b"data:"))
    if data:
        try:
            yield json.loads(data)
        except ValueError as exc:
            raise InferenceFailed(f"Triton's generate_stream sent an event that is not JSON: {data[:300]!r}") from exc


def _request_tensors(rows: list[list[int]], output_len: int, *, top_k: int, top_p: float, temperature: float,
                     repetition_penalty: float, random_seed: int, stop_words: Sequence[Sequence[int]],
                     end_id: int | None, return_log_probs: bool) -> dict[str, np.ndarray]:
    """The FasterTransformer GPT-J input tensors of one batch (prompts right-padded with 0)."""
    batch = len(rows)
    ids = np.zeros((batch, max(len(r) for r in rows)), dtype=np.uint32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    tensors: dict[str, np.ndarray] = {
        "input_ids": ids,
        "input_lengths": np.array([[len(r)] for r in rows], dtype=np.uint32),
        "request_output_len": np.full((batch, 1), output_len, dtype=np.uint32),
        "runtime_top_k": np.full((batch, 1), top_k, dtype=np.uint32),
        "runtime_top_p": np.full((batch, 1), top_p, dtype=np.float32),
        "temperature": np.full((batch, 1), temperature, dtype=np.float32),
        "repetition_penalty": np.full((batch, 1), repetition_penalty, dtype=np.float32),
        "random_seed": np.full((batch, 1), random_seed, dtype=np.uint64),
        "is_return_log_probs": np.full((batch, 1), return_log_probs, dtype=bool),
    }
    if end_id is not None:
        tensors["end_id"] = np.full((batch, 1), end_id, dtype=np.uint32)
    if stop_words:
        tensors["stop_words_list"] = encode_stop_words(stop_words, batch)
    return tensors


def _generations(result: Any, rows: list[list[int]], return_log_probs: bool,
                 version: int | None) -> list[Generation]:
    """One :class:`Generation` per row of an inference result (tokens after the prompt)."""
    batch = len(rows)
    out_ids = result.as_numpy("output_ids").reshape(batch, -1)
    seq_len = result.as_numpy("sequence_length").reshape(batch, -1)[:, 0]
    cum = result.as_numpy("cum_log_probs") if return_log_probs else None
    per_tok = result.as_numpy("output_log_probs") if return_log_probs else None
    gens = []
    for i, r in enumerate(rows):
        tokens = [int(t) for t in out_ids[i, len(r): int(seq_len[i])]]
        lps: list[float] = []
        cum_lp = 0.0
        if cum is not None and per_tok is not None:
            cum_lp = float(cum.reshape(batch, -1)[i, 0])
            lps = [float(x) for x in per_tok.reshape(batch, -1)[i, : len(tokens)]]
        gens.append(Generation(tokens=tokens, log_probs=lps, cum_log_prob=cum_lp, version=version))
    return gens


def _triton_dtype(value: np.ndarray) -> str:
    return {np.dtype(np.uint32): "UINT32", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32",
            np.dtype(np.uint64): "UINT64", np.dtype(bool): "BOOL", np.dtype(object): "BYTES"}[value.dtype]
