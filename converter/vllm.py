"""A Triton model folder for Triton's vLLM backend (GPU serving of the modern families).

Triton's vLLM backend (``triton-inference-server/vllm_backend``) is a python-based backend: the
model's ``config.pbtxt`` names ``backend: "vllm"``, and each version folder holds ``model.json``,
a JSON object handed as keyword arguments to vLLM's ``AsyncEngineArgs``, plus, when
``enable_lora`` is true, ``multi_lora.json`` mapping each LoRA name a request may ask for
(``"lora_name"`` in its sampling parameters) to an adapter folder. What :func:`write_vllm_model`
writes under ``out``::

    out/config.pbtxt             backend "vllm", KIND_MODEL, decoupled, the documented tensors
    out/artifact.json            what was converted (backend "vllm", family, max_model_len ...)
    out/1/model.json             vLLM engine arguments (paths as Triton will see them)
    out/1/multi_lora.json        adapter name -> folder, only with adapters
    out/1/model/                 the base checkpoint: weights, config.json, tokenizer
    out/1/adapters/<name>/       peft adapter files (+ RepoTune's manifest), only with adapters
    out/1/artifact.json, config.pbtxt   copies, so ``out/1`` is itself a publishable artifact

Copied as ``<repository>/<model_name>/`` it is a complete Triton model. ``repotune deploy``
instead publishes ``out/1`` as the next numbered version through
:class:`serving.repository.ModelRepository`, then :func:`pin_version` rewrites the paths in
``model.json`` / ``multi_lora.json`` to that version's folder before its first load: vLLM opens
the paths it is given, and the number is only known once the version is published (the same
reason the FasterTransformer path has ``with_checkpoint_version``).

Nothing here needs vLLM or a GPU: the files are checked against the names below, which were read
from the backend's documentation and vLLM's source (the ``search`` corpus; see each constant).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter._checkpoint import TensorReader, copy_tokenizer, read_config, token_ids, weight_files
from converter.errors import CheckpointError, ConversionError
from converter.triton_config import TensorSpec, _tensor, _to_text
from durable import write_atomic, write_json_atomic

ENGINE_ARGS_FILE = "model.json"
"""Read by the vLLM backend from the version folder (``_VLLM_ENGINE_ARGS_FILENAME``)."""
MULTI_LORA_FILE = "multi_lora.json"
"""Read from the version folder when ``enable_lora`` is true (``_MULTI_LORA_ARGS_FILENAME``)."""
VERSION_DIR = "1"
"""The version folder inside the written model folder."""

ENGINE_ARG_NAMES: frozenset[str] = frozenset({
    "model", "tokenizer", "served_model_name", "dtype", "seed", "max_model_len",
    "tensor_parallel_size", "gpu_memory_utilization", "max_num_seqs", "enforce_eager",
    "disable_log_stats", "trust_remote_code", "enable_prefix_caching",
    "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras",
})
"""The ``EngineArgs`` field names RepoTune may write into ``model.json``. Source: the
``EngineArgs`` dataclass in ``vllm/engine/arg_utils.py`` (vllm-project/vllm, read at commit
001999d2f360, the 0.7 line), all of which still exist in later releases; the vLLM backend
README says model.json "is fed to vLLM's AsyncLLMEngine" (``AsyncEngineArgs(**model_json)``).
A name outside this set is a bug here, not a setting: vLLM would refuse it at load time."""

VLLM_DTYPES: tuple[str, ...] = ("auto", "half", "float16", "bfloat16", "float", "float32")
"""``--dtype`` choices of the same ``arg_utils.py``."""

LORA_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
"""``max_lora_rank`` values ``LoRAConfig.__post_init__`` accepts (vLLM 0.5–0.7 allow up to 256,
newer releases add 320 and 512; releases before 0.5 only up to 64)."""

VLLM_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", "STRING", (1,)),
    TensorSpec("stream", "BOOL", (1,), optional=True),
    TensorSpec("sampling_parameters", "STRING", (1,), optional=True),
    TensorSpec("exclude_input_in_output", "BOOL", (1,), optional=True),
)
"""Inputs as the backend's ``auto_complete_config`` declares them (``src/model.py``); it adds
its optional extras (``return_*``, ``image``) itself."""
VLLM_OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec("text_output", "STRING", (-1,)),)


@dataclass(frozen=True)
class VllmOptions:
    """Engine settings written into ``model.json``."""

    dtype: str = "auto"
    """vLLM ``dtype`` (one of :data:`VLLM_DTYPES`); ``auto``: fp16 for fp32/fp16 weights, bf16 for bf16."""
    gpu_memory_utilization: float = 0.9
    """Share of the GPU's memory vLLM takes (weights + KV cache); lower it to share the card."""
    tensor_parallel: int = 1
    """GPUs one engine spans (``tensor_parallel_size``)."""
    max_model_len: int | None = None
    """Context length; default: the checkpoint's ``max_position_embeddings`` (or ``n_positions``)."""
    model_mount: str = "/model"
    """Where Triton sees the model repository (paths in ``model.json`` start there); ``/model``
    as FauxPilot's compose file mounts it, like the FasterTransformer path."""


def vllm_config(model_name: str) -> str:
    """``config.pbtxt`` for Triton's vLLM backend.

    ``KIND_MODEL``: the engine places itself on the GPUs it is given (``KIND_GPU`` is refused by
    the backend for tensor-parallel engines). Decoupled and ``max_batch_size`` 0, as the backend's
    own auto-completion sets them: vLLM batches in flight itself.
    """
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = pb.ModelConfig(name=model_name, backend="vllm", max_batch_size=0)
    for spec in VLLM_INPUTS:
        _tensor(cfg.input.add(), spec, pb)
    for spec in VLLM_OUTPUTS:
        _tensor(cfg.output.add(), spec, pb)
    cfg.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_MODEL)
    cfg.model_transaction_policy.decoupled = True
    return _to_text(cfg)


def context_length(config: dict[str, Any]) -> int | None:
    """The checkpoint's trained context (``max_position_embeddings`` or CodeGen's ``n_positions``)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if config.get(key):
            return int(config[key])
    return None


def lora_rank(adapter: Path) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank ``r``."""
    try:
        r = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{adapter}/adapter_config.json is missing or has no rank 'r' ({exc}); "
                              "is it a peft save_pretrained() folder?") from exc
    fit = [rank for rank in LORA_RANKS if rank >= r]
    if not fit:
        raise CheckpointError(f"adapter {adapter} has LoRA rank {r}; vLLM serves ranks up to "
                              f"{LORA_RANKS[-1]}: retrain with a smaller lora_r")
    return fit[0]


def engine_args(model_path: str, *, options: VllmOptions, max_model_len: int | None,
                adapter_ranks: Sequence[int] = ()) -> dict[str, Any]:
    """The ``model.json`` object; every key is in :data:`ENGINE_ARG_NAMES`."""
    if options.dtype not in VLLM_DTYPES:
        raise ConversionError(f"unknown vLLM dtype {options.dtype!r}; choose one of {VLLM_DTYPES}")
    if not 0 < options.gpu_memory_utilization <= 1:
        raise ConversionError(f"gpu_memory_utilization must be in (0, 1], got {options.gpu_memory_utilization}")
    args: dict[str, Any] = {
        "model": model_path,
        "dtype": options.dtype,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "tensor_parallel_size": options.tensor_parallel,
        "disable_log_stats": False,
    }
    if max_model_len:
        args["max_model_len"] = int(max_model_len)
    if adapter_ranks:
        args.update(enable_lora=True, max_lora_rank=max(adapter_ranks), max_loras=len(adapter_ranks))
    unknown = set(args) - ENGINE_ARG_NAMES
    if unknown:
        raise ConversionError(f"internal error: {sorted(unknown)} are not vLLM engine arguments")
    return args


def write_vllm_model(src: Path, staging: Path, *, model_name: str, options: VllmOptions,
                     adapters: Sequence[tuple[str, Path]] = ()) -> dict[str, Any]:
    """Write the model folder for checkpoint ``src`` (+ ``adapters``) into ``staging``.

    ``adapters`` are ``(name, folder)`` pairs of RepoTune adapters trained on ``src``: each
    manifest's base digest must match ``src`` (a changed base is refused, never served).
    Returns the ``artifact.json`` fields.
    """
    from converter.convert import check_vocab, checkpoint_family
    from families.adapters import AdapterError, resolve_base

    config = read_config(src)
    family = checkpoint_family(src, "vllm")
    start_id, end_id, tok_len = token_ids(src)
    with TensorReader(src) as reader:
        vocab = check_vocab(src, config, reader, tok_len)
    version = staging / VERSION_DIR
    payload = version / "model"
    payload.mkdir(parents=True)
    for path in weight_files(src) + [p for p in src.iterdir() if p.is_file() and p.name in (
            "config.json", "generation_config.json", "model.safetensors.index.json")]:
        shutil.copy2(path, payload / path.name)
    copy_tokenizer(src, payload)
    ranks, names = [], []
    for name, folder in adapters:
        if name in names:
            raise ConversionError(f"two adapters are named {name!r}; name them with --adapter NAME=DIR")
        try:
            resolve_base(folder, base=src)
        except AdapterError as exc:
            raise CheckpointError(f"adapter {name!r} does not apply to {src}: {exc}") from exc
        ranks.append(lora_rank(folder))
        names.append(name)
        shutil.copytree(folder, version / "adapters" / name)
    max_len = options.max_model_len or context_length(config)
    args = engine_args("", options=options, max_model_len=max_len, adapter_ranks=ranks)
    meta = {"vocab_size": vocab, "start_id": start_id, "end_id": end_id, "payload": "model",
            "family": family, "max_model_len": max_len, "adapters": names,
            "model_mount": options.model_mount, "layout": f"{VERSION_DIR}/"}
    write_json_atomic(version / ENGINE_ARGS_FILE, args)
    pin_version(version, f"{options.model_mount.rstrip('/')}/{model_name}/{VERSION_DIR}")
    pbtxt = vllm_config(model_name)
    write_atomic(staging / "config.pbtxt", pbtxt)
    write_atomic(version / "config.pbtxt", pbtxt)
    return meta


def pin_version(version_dir: Path, triton_path: str) -> None:
    """Point ``model.json``'s ``model`` and every ``multi_lora.json`` entry at ``triton_path``
    (the version folder as Triton's vLLM engine will open it).

    Call only before the version is first loaded: Triton treats a changed file in a loaded
    version as a new model (see serving/repository.py).
    """
    version_dir = Path(version_dir)
    base = triton_path.rstrip("/")
    args = json.loads((version_dir / ENGINE_ARGS_FILE).read_text(encoding="utf-8"))
    args["model"] = f"{base}/model"
    write_json_atomic(version_dir / ENGINE_ARGS_FILE, args)
    adapters_dir = version_dir / "adapters"
    if args.get("enable_lora"):
        names = sorted(p.name for p in adapters_dir.iterdir() if p.is_dir())
        write_json_atomic(version_dir / MULTI_LORA_FILE, {n: f"{base}/adapters/{n}" for n in names})


def check_vllm_model(folder: str | Path, triton_root: str | None = None) -> dict[str, Any]:
    """Re-check a vLLM model or version folder against the documented format; returns model.json.

    ``config.pbtxt`` parses as Triton's ``ModelConfig`` with backend ``vllm`` and the documented
    tensors; ``model.json``'s keys are all vLLM engine arguments; the checkpoint has weights and a
    tokenizer; every adapter named in ``multi_lora.json`` has a folder. ``triton_root`` (the path
    Triton sees for this version folder) also checks that the paths written point there.
    """
    from converter.triton_config import parse_model_config

    folder = Path(folder)
    version = folder / VERSION_DIR if (folder / VERSION_DIR / ENGINE_ARGS_FILE).is_file() else folder
    cfg = parse_model_config((folder / "config.pbtxt").read_text(encoding="utf-8"))
    if cfg.backend != "vllm":
        raise ConversionError(f"{folder}/config.pbtxt names backend {cfg.backend!r}, not 'vllm'")
    names = {t.name for t in cfg.input} | {t.name for t in cfg.output}
    missing = {s.name for s in VLLM_INPUTS + VLLM_OUTPUTS} - names
    if missing:
        raise ConversionError(f"{folder}/config.pbtxt lacks the vLLM backend's tensors {sorted(missing)}")
    args = json.loads((version / ENGINE_ARGS_FILE).read_text(encoding="utf-8"))
    unknown = set(args) - ENGINE_ARG_NAMES
    if unknown:
        raise ConversionError(f"{version}/{ENGINE_ARGS_FILE} has keys vLLM does not know: {sorted(unknown)}")
    weight_files(version / "model")
    if not any((version / "model" / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        raise ConversionError(f"{version}/model has no tokenizer; convert again")
    expected = triton_root.rstrip("/") if triton_root else None
    if expected and args["model"] != f"{expected}/model":
        raise ConversionError(f"{version}/{ENGINE_ARGS_FILE} points at {args['model']}, not {expected}/model")
    if args.get("enable_lora"):
        loras = json.loads((version / MULTI_LORA_FILE).read_text(encoding="utf-8"))
        for name, path in loras.items():
            local = version / "adapters" / name
            if not (local / "adapter_config.json").is_file() or not path.endswith(f"/adapters/{name}"):
                raise ConversionError(f"{version}/{MULTI_LORA_FILE}: adapter {name!r} -> {path} has no "
                                      "adapter folder in the version; convert again")
    return args
