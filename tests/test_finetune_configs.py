"""Shipped DeepSpeed configs, config validation and the launcher's command/log protocol."""

from __future__ import annotations

import json

import pytest

from trainer import deepspeed_configs
from trainer.errors import FinetuneError, TokenOutOfRange
from trainer.finetune import (
    FinetuneConfig,
    build_launch_command,
    check_token_range,
    effective_block_size,
    last_complete_checkpoint,
    parse_progress_line,
    train,
)


@pytest.mark.parametrize("name", sorted(deepspeed_configs.SHIPPED))
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_shipped_configs_pass_deepspeeds_own_validation(name: str, precision: str) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = deepspeed_configs.load(name)
    assert deepspeed_configs.find_auto(raw), "shipped configs leave batch sizes to the Trainer"
    resolved = deepspeed_configs.resolve_auto(raw, micro_batch=2, grad_accum=4, world_size=1,
                                              hidden_size=64, precision=precision)
    assert deepspeed_configs.find_auto(resolved) == []
    ds = DeepSpeedConfig(resolved)
    assert ds.train_batch_size == 8
    assert ds.gradient_accumulation_steps == 4
    assert ds.zero_optimization_stage == (3 if name.startswith("zero3") else 2)
    assert ds.float16_config.enabled == (precision == "fp16")
    assert ds.bfloat16_config.enabled == (precision == "bf16")


def test_zero3_gathers_16bit_weights_on_save_and_offload_configs_offload() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    for name in ("zero3", "zero3-offload"):
        ds = DeepSpeedConfig(deepspeed_configs.resolve_auto(deepspeed_configs.load(name)))
        assert ds.zero_config.gather_16bit_weights_on_model_save is True
    offload = DeepSpeedConfig(deepspeed_configs.resolve_auto(deepspeed_configs.load("zero2-offload")))
    assert offload.zero_config.offload_optimizer.device == "cpu"
    plain = DeepSpeedConfig(deepspeed_configs.resolve_auto(deepspeed_configs.load("zero2")))
    assert plain.zero_config.offload_optimizer is None
    assert "optimizer" not in deepspeed_configs.load("zero2")  # no fused_adam build needed


def test_deepspeed_validation_rejects_a_misspelt_key() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    bad = deepspeed_configs.resolve_auto(deepspeed_configs.load("zero2"))
    bad["zero_optimization"]["stgae"] = 2
    with pytest.raises(Exception, match="stgae"):
        DeepSpeedConfig(bad)


def test_loader_accepts_names_paths_and_none(tmp_path) -> None:
    assert deepspeed_configs.load("none") is None
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert deepspeed_configs.load(str(custom)) == {"zero_optimization": {"stage": 1}}
    with pytest.raises(FinetuneError, match="zero2-offload"):
        deepspeed_configs.load("zero4")


def test_config_problems_are_collected_and_fp16_on_cpu_is_refused(tmp_path) -> None:
    cfg = FinetuneConfig(base="x", train_files=[], heldout_files=[], output_dir=str(tmp_path),
                         precision="fp8", deepspeed="zero9", eval_every=0)
    problems = cfg.problems()
    assert len(problems) == 4
    assert any("train_files" in p for p in problems)
    assert any("fp8" in p for p in problems)
    assert any("zero9" in p for p in problems)
    assert any("eval_every" in p for p in problems)
    with pytest.raises(FinetuneError, match="cannot start"):
        train(cfg)
    fp16 = FinetuneConfig(base="x", train_files=["a"], heldout_files=[], output_dir=str(tmp_path),
                          precision="fp16", use_cpu=True)
    with pytest.raises(FinetuneError, match="fp16.*needs a GPU"):
        train(fp16)


def test_config_round_trips_through_json(tmp_path) -> None:
    cfg = FinetuneConfig(base="m", train_files=["t.zst"], heldout_files=["h.zst"], output_dir="o",
                         max_steps=7, deepspeed="zero3")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert FinetuneConfig.from_json(path) == cfg
    with pytest.raises(FinetuneError, match="bogus"):
        FinetuneConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_block_size_is_capped_at_the_context_and_token_ids_are_checked() -> None:
    assert effective_block_size(2048, 256) == 256
    assert effective_block_size(512, 2048) == 512
    check_token_range(1023, 1024)
    with pytest.raises(TokenOutOfRange, match="token id 1024 .* only 1024 embedding rows"):
        check_token_range(1024, 1024)


def test_launch_command_maps_gpus_include_hostfile_and_port() -> None:
    cmd = build_launch_command("run/c.json", gpus=2, master_port=29511, python="py")
    assert cmd[:4] == ["py", "-u", "-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "2"
    assert cmd[cmd.index("--master_port") + 1] == "29511"
    assert cmd[-4:] == ["--module", "trainer.finetune", "--config", "run/c.json"]
    multi = build_launch_command("c.json", include="localhost:1,2", hostfile="/etc/hosts-ds")
    assert multi[multi.index("--include") + 1] == "localhost:1,2"
    assert multi[multi.index("--hostfile") + 1] == "/etc/hosts-ds"
    assert "--num_gpus" not in multi
    with pytest.raises(FinetuneError, match="either"):
        build_launch_command("c.json", gpus=2, include="localhost:0")


def test_progress_lines_are_parsed_even_with_a_rank_prefix() -> None:
    line = '[rank0]: REPOTUNE_PROGRESS {"stage": "train", "done": 5, "total": 10, "loss": 2.5}\n'
    assert parse_progress_line(line) == {"stage": "train", "done": 5, "total": 10, "loss": 2.5}
    assert parse_progress_line("step 5 loss 2.5") is None
    assert parse_progress_line("REPOTUNE_PROGRESS {not json") is None


def test_last_complete_checkpoint_skips_a_half_written_one(tmp_path) -> None:
    assert last_complete_checkpoint(tmp_path / "missing") is None
    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
