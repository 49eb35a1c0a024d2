"""Where the python backend runs: the device/dtype choice as a pure function, and the
``instance_group`` the converter writes for it (the CPU path itself is covered end to end by
tests/test_serving_*.py and tests/test_convert_python.py; no GPU is reachable here)."""

from __future__ import annotations

import importlib.util

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from converter.triton_config import parse_model_config, python_backend_config
from serving.repository import PYTHON_MODEL


def _backend_model():
    """``serving/python_backend/model.py`` as Triton's stub imports it (a file, not a package)."""
    spec = importlib.util.spec_from_file_location("repotune_python_backend_model", PYTHON_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


choose_device = _backend_model().choose_device


@pytest.mark.parametrize(("kind", "device_id", "cuda", "dtype", "bf16", "expected"), [
    ("GPU", "1", True, None, True, ("cuda:1", "bfloat16")),   # Triton's KIND_GPU on device 1
    ("GPU", "0", True, None, False, ("cuda:0", "float16")),   # no bf16 on the card: fp16
    ("GPU", 0, True, "fp32", True, ("cuda:0", "float32")),    # the config's dtype wins
    ("GPU", "0", True, "fp16", True, ("cuda:0", "float16")),
    ("GPU", "0", False, None, False, ("cpu", "float32")),     # KIND_GPU but a CPU-only torch
    ("CPU", "0", True, None, True, ("cpu", "float32")),       # KIND_CPU never moves to the GPU
    ("MODEL", None, True, None, True, ("cpu", "float32")),
    (None, None, False, "bf16", False, ("cpu", "bfloat16")),  # asked for on the CPU: honoured
])
def test_device_and_dtype_follow_the_instance_kind(kind, device_id, cuda, dtype, bf16, expected) -> None:
    assert choose_device(kind, device_id, cuda, dtype, bf16) == expected


def test_unknown_dtype_names_the_choices() -> None:
    with pytest.raises(ValueError, match="use one of fp32, fp16, bf16"):
        choose_device("GPU", "0", True, "int8")


def test_config_asks_for_gpus_only_when_given() -> None:
    cpu = parse_model_config(python_backend_config("m"))
    assert [(g.kind, list(g.gpus)) for g in cpu.instance_group] == [(pb.ModelInstanceGroup.KIND_CPU, [])]
    assert "dtype" not in cpu.parameters
    gpu = parse_model_config(python_backend_config("m", gpus=[0, 1], instance_count=2, dtype="bf16"))
    assert [(g.kind, list(g.gpus), g.count) for g in gpu.instance_group] == [
        (pb.ModelInstanceGroup.KIND_GPU, [0, 1], 2)]
    assert gpu.parameters["dtype"].string_value == "bf16"
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        python_backend_config("m", dtype="half")
