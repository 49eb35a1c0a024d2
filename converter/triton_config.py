"""Triton ``config.pbtxt`` text for the two ways RepoTune serves a model.

Both configurations expose the same tensors — FasterTransformer's GPT-J interface — so the
completion proxy speaks one protocol whatever the backend:

* :func:`fastertransformer_config` for the FasterTransformer GPT-J backend, in the v1.1
  schema (FT 5.0; every model parameter is read from here) or the newer one (backend
  ≥ v1.2; ``random_seed`` is UINT64, ``data_type`` and a transaction policy are added, and
  the model shape is read from ``config.ini`` next to the weights);
* :func:`python_backend_config` for RepoTune's own python-backend model
  (``serving/python_backend/model.py``), which runs the Hugging Face checkpoint.

Each configuration is built as Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``) and printed with ``google.protobuf.text_format``, so
a field name or type Triton does not know fails here, not when Triton loads the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Schema = Literal["v1.1", "v1.2"]
SCHEMAS: tuple[str, ...] = ("v1.1", "v1.2")
"""``v1.1``: FasterTransformer backend v1.1 (FT 5.0). ``v1.2``: backend v1.2 and later."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the GPT-J interface."""

    name: str
    data_type: str
    """Triton type name without the ``TYPE_`` prefix (``UINT32``, ``FP32`` …)."""
    dims: tuple[int, ...]
    optional: bool = False
    scalar: bool = False
    """Reshape ``[1]`` to a scalar per request (``reshape { shape: [ ] }``)."""


def gptj_inputs(schema: Schema = "v1.1") -> list[TensorSpec]:
    """The FasterTransformer GPT-J inputs; ``random_seed`` is INT32 in v1.1, UINT64 after."""
    _check_schema(schema)
    seed_type = "INT32" if schema == "v1.1" else "UINT64"
    return [
        TensorSpec("input_ids", "UINT32", (-1,)),
        TensorSpec("input_lengths", "UINT32", (1,), scalar=True),
        TensorSpec("request_output_len", "UINT32", (-1,)),
        TensorSpec("runtime_top_k", "UINT32", (1,), optional=True, scalar=True),
        TensorSpec("runtime_top_p", "FP32", (1,), optional=True, scalar=True),
        TensorSpec("beam_search_diversity_rate", "FP32", (1,), optional=True, scalar=True),
        TensorSpec("temperature", "FP32", (1,), optional=True, scalar=True),
        TensorSpec("len_penalty", "FP32", (1,), optional=True, scalar=True),
        TensorSpec("repetition_penalty", "FP32", (1,), optional=True, scalar=True),
        TensorSpec("random_seed", seed_type, (1,), optional=True, scalar=True),
        TensorSpec("is_return_log_probs", "BOOL", (1,), optional=True, scalar=True),
        TensorSpec("beam_width", "UINT32", (1,), optional=True, scalar=True),
        TensorSpec("start_id", "UINT32", (1,), optional=True, scalar=True),
        TensorSpec("end_id", "UINT32", (1,), optional=True, scalar=True),
        TensorSpec("bad_words_list", "INT32", (2, -1), optional=True),
        TensorSpec("stop_words_list", "INT32", (2, -1), optional=True),
    ]


GPTJ_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output_ids", "UINT32", (-1, -1)),
    TensorSpec("sequence_length", "UINT32", (-1,)),
    TensorSpec("cum_log_probs", "FP32", (-1,)),
    TensorSpec("output_log_probs", "FP32", (-1, -1)),
)


def fastertransformer_config(
    model_name: str,
    *,
    vocab_size: int,
    head_num: int,
    size_per_head: int,
    inter_size: int,
    num_layer: int,
    rotary_dim: int,
    start_id: int,
    end_id: int,
    tensor_parallel: int = 1,
    max_seq_len: int = 2048,
    is_half: bool = False,
    schema: Schema = "v1.1",
    version: int | str = 1,
    model_mount: str = "/model",
    max_batch_size: int = 1024,
) -> str:
    """``config.pbtxt`` for the FasterTransformer GPT-J backend.

    ``vocab_size`` must be the row count of the converted ``model.wte.bin`` (FT reads exactly
    ``vocab_size × E`` floats: see docs/conversion.md), never a tokenizer length.
    ``model_checkpoint_path`` is ``<model_mount>/<model_name>/<version>/<N>-gpu``: the path
    *inside* the Triton container, where the model repository is mounted at ``model_mount``
    (FauxPilot mounts it at ``/model``). Call again with the published ``version``.
    """
    _check_schema(schema)
    for label, value in (("vocab_size", vocab_size), ("head_num", head_num),
                         ("tensor_parallel", tensor_parallel), ("num_layer", num_layer)):
        if value < 1:
            raise ValueError(f"{label} must be positive, got {value}")
    if head_num % tensor_parallel:
        raise ValueError(f"head_num {head_num} is not divisible by tensor_parallel {tensor_parallel}")
    checkpoint = f"{model_mount.rstrip('/')}/{model_name}/{version}/{tensor_parallel}-gpu"
    params: dict[str, Any] = {
        "tensor_para_size": tensor_parallel,
        "pipeline_para_size": 1,
        "max_seq_len": max_seq_len,
        "is_half": int(is_half),
        "head_num": head_num,
        "size_per_head": size_per_head,
        "inter_size": inter_size,
        "vocab_size": vocab_size,
        "start_id": start_id,
        "end_id": end_id,
        "decoder_layers": num_layer,
        "model_name": model_name,
        "rotary_embedding": rotary_dim,
        "model_type": "GPT-J",
        "model_checkpoint_path": checkpoint,
        "enable_custom_all_reduce": 0,
    }
    if schema != "v1.1":
        params["data_type"] = "fp16" if is_half else "fp32"
    cfg = _model_config(model_name, "fastertransformer", max_batch_size, gptj_inputs(schema), params,
                        default_model_filename=model_name)
    if schema != "v1.1":
        cfg.model_transaction_policy.decoupled = False
        cfg.model_transaction_policy.SetInParent()  # written out even though False is the default
    return _to_text(cfg)


def python_backend_config(
    model_name: str,
    max_batch_size: int = 8,
    *,
    schema: Schema = "v1.1",
    model_dir: str = "model",
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
    gpus: Sequence[int] = (),
    dtype: str | None = None,
) -> str:
    """``config.pbtxt`` for RepoTune's python-backend model: the FT GPT-J tensors.

    ``model_dir`` (parameter ``model_dir``) is the Hugging Face checkpoint folder inside each
    version directory. ``schema`` picks the ``random_seed`` type so the proxy can send the
    same request to this model and to a FasterTransformer model of that schema.

    Placement: no ``gpus`` gives ``KIND_CPU`` instances (the embedded CPU server); ``gpus``
    (device ids) gives ``instance_count`` ``KIND_GPU`` instances on each of them, and the model
    (``serving/python_backend/model.py``) then loads on that GPU. A Triton without those GPUs
    refuses to load such a version, so GPU placement is asked for, never guessed. ``dtype``
    (parameter ``dtype``: ``fp32``, ``fp16``, ``bf16``) overrides the model's default (fp32 on
    the CPU, bf16/fp16 on a GPU).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
    if dtype is not None and dtype not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
    params = {"model_dir": model_dir, **({"dtype": dtype} if dtype else {})}
    cfg = _model_config(model_name, "python", max_batch_size, gptj_inputs(schema), params,
                        instance_count=instance_count, gpus=gpus)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.dynamic_batching.SetInParent()
    return _to_text(cfg)


def parse_model_config(text: str):
    """Parse ``config.pbtxt`` text into ``tritonclient.grpc.model_config_pb2.ModelConfig``.

    Raises :class:`~converter.errors.ConversionError` naming the parser's complaint.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from converter.errors import ConversionError

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConversionError(f"config.pbtxt does not parse as Triton ModelConfig: {exc}") from exc


def with_checkpoint_version(text: str, version: int | str, model_mount: str | None = None) -> str:
    """Point a FasterTransformer ``config.pbtxt``'s ``model_checkpoint_path`` at ``version``.

    Used when publishing an artifact (written for version 1) as version ``version``: the path
    becomes ``<mount>/<name>/<version>/<N>-gpu`` (``model_mount`` defaults to the current one).
    """
    from google.protobuf import text_format

    cfg = parse_model_config(text)
    params = cfg.parameters
    if "model_checkpoint_path" not in params:
        raise ValueError("not a FasterTransformer config: no model_checkpoint_path parameter")
    old = params["model_checkpoint_path"].string_value
    parts = old.rstrip("/").split("/")
    if len(parts) < 4 or not parts[-1].endswith("-gpu"):
        raise ValueError(f"unexpected model_checkpoint_path {old!r}")
    mount = model_mount.rstrip("/") if model_mount is not None else "/".join(parts[:-3])
    params["model_checkpoint_path"].string_value = f"{mount}/{cfg.name}/{version}/{parts[-1]}"
    return text_format.MessageToString(cfg)


def config_parameters(text: str) -> dict[str, str]:
    """The ``parameters`` of a ``config.pbtxt`` as a plain dict of strings."""
    cfg = parse_model_config(text)
    return {key: value.string_value for key, value in cfg.parameters.items()}


def _check_schema(schema: str) -> None:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown FasterTransformer backend schema {schema!r}; choose one of {SCHEMAS}")


def _model_config(name: str, backend: str, max_batch_size: int, inputs: list[TensorSpec],
                  params: dict[str, Any], *, instance_count: int = 1, gpus: Sequence[int] = (),
                  default_model_filename: str | None = None) -> Any:
    """The ``ModelConfig`` both backends share: the GPT-J tensors, instances, parameters.

    Instances are ``KIND_CPU`` unless ``gpus`` names devices (``KIND_GPU`` there). The
    FasterTransformer backend always gets ``KIND_CPU``: it places its ranks on the GPUs itself
    (as FauxPilot's configs do), and Triton would otherwise start one model per GPU."""
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = pb.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    if default_model_filename:
        cfg.default_model_filename = default_model_filename
    for spec in inputs:
        _tensor(cfg.input.add(), spec, pb)
    for spec in GPTJ_OUTPUTS:
        _tensor(cfg.output.add(), spec, pb)
    if gpus:
        cfg.instance_group.add(count=instance_count, kind=pb.ModelInstanceGroup.KIND_GPU,
                               gpus=[int(g) for g in gpus])
    else:
        cfg.instance_group.add(count=instance_count, kind=pb.ModelInstanceGroup.KIND_CPU)
    _set_parameters(cfg, params)
    return cfg


def _tensor(message: Any, spec: TensorSpec, pb: Any) -> None:
    """Fill a ``ModelInput`` / ``ModelOutput`` from ``spec``."""
    message.name = spec.name
    message.data_type = pb.DataType.Value(f"TYPE_{spec.data_type}")
    message.dims.extend(spec.dims)
    if spec.scalar:
        message.reshape.SetInParent()  # an empty shape: one value per request, not a [1] tensor
    if spec.optional:
        message.optional = True


def _set_parameters(cfg: Any, params: dict[str, Any]) -> None:
    """Triton parameters are strings: ``is_half`` 1 becomes ``"1"``."""
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)


def _to_text(cfg: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)
