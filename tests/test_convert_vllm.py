"""`convert --to vllm` and `deploy --backend vllm`: the files against the vLLM backend's documented
format (nothing here runs vLLM, which needs a GPU), and deploy's refusal on our CPU Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tritonclient.grpc import model_config_pb2 as pb

from bot.cli import cli
from converter import CheckpointError, ConversionError, check_artifact, convert, parse_model_config
from converter.vllm import ENGINE_ARG_NAMES, pin_version
from families.adapters import AdapterManifest, checkpoint_digest, write_manifest


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 (a family the vLLM backend serves), random weights."""
    from trainer import sample_code
    from trainer.tiny import init_tiny

    src = tmp_path_factory.mktemp("qwen-src")
    texts = [p.read_text() for p in sample_code.generate(src, files=12, seed=3)]
    return init_tiny(texts, tmp_path_factory.mktemp("qwen") / "model", family="qwen2.5-coder")


def make_adapter(base: Path, out: Path, r: int = 8) -> Path:
    """A real peft LoRA adapter of ``base`` with RepoTune's manifest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    write_manifest(out, AdapterManifest(base=str(base), base_digest=checkpoint_digest(base),
                                        family="qwen2.5-coder", lora={"r": r}))
    return out


def test_vllm_model_folder_matches_the_documented_format(qwen: Path, tmp_path: Path) -> None:
    result = convert(qwen, tmp_path / "m", to="vllm", model_name="coder", dtype="bf16",
                     model_mount="/models")
    art = result.artifact
    cfg = parse_model_config((art / "config.pbtxt").read_text())
    assert cfg.backend == "vllm" and cfg.name == "coder" and cfg.max_batch_size == 0
    assert [g.kind for g in cfg.instance_group] == [pb.ModelInstanceGroup.KIND_MODEL]
    assert cfg.model_transaction_policy.decoupled
    tensors = {t.name: (pb.DataType.Name(t.data_type), list(t.dims), t.optional) for t in cfg.input}
    assert tensors == {"text_input": ("TYPE_STRING", [1], False), "stream": ("TYPE_BOOL", [1], True),
                       "sampling_parameters": ("TYPE_STRING", [1], True),
                       "exclude_input_in_output": ("TYPE_BOOL", [1], True)}
    assert [(o.name, pb.DataType.Name(o.data_type)) for o in cfg.output] == [("text_output", "TYPE_STRING")]
    args = json.loads((art / "1" / "model.json").read_text())
    assert set(args) <= ENGINE_ARG_NAMES
    assert args["model"] == "/models/coder/1/model" and args["dtype"] == "bfloat16"
    assert args["max_model_len"] == json.loads((qwen / "config.json").read_text())["max_position_embeddings"]
    assert args["tensor_parallel_size"] == 1 and "enable_lora" not in args
    assert not (art / "1" / "multi_lora.json").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (art / "1" / "model" / name).is_file(), name
    # The version folder is a publishable artifact on its own.
    assert json.loads((art / "1" / "artifact.json").read_text())["backend"] == "vllm"
    assert check_artifact(art)["family"] == "qwen2.5-coder"


def test_base_and_adapters_write_multi_lora(qwen: Path, tmp_path: Path) -> None:
    a = make_adapter(qwen, tmp_path / "team-a", r=8)
    b = make_adapter(qwen, tmp_path / "team-b", r=24)
    art = convert(qwen, tmp_path / "m", to="vllm", model_name="coder",
                  adapters=[("team-a", a), ("team-b", b)]).artifact
    version = art / "1"
    args = json.loads((version / "model.json").read_text())
    assert set(args) <= ENGINE_ARG_NAMES
    assert args["enable_lora"] is True and args["max_loras"] == 2
    assert args["max_lora_rank"] == 32  # rank 24 rounds up to a rank vLLM accepts
    pin_version(version, str(version))  # as deploy does: paths as Triton (here: this host) sees them
    loras = json.loads((version / "multi_lora.json").read_text())
    assert sorted(loras) == ["team-a", "team-b"]
    for name, path in loras.items():
        assert (Path(path) / "adapter_config.json").is_file(), name
        assert (Path(path) / "adapter_model.safetensors").is_file(), name
    assert Path(json.loads((version / "model.json").read_text())["model"], "tokenizer.json").is_file()


def test_adapter_of_another_base_is_refused(qwen: Path, tmp_path: Path) -> None:
    adapter = make_adapter(qwen, tmp_path / "a")
    other = tmp_path / "other"
    other.mkdir()
    for p in qwen.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((other / "config.json").read_text())
    cfg["rope_theta"] = 1234.0  # a different base under the same architecture
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="changed"):
        convert(other, tmp_path / "m", to="vllm", adapters=[("a", adapter)])
    assert not (tmp_path / "m").exists()


def test_codegen_and_unknown_dtype_are_refused(tiny_model: Path, qwen: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="vllm backend cannot serve it"):
        convert(tiny_model, tmp_path / "cg", to="vllm")
    with pytest.raises(ConversionError, match="unknown dtype 'int4' for vllm"):
        convert(qwen, tmp_path / "x", to="vllm", dtype="int4")


def test_cli_convert_and_deploy_refusal_on_cpu_triton(qwen: Path, tmp_path: Path, triton_server) -> None:
    runner = CliRunner()
    adapter = make_adapter(qwen, tmp_path / "adapter")
    out = tmp_path / "cli-model"
    done = runner.invoke(cli, ["convert", str(qwen), "--to", "vllm", "--out", str(out),
                               "--adapter", f"team={adapter}", "--gpu-memory-utilization", "0.5"])
    assert done.exit_code == 0, done.output
    assert "adapters: team" in done.output
    args = json.loads((out / "1" / "model.json").read_text())
    assert args["gpu_memory_utilization"] == 0.5 and args["enable_lora"] is True

    home = tmp_path / "home"
    home.mkdir()
    (home / "triton").symlink_to(triton_server.model_repository, target_is_directory=True)
    deployed = runner.invoke(cli, ["deploy", str(qwen), "--backend", "vllm", "--home", str(home),
                                   "--model", "vllm-coder", "--triton-url", triton_server.url])
    assert deployed.exit_code == 1, deployed.output
    assert "has no vllm backend" in deployed.output and "GPU" in deployed.output
    listed = runner.invoke(cli, ["models", "--home", str(home), "--model", "vllm-coder", "--json"])
    versions = json.loads(listed.output)
    assert [(v["version"], v["serving"], bool(v["failed"])) for v in versions] == [(1, False, True)]
    published = (home / "triton").resolve() / "vllm-coder" / "1"
    assert json.loads((published / "model.json").read_text())["model"] == str(published / "model")


def test_deploy_refuses_to_switch_a_serving_model_to_vllm(qwen: Path, tmp_path: Path, triton_server) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    home.mkdir()
    (home / "triton").symlink_to(triton_server.model_repository, target_is_directory=True)
    common = ["--home", str(home), "--model", "mixed", "--triton-url", triton_server.url]
    first = runner.invoke(cli, ["deploy", str(qwen), *common])
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, ["deploy", str(qwen), "--backend", "vllm", *common])
    assert second.exit_code == 1
    assert "one Triton model has one backend" in second.output and "new --model name" in second.output
    versions = json.loads(runner.invoke(cli, ["models", "--home", str(home), "--model", "mixed",
                                              "--json"]).output)
    assert [(v["version"], v["serving"], v["backend"]) for v in versions] == [(1, True, "python")]
