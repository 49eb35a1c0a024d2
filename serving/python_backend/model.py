"""RepoTune's Triton python-backend model: any Hugging Face causal-LM checkpoint (CodeGen,
StarCoder2, Qwen2.5-Coder, DeepSeek-Coder, CodeLlama, CodeGemma) behind the FasterTransformer
GPT-J tensor interface.

Publishing copies this file into every version folder (``<model>/<version>/model.py``); the
checkpoint lies next to it in ``<model>/<version>/model/``. It runs inside Triton's python
stub, so it imports only what the serving environment has (numpy<2, torch, transformers) and
nothing from RepoTune.

Inputs (FasterTransformer GPT-J names; only the first two are required; batch first):
``input_ids`` UINT32 [B, L] (rows right-padded), ``input_lengths`` UINT32 [B, 1],
``request_output_len`` UINT32 [B, 1], ``runtime_top_k`` UINT32, ``runtime_top_p`` FP32,
``temperature`` FP32, ``repetition_penalty`` FP32, ``random_seed`` INT32/UINT64,
``is_return_log_probs`` BOOL, ``end_id`` UINT32, ``stop_words_list`` INT32 [B, 2, S]
(row 0: stop sequences' ids concatenated, row 1: cumulative end offsets padded with -1).
``beam_width``, ``len_penalty``, ``beam_search_diversity_rate``, ``start_id``, ``bad_words_list``
are accepted and ignored (no beam search here).

Outputs: ``output_ids`` [B, 1, L+T] (prompt then generated ids, padded with end_id),
``sequence_length`` [B, 1], ``cum_log_probs`` [B, 1], ``output_log_probs`` [B, 1, T].
Generation stops at EOS (not emitted), after a stop sequence (emitted, as FasterTransformer
does) or after ``request_output_len`` tokens. ``runtime_top_k == 1`` or ``temperature == 0``
means greedy.

Nothing here is specific to one architecture: the end id comes from the checkpoint's
``generation_config.json`` or ``config.json`` (the first of a list; a request's ``end_id`` wins),
position ids are computed from the attention mask (left padding), and the KV cache is passed
under whichever keyword the installed transformers takes (``cache`` in 5.x, ``past_key_values``
before). A FIM prompt is just input ids: the proxy builds it, and sends the family's sentinels
and end-of-text as ``stop_words_list``.

Dynamic batching: Triton hands ``execute`` every queued request at once; rows that share their
sampling parameters (and adapter) run through the model together (left-padded), one forward per
new token with a KV cache.

LoRA adapters (``serving.adapters``): an optional ``adapter`` input (BYTES [B, 1]) names an
adapter folder ``<model>/adapters/<name>/`` beside the version folders (Triton ignores
non-numeric folders). The base is loaded once, by this version; an adapter is read with
``peft`` on first use and kept in a least-recently-used set of ``max_adapters`` (config
parameter, default 8), so activating a new adapter version costs reading its few megabytes,
never a model load. Rows with no adapter (or an empty name) run on the bare base.

Device: where Triton gives the instance a GPU (``instance_group { kind: KIND_GPU }``, so
``args["model_instance_kind"] == "GPU"`` and ``args["model_instance_device_id"]``) and this
torch sees CUDA, the model and its adapters load on ``cuda:<id>`` in the configured ``dtype``
(default bf16 where the card has it, else fp16: fp32 on a GPU wastes half its memory and its
tensor cores); otherwise on the CPU in ``dtype`` (default fp32). :func:`choose_device` is that
decision as a pure function.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import numpy as np

try:  # only inside Triton
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets the pure helpers be imported for reading
    pb_utils = None

DEFAULT_OUTPUT_LEN = 16
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""``config.pbtxt`` parameter ``dtype`` values; default fp32 on the CPU (its kernels are
fp32-first), bf16 (or fp16 where the card lacks bf16) on a GPU."""
ADAPTERS_DIR = "adapters"
"""Adapter versions' folder inside the model folder (``<model>/adapters/<name>/``)."""
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What an adapter name may be: it becomes a folder name and a peft adapter name."""
DEFAULT_MAX_ADAPTERS = 8
DEVICE_LOG_PREFIX = "REPOTUNE-PYTHON-BACKEND-DEVICE"
"""Starts the line ``initialize`` prints (to Triton's log) naming the device and dtype it chose."""


def choose_device(kind: str | None, device_id: str | int | None, cuda_available: bool,
                  dtype: str | None, bf16_supported: bool = True) -> tuple[str, str]:
    """(torch device, torch dtype name) for one model instance.

    ``kind`` / ``device_id`` are Triton's ``model_instance_kind`` / ``model_instance_device_id``;
    ``dtype`` is the config parameter (``fp32``/``fp16``/``bf16`` or empty). A GPU instance on a
    torch without CUDA falls back to the CPU rather than failing the load: the CPU build of
    torch is what the embedded server ships.
    """
    if dtype and dtype not in DTYPES:
        raise ValueError(f"parameter dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if (kind or "").upper() == "GPU" and cuda_available:
        default = "bf16" if bf16_supported else "fp16"
        return f"cuda:{int(device_id or 0)}", DTYPES[dtype or default]
    return "cpu", DTYPES[dtype or "fp32"]


def _scalar_per_row(request, name: str, batch: int, default, dtype):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return np.full((batch,), default, dtype=dtype)
    values = tensor.as_numpy().reshape(batch, -1)[:, 0]
    return values.astype(dtype)


def parse_stop_words(array: np.ndarray | None, batch: int) -> list[list[list[int]]]:
    """Decode FasterTransformer's stop_words_list [B, 2, S] into token sequences per row."""
    rows: list[list[list[int]]] = [[] for _ in range(batch)]
    if array is None:
        return rows
    array = np.asarray(array).reshape(batch, 2, -1)
    for b in range(batch):
        ids, offsets = array[b, 0], array[b, 1]
        start = 0
        for end in offsets:
            end = int(end)
            if end < 0:
                break
            if end > start:
                rows[b].append([int(t) for t in ids[start:end]])
            start = end
    return rows


class TritonPythonModel:
    """The Triton python-backend entry point (one instance per loaded version)."""

    def initialize(self, args: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model_config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        threads = int(params.get("cpu_threads") or os.environ.get("REPOTUNE_TRITON_CPU_THREADS") or 1)
        torch.set_num_threads(max(1, threads))
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        checkpoint = version_dir / (params.get("model_dir") or "model")
        if not checkpoint.is_dir():
            raise RuntimeError(f"no Hugging Face checkpoint at {checkpoint}; publish an artifact with model/")
        cuda = torch.cuda.is_available()
        try:
            device, dtype = choose_device(args.get("model_instance_kind"), args.get("model_instance_device_id"),
                                          cuda, params.get("dtype"), cuda and torch.cuda.is_bf16_supported())
        except ValueError as exc:
            raise RuntimeError(str(exc)) from exc
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=getattr(torch, dtype))
        self.model.to(self.device)
        self.model.eval()
        # One line in Triton's log saying where this instance runs (benchmarks/gpu_check.py reads it).
        print(f"{DEVICE_LOG_PREFIX} model={args.get('model_name')} version={args['model_version']} "
              f"instance={args.get('model_instance_name')} device={self.device} dtype={dtype}", flush=True)
        cfg = self.model.config
        self.end_id = default_end_id(checkpoint, cfg)
        self.vocab_size = int(cfg.vocab_size)
        self.max_positions = int(getattr(cfg, "n_positions", 0) or getattr(cfg, "max_position_embeddings", 0)
                                 or 2048)
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache``.
        taken = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in taken else "past_key_values"
        self.output_dtypes = {
            out["name"]: pb_utils.triton_string_to_numpy(out["data_type"])
            for out in self.model_config.get("output", [])
        }
        self.adapters_dir = Path(args["model_repository"]) / ADAPTERS_DIR
        self.max_adapters = max(1, int(params.get("max_adapters") or DEFAULT_MAX_ADAPTERS))
        self.peft = None  # the PeftModel wrapping self.model, made on the first adapter
        self.loaded_adapters: OrderedDict[str, float] = OrderedDict()
        """peft adapter name → seconds its load took; least recently used first."""

    # -- adapters ------------------------------------------------------------------------------

    def _use_adapter(self, name: str | None):
        """A context in which ``self.model`` runs with adapter ``name`` (``None``: the bare base)."""
        if not name:
            return self.peft.disable_adapter() if self.peft is not None else nullcontext()
        key = f"a_{name}"
        if key in self.loaded_adapters:
            self.loaded_adapters.move_to_end(key)
        else:
            self._load_adapter(name, key)
        self.peft.set_adapter(key)
        return nullcontext()

    def _load_adapter(self, name: str, key: str) -> None:
        """Read adapter ``name`` from its folder (first use), evicting the least recently used."""
        from peft import PeftModel

        folder = self.adapters_dir / name
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(f"adapter {name!r} is not in {self.adapters_dir} (no adapter_config.json); "
                             "publish it with serving.adapters.AdapterRepository")
        started = time.perf_counter()
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(folder), adapter_name=key,
                                                      torch_device=str(self.device))
                self.peft.eval()
            else:
                self.peft.load_adapter(str(folder), adapter_name=key, torch_device=str(self.device))
        except Exception:
            # A half-read adapter (layers injected, weights not) must not stay behind.
            if self.peft is not None and key in self.peft.peft_config:
                try:
                    self.peft.delete_adapter(key)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            raise
        self.loaded_adapters[key] = time.perf_counter() - started
        while len(self.loaded_adapters) > self.max_adapters:
            old, _ = self.loaded_adapters.popitem(last=False)
            self.peft.delete_adapter(old)

    # -- request handling ---------------------------------------------------------------------

    def execute(self, requests: list) -> list:
        rows: list[dict] = []
        responses: list = [None] * len(requests)
        per_request: list[list[int]] = []
        for r_index, request in enumerate(requests):
            try:
                parsed = self._parse(request)
            except Exception as exc:  # a malformed request fails alone
                responses[r_index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}"))
                per_request.append([])
                continue
            start = len(rows)
            rows.extend(parsed)
            per_request.append(list(range(start, len(rows))))

        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row["key"], []).append(i)
        results: dict[int, dict] = {}
        errors: dict[int, str] = {}
        for members in groups.values():
            try:
                for i, res in zip(members, self._generate([rows[i] for i in members]), strict=True):
                    results[i] = res
            except Exception as exc:
                for i in members:
                    errors[i] = f"generation failed: {exc}"

        for r_index, members in enumerate(per_request):
            if responses[r_index] is not None:
                continue
            failed = [errors[i] for i in members if i in errors]
            if failed:
                responses[r_index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(failed[0]))
                continue
            responses[r_index] = self._response([rows[i] for i in members], [results[i] for i in members])
        return responses

    def _parse(self, request) -> list[dict]:
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
        ids = ids.reshape(ids.shape[0], -1) if ids.ndim > 1 else ids.reshape(1, -1)
        batch = ids.shape[0]
        lengths_t = pb_utils.get_input_tensor_by_name(request, "input_lengths")
        lengths = lengths_t.as_numpy().reshape(batch, -1)[:, 0] if lengths_t is not None else np.full(batch, ids.shape[1])
        out_len = _scalar_per_row(request, "request_output_len", batch, DEFAULT_OUTPUT_LEN, np.int64)
        top_k = _scalar_per_row(request, "runtime_top_k", batch, 1, np.int64)
        top_p = _scalar_per_row(request, "runtime_top_p", batch, 0.0, np.float32)
        temperature = _scalar_per_row(request, "temperature", batch, 1.0, np.float32)
        rep = _scalar_per_row(request, "repetition_penalty", batch, 1.0, np.float32)
        seed = _scalar_per_row(request, "random_seed", batch, 0, np.int64)
        end_id = _scalar_per_row(request, "end_id", batch, self.end_id, np.int64)
        stop_t = pb_utils.get_input_tensor_by_name(request, "stop_words_list")
        stops = parse_stop_words(stop_t.as_numpy() if stop_t is not None else None, batch)
        adapters = _adapter_names(pb_utils.get_input_tensor_by_name(request, "adapter"), batch)
        rows = []
        for b in range(batch):
            n = int(lengths[b])
            if n <= 0 or n > ids.shape[1]:
                raise ValueError(f"input_lengths[{b}]={n} but input_ids has {ids.shape[1]} columns")
            prompt = [int(t) for t in ids[b, :n]]
            if max(prompt) >= self.vocab_size:
                raise ValueError(f"token id {max(prompt)} is outside the vocabulary ({self.vocab_size})")
            new = max(0, int(out_len[b]))
            if n + new > self.max_positions:
                raise ValueError(f"{n} prompt tokens + {new} new tokens exceed the context window ({self.max_positions})")
            greedy = int(top_k[b]) == 1 or float(temperature[b]) <= 0.0
            key = ("greedy", float(rep[b]), int(end_id[b])) if greedy else (
                "sample", int(top_k[b]), float(top_p[b]), float(temperature[b]), float(rep[b]), int(seed[b]), int(end_id[b]))
            key = (adapters[b], *key)
            rows.append({"prompt": prompt, "new": new, "stops": stops[b], "key": key, "greedy": greedy,
                         "adapter": adapters[b],
                         "top_k": int(top_k[b]), "top_p": float(top_p[b]), "temperature": float(temperature[b]),
                         "rep": float(rep[b]), "seed": int(seed[b]), "end_id": int(end_id[b])})
        return rows

    def _generate(self, rows: list[dict]) -> list[dict]:
        torch = self.torch
        first = rows[0]
        batch = len(rows)
        end_id = first["end_id"]
        longest = max(len(r["prompt"]) for r in rows)
        ids = torch.full((batch, longest), end_id, dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding keeps every row's last token at the end
            ids[i, longest - len(r["prompt"]):] = torch.tensor(r["prompt"])
            mask[i, longest - len(r["prompt"]):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generator = None
        if not first["greedy"]:
            generator = torch.Generator(device=self.device).manual_seed(first["seed"])
        out_tokens: list[list[int]] = [[] for _ in rows]
        out_logps: list[list[float]] = [[] for _ in rows]
        done = [r["new"] == 0 for r in rows]
        past = None
        current, current_pos = ids, positions
        seen = ids.clone()
        with torch.inference_mode(), self._use_adapter(first["adapter"]):
            for _ in range(max(r["new"] for r in rows)):
                if all(done):
                    break
                out = self.model(input_ids=current, attention_mask=mask, position_ids=current_pos,
                                 use_cache=True, **({self.cache_kw: past} if past is not None else {}))
                past = getattr(out, self.cache_kw, None)
                logits = out.logits[:, -1, :].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                scores = self._process(logits, seen, mask, first)
                if first["greedy"]:
                    chosen = scores.argmax(dim=-1)
                else:
                    probs = torch.softmax(scores, dim=-1)
                    chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                picked = logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()
                tokens = chosen.tolist()  # one device-to-host copy per step, not one per row
                for i, r in enumerate(rows):
                    if done[i]:
                        continue
                    token = tokens[i]
                    if token == r["end_id"]:
                        done[i] = True
                        continue
                    out_tokens[i].append(token)
                    out_logps[i].append(float(picked[i]))
                    if len(out_tokens[i]) >= r["new"] or _ends_with_stop(out_tokens[i], r["stops"]):
                        done[i] = True
                current = chosen[:, None]
                current_pos = current_pos[:, -1:] + 1
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                seen = torch.cat([seen, current], dim=1)
        return [{"tokens": t, "logps": lp} for t, lp in zip(out_tokens, out_logps, strict=True)]

    def _process(self, logits, seen, mask, params: dict):
        """Repetition penalty, temperature, top-k, top-p: the logits a token is drawn from."""
        torch = self.torch
        scores = logits.clone()
        if params["rep"] and params["rep"] != 1.0:
            prev = seen.masked_fill(mask[:, : seen.shape[1]] == 0, 0)
            gathered = scores.gather(-1, prev)
            gathered = torch.where(gathered > 0, gathered / params["rep"], gathered * params["rep"])
            scores.scatter_(-1, prev, gathered)
        if params["greedy"]:
            return scores
        scores = scores / max(params["temperature"], 1e-5)
        k = params["top_k"]
        if k and k > 0 and k < scores.shape[-1]:
            kth = torch.topk(scores, k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        p = params["top_p"]
        if p and 0.0 < p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
            drop = cumulative > p
            drop[:, 1:] = drop[:, :-1].clone()
            drop[:, 0] = False
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return scores

    def _response(self, rows: list[dict], results: list[dict]):
        width = max(len(r["prompt"]) + len(res["tokens"]) for r, res in zip(rows, results, strict=True))
        gen_width = max(1, max(len(res["tokens"]) for res in results))
        batch = len(rows)
        output_ids = np.full((batch, 1, width), rows[0]["end_id"], dtype=np.int64)
        seq_len = np.zeros((batch, 1), dtype=np.int64)
        cum = np.zeros((batch, 1), dtype=np.float32)
        per_token = np.zeros((batch, 1, gen_width), dtype=np.float32)
        for i, (r, res) in enumerate(zip(rows, results, strict=True)):
            full = r["prompt"] + res["tokens"]
            output_ids[i, 0, : len(full)] = full
            seq_len[i, 0] = len(full)
            cum[i, 0] = float(np.sum(res["logps"], dtype=np.float64)) if res["logps"] else 0.0
            per_token[i, 0, : len(res["logps"])] = res["logps"]
        arrays = {"output_ids": output_ids, "sequence_length": seq_len,
                  "cum_log_probs": cum, "output_log_probs": per_token}
        tensors = [
            pb_utils.Tensor(name, value.astype(self.output_dtypes.get(name, value.dtype)))
            for name, value in arrays.items()
            if not self.output_dtypes or name in self.output_dtypes
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        self.model = None
        self.peft = None


def default_end_id(checkpoint: Path, cfg) -> int:
    """The end-of-text id a request without ``end_id`` stops on.

    ``generation_config.json`` first (where Qwen and Llama-family checkpoints keep it), then
    ``config.json``; a list (several end tokens) gives its first entry; none at all gives 0.
    """
    eos = None
    gen_path = checkpoint / "generation_config.json"
    if gen_path.is_file():
        eos = json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id")
    if eos is None:
        eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else 0


def _adapter_names(tensor, batch: int) -> list[str | None]:
    """The ``adapter`` input per row (BYTES [B, 1]); ``None`` where absent or empty."""
    if tensor is None:
        return [None] * batch
    values = tensor.as_numpy().reshape(batch, -1)[:, 0]
    names: list[str | None] = []
    for value in values:
        name = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if name and not ADAPTER_NAME.match(name):
            raise ValueError(f"adapter name {name!r} is not a folder name ([A-Za-z0-9_-], at most 64)")
        names.append(name or None)
    return names


def _ends_with_stop(tokens: list[int], stops: list[list[int]]) -> bool:
    return any(len(s) <= len(tokens) and tokens[-len(s):] == s for s in stops)
