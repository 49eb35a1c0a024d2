"""LoRA fine-tuning on CPU (trainer.lora): a small adapter over a frozen tiny base, evaluated
with its base, merged into a full checkpoint, and refused when the base changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli
from families.adapters import checkpoint_digest, is_adapter, read_manifest, write_manifest
from tests.fixtures.training import Shards, write_corpus
from trainer.errors import EvaluationError, FinetuneError
from trainer.evaluate.generate import load_model
from trainer.finetune import FinetuneConfig, train
from trainer.lora import DEFAULT_TARGET_MODULES, merge_adapter
from trainer.tiny import init_tiny

PROMPT = "def load_invoice(client, number):\n    return "


def _config(base: Path, shards: Shards, out: Path, **overrides) -> FinetuneConfig:
    values = dict(base=str(base), train_files=[str(p) for p in shards.train],
                  heldout_files=[str(p) for p in shards.heldout], output_dir=str(out), method="lora",
                  learning_rate=3e-3, per_device_batch=4, block_size=128, max_steps=24, eval_every=12,
                  log_every=6, save_every=1000, deepspeed="none", lora_dropout=0.0)
    values.update(overrides)
    return FinetuneConfig(**values)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logits(model, tokenizer):
    import torch

    ids = torch.tensor([tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Shards, list[str]]:
    root = tmp_path_factory.mktemp("lora-corpus")
    shards = write_corpus(root, files=40)
    texts = [p.read_text() for p in sorted((root / "src").rglob("*")) if p.is_file()]
    return shards, texts


@pytest.fixture(scope="module")
def codegen_run(corpus, tmp_path_factory: pytest.TempPathFactory):
    """A tiny CodeGen base and a LoRA adapter trained on it (rank 4: the size check)."""
    shards, texts = corpus
    root = tmp_path_factory.mktemp("lora-codegen")
    base = init_tiny(texts, root / "base")
    before = _sha(base / "model.safetensors")
    events: list[dict] = []
    result = train(_config(base, shards, root / "adapter", lora_r=4, lora_alpha=8), progress=events.append)
    return base, before, result, events


@pytest.mark.timeout(120)
def test_lora_trains_only_a_small_adapter_and_leaves_the_base_alone(codegen_run) -> None:
    from safetensors import safe_open

    base, before, result, events = codegen_run
    adapter = result.checkpoint
    assert result.steps == 24 and result.extras["method"] == "lora" and result.extras["deepspeed"] == "none"
    assert result.heldout_curve[-1][1] < result.heldout_curve[0][1] - 0.2, result.heldout_curve
    assert result.loss_curve[-1][1] < result.loss_curve[0][1], result.loss_curve
    train_events = [e for e in events if e["stage"] == "train" and "loss" in e]
    assert [e["done"] for e in train_events] == [6, 12, 18, 24]
    assert all(e["total"] == 24 and e["tokens_per_s"] > 0 for e in train_events)

    # Only LoRA matrices were trained, and exactly r * (in + out) of them per targeted linear.
    r, layers = 4, 2  # TinyModelConfig (n_embd 64): qkv 64→192, out 64→64, fc_in 64→256, fc_out 256→64
    expected = layers * r * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert result.extras["lora"]["trainable_params"] == expected
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
        stored = sum(fh.get_tensor(k).numel() for k in keys)
    assert keys and all("lora_" in k for k in keys) and stored == expected
    size = (adapter / "adapter_model.safetensors").stat().st_size
    assert size < 0.06 * (base / "model.safetensors").stat().st_size, size
    assert _sha(base / "model.safetensors") == before  # the base on disk is untouched

    manifest = read_manifest(adapter)
    assert is_adapter(adapter) and (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer.json").is_file() and not (adapter / "model.safetensors").exists()
    assert manifest.base == str(base.resolve()) and manifest.base_digest == checkpoint_digest(base)
    assert manifest.family == "codegen" and manifest.lora["r"] == 4
    assert manifest.lora["target_modules"] == list(DEFAULT_TARGET_MODULES["codegen"])
    assert json.loads((adapter / "train.json").read_text())["checkpoint"] == str(adapter)


@pytest.mark.timeout(120)
def test_evaluation_applies_the_adapter_and_merged_export_matches(codegen_run, tmp_path: Path) -> None:
    import torch

    base, _, result, _ = codegen_run
    plain, adapted = load_model(base, device="cpu"), load_model(result.checkpoint, device="cpu")
    assert adapted.name == str(result.checkpoint) and adapted.family.name == "codegen"
    base_logits, adapted_logits = _logits(plain.model, plain.tokenizer), _logits(adapted.model, adapted.tokenizer)
    assert (base_logits - adapted_logits).abs().max() > 1e-2

    merged = merge_adapter(result.checkpoint, tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and not is_adapter(merged)
    full = load_model(merged, device="cpu")
    torch.testing.assert_close(_logits(full.model, full.tokenizer), adapted_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(FinetuneError, match="already exists"):
        merge_adapter(result.checkpoint, merged)

    cli_out = tmp_path / "from-cli"
    done = CliRunner().invoke(cli, ["model", "export-merged", str(result.checkpoint), str(cli_out)])
    assert done.exit_code == 0, done.output
    assert _sha(cli_out / "model.safetensors") == _sha(merged / "model.safetensors")


@pytest.mark.timeout(120)
def test_a_changed_base_is_refused(codegen_run, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    base, _, result, _ = codegen_run
    moved_base = tmp_path / "base"
    shutil.copytree(base, moved_base)
    adapter = tmp_path / "adapter"
    shutil.copytree(result.checkpoint, adapter, ignore=shutil.ignore_patterns("checkpoints", "tokenized"))
    manifest = read_manifest(adapter)
    write_manifest(adapter, type(manifest)(**{**manifest.as_dict(), "base": str(moved_base)}))
    assert load_model(adapter, device="cpu").model is not None  # same bytes elsewhere: accepted

    weights = load_file(moved_base / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.full_like(weights[name], 0.01)
    save_file(weights, moved_base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EvaluationError, match="changed.*retrain"):
        load_model(adapter, device="cpu")
    with pytest.raises(FinetuneError, match="changed"):
        merge_adapter(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    refused = CliRunner().invoke(cli, ["model", "export-merged", str(adapter), str(tmp_path / "m2")])
    assert refused.exit_code == 1 and "changed" in refused.output, refused.output


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["qwen2.5-coder", "starcoder2"])
def test_lora_trains_fim_families(corpus, family: str, tmp_path: Path) -> None:
    shards, texts = corpus
    base = init_tiny(texts, tmp_path / "base", family=family)
    result = train(_config(base, shards, tmp_path / "adapter", max_steps=16, eval_every=16, log_every=8))
    assert result.heldout_curve[-1][1] < result.heldout_curve[0][1], result.heldout_curve
    assert result.extras["data"]["fim"] is not None  # the same FIM pipeline as full training
    assert read_manifest(result.checkpoint).family == family
    model_type = {"qwen2.5-coder": "qwen2", "starcoder2": "starcoder2"}[family]
    assert result.extras["lora"]["target_modules"] == list(DEFAULT_TARGET_MODULES[model_type])
    lm = load_model(result.checkpoint, device="cpu")
    assert lm.family.name == family and lm.family.has_fim


@pytest.mark.parametrize("model_type", sorted(DEFAULT_TARGET_MODULES))
def test_default_targets_cover_every_attention_and_mlp_linear(model_type: str) -> None:
    """Each architecture's default names match all its projection layers and nothing else."""
    import transformers
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    small = dict(vocab_size=64, num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=8, n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=32)
    config = transformers.AutoConfig.for_model(model_type, **small)
    model = transformers.AutoModelForCausalLM.from_config(config)
    linears = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, Conv1D)) and not name.endswith("lm_head")}
    assert linears == set(DEFAULT_TARGET_MODULES[model_type])


@pytest.mark.parametrize(("overrides", "named"), [
    ({"method": "qlora"}, "method='qlora'"),
    ({"lora_r": 0}, "lora_r=0"),
    ({"lora_alpha": 0}, "lora_alpha=0"),
    ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
    ({"lora_dropout": -0.1}, "lora_dropout=-0.1"),
])
def test_bad_lora_settings_are_refused_naming_the_field(overrides, named, tmp_path: Path) -> None:
    cfg = FinetuneConfig(base="unused", train_files=["train-00.jsonl.zst"], heldout_files=[],
                         output_dir=str(tmp_path), **{"method": "lora", **overrides})
    with pytest.raises(FinetuneError, match=named.replace(".", r"\.").replace("(", r"\(")):
        train(cfg)
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_unknown_target_modules_are_refused_naming_the_setting(codegen_run, corpus, tmp_path: Path) -> None:
    base, _, _, _ = codegen_run
    cfg = _config(base, corpus[0], tmp_path / "adapter", lora_target_modules=["no_such_proj"], max_steps=1)
    with pytest.raises(FinetuneError, match="lora_target_modules"):
        train(cfg)
    assert not is_adapter(tmp_path / "adapter")


def test_lora_settings_are_bot_training_settings() -> None:
    from bot.config import SETTINGS

    rows = {row.key: row for row in SETTINGS}
    assert rows["training.method"].default == "full"
    assert (rows["training.lora_r"].default, rows["training.lora_alpha"].default) == (16, 32)
    assert rows["training.lora_dropout"].default == 0.05 and rows["training.lora_target_modules"].default == []
    assert "adapter" in rows["training.method"].help
