"""The python-backend artifact and the Triton configs RepoTune generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2

import converter
from converter import CheckpointError, ConversionError, convert, parse_model_config
from converter.triton_config import config_parameters, fastertransformer_config


def test_python_artifact_layout_and_config(codegen_small: Path, tmp_path: Path) -> None:
    result = convert(codegen_small, tmp_path / "art", to="python", model_name="codegen")
    art = result.artifact
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["backend"] == "python" and meta["model_name"] == "codegen"
    assert meta["tensor_parallel"] == 1 and meta["source"] == str(codegen_small)
    cfg_json = json.loads((codegen_small / "config.json").read_text())
    assert meta["vocab_size"] == cfg_json["vocab_size"] == result.vocab_size
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (art / "model" / name).is_file(), name
    cfg = parse_model_config((art / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.name == "codegen"
    assert cfg.HasField("dynamic_batching")
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    names = {t.name: t for t in cfg.input}
    assert model_config_pb2.DataType.Name(names["input_ids"].data_type) == "TYPE_UINT32"
    assert list(names["stop_words_list"].dims) == [2, -1] and names["stop_words_list"].optional
    assert list(names["input_lengths"].dims) == [1] and not names["input_lengths"].optional
    assert [o.name for o in cfg.output] == ["output_ids", "sequence_length", "cum_log_probs",
                                           "output_log_probs"]
    assert result.verify is not None and result.verify["passed"]
    assert not list(tmp_path.glob(".art.*")), "staging folder left behind"


def test_python_and_ft_configs_share_the_interface() -> None:
    py = parse_model_config(converter.python_backend_config("m", max_batch_size=4))
    for schema, seed_type in (("v1.1", "TYPE_INT32"), ("v1.2", "TYPE_UINT64")):
        text = fastertransformer_config("m", vocab_size=51200, head_num=16, size_per_head=64,
                                        inter_size=4096, num_layer=20, rotary_dim=32, start_id=1,
                                        end_id=2, tensor_parallel=2, schema=schema, version=3)
        ft = parse_model_config(text)
        assert ft.backend == "fastertransformer" and ft.max_batch_size == 1024
        ft_inputs = {(t.name, t.data_type, tuple(t.dims)) for t in ft.input}
        seed = next(t for t in ft.input if t.name == "random_seed")
        assert model_config_pb2.DataType.Name(seed.data_type) == seed_type
        params = config_parameters(text)
        assert params["vocab_size"] == "51200" and params["tensor_para_size"] == "2"
        assert params["model_checkpoint_path"] == "/model/m/3/2-gpu"
        assert params["model_type"] == "GPT-J"
        assert ("data_type" in params) == (schema == "v1.2")
        moved = converter.with_checkpoint_version(text, 7)
        assert config_parameters(moved)["model_checkpoint_path"] == "/model/m/7/2-gpu"
        assert parse_model_config(moved).input[0].name == "input_ids"
        if schema == "v1.1":
            py_inputs = {(t.name, t.data_type, tuple(t.dims)) for t in py.input}
            assert py_inputs == ft_inputs
    assert [o.name for o in py.output] == [o.name for o in ft.output]


def test_resized_embeddings_are_refused(make_codegen, tmp_path: Path) -> None:
    src = make_codegen("resized")
    cfg_path = src / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vocab_size"] += 905  # the config still claims the base model's vocabulary
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"embeddings have \d+ rows but config.json says"):
        convert(src, tmp_path / "out", to="python")
    assert not (tmp_path / "out").exists()


def test_truncated_bin_is_refused(make_codegen, tmp_path: Path) -> None:
    src = make_codegen("legacy", safetensors=False)
    weights = src / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin cannot be loaded.*truncated"):
        convert(src, tmp_path / "out", to="python")


def test_out_must_be_new(codegen_small: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        convert(codegen_small, tmp_path / "busy", to="python")


def test_gpu_placement_is_asked_for(codegen_small: Path, tmp_path: Path) -> None:
    """``device="gpu"`` puts one KIND_GPU instance group on GPUs 0..gpus-1 in the asked dtype (the
    backend then loads the model there); an unknown device is refused before anything is written."""
    art = convert(codegen_small, tmp_path / "gpu", to="python", device="gpu", gpus=2, dtype="bf16",
                  verify=False).artifact
    text = (art / "config.pbtxt").read_text()
    cfg = parse_model_config(text)
    assert [(g.kind, list(g.gpus)) for g in cfg.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, [0, 1])]
    assert config_parameters(text)["dtype"] == "bf16"
    with pytest.raises(ConversionError, match="unknown device"):
        convert(codegen_small, tmp_path / "tpu", to="python", device="tpu")
    assert not (tmp_path / "tpu").exists()
