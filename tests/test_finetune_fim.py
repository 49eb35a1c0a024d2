"""Fine-tuning a FIM family: the family is detected (or given), the FIM transform runs before
packing, and ``train.json`` says what it did; the launcher's config file carries the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.training import Shards
from trainer import sample_code
from trainer.errors import FinetuneError, TrainerError
from trainer.finetune import FinetuneConfig, train
from trainer.launch import _node_files
from trainer.tiny import TinyModelConfig, init_tiny


@pytest.fixture(scope="module")
def tiny_starcoder2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fim-base")
    texts = [p.read_text() for p in sorted(sample_code.generate(root / "src", files=40, seed=3))]
    return init_tiny(texts, root / "starcoder2", TinyModelConfig(n_positions=128), family="starcoder2")


def _config(base: Path, shards: Shards, out: Path, **overrides) -> FinetuneConfig:
    values = dict(base=str(base), train_files=[str(p) for p in shards.train],
                  heldout_files=[str(p) for p in shards.heldout], output_dir=str(out), block_size=128,
                  learning_rate=3e-3, per_device_batch=4, max_steps=3, eval_every=3, save_every=100,
                  log_every=1, deepspeed="none", seed=7)
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.mark.timeout(240)
def test_a_detected_starcoder2_trains_on_fim_examples(tiny_starcoder2: Path, corpus_shards: Shards,
                                                      tmp_path: Path) -> None:
    result = train(_config(tiny_starcoder2, corpus_shards, tmp_path / "run", fim_rate=0.8, spm_rate=0.25))
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["steps"] == 3 and result.heldout_loss is not None
    assert summary["extras"]["family"] == "starcoder2"  # detected: the config said nothing
    assert summary["extras"]["config"]["family"] is None
    fim = summary["extras"]["data"]["fim"]
    assert (fim["family"], fim["fim_rate"], fim["spm_rate"], fim["seed"]) == ("starcoder2", 0.8, 0.25, 7)
    docs = fim["documents"]
    total = sum(docs.values())
    assert total == sum(1 for _ in _records(corpus_shards.train))
    # 0.8 of ~105 files become FIM examples, a quarter of them SPM: a binomial draw, far from the edges.
    assert 0.6 * total < docs["psm"] + docs["spm"] < total and docs["spm"] > 0 and docs["psm"] > docs["spm"]
    assert fim["sentinel_tokens_added"] == 3 * (docs["psm"] + docs["spm"])


@pytest.mark.timeout(240)
def test_codegen_trains_left_to_right_whatever_fim_rate_says(tiny_model, corpus_shards: Shards,
                                                            tmp_path: Path) -> None:
    train(_config(tiny_model, corpus_shards, tmp_path / "run", max_steps=1, fim_rate=0.9))
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["extras"]["family"] == "codegen" and summary["extras"]["data"]["fim"] is None


def test_an_explicit_fim_family_needs_its_sentinels(tiny_model, corpus_shards: Shards, tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="<fim_prefix>") as caught:
        train(_config(tiny_model, corpus_shards, tmp_path / "run", family="starcoder2"))
    assert "starcoder2" in str(caught.value)


def test_bad_fim_settings_are_named_before_anything_loads(corpus_shards: Shards, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "no-such-model", corpus_shards, tmp_path / "run", family="gpt5", fim_rate=1.5,
                  spm_rate=-0.1)
    with pytest.raises(FinetuneError) as caught:
        train(cfg)
    for needle in ("family='gpt5'", "starcoder2", "fim_rate=1.5", "spm_rate=-0.1"):
        assert needle in str(caught.value)


def test_the_launcher_config_file_carries_the_fim_settings(corpus_shards: Shards, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "base", corpus_shards, tmp_path / "run", family="qwen2.5-coder", fim_rate=0.3,
                  spm_rate=0.0)
    _node_files(cfg, tmp_path / "run", gpus=2, hostfile=None)
    written = sorted((tmp_path / "run").glob("launch-config*.json"))
    assert written, list((tmp_path / "run").iterdir())
    again = FinetuneConfig.from_json(written[0])
    assert (again.family, again.fim_rate, again.spm_rate) == ("qwen2.5-coder", 0.3, 0.0)


def _records(paths: list[Path]):
    from trainer.corpus import read_records

    return read_records(paths)


def test_the_training_family_setting_reaches_training_and_evaluation(tmp_path: Path) -> None:
    from bot import config, recipe
    from bot.runs import new_run

    toml = tmp_path / "repotune.toml"
    toml.write_text('[training]\nfamily = "starcoder2"\nfim_rate = 0.3\nspm_rate = 0.1\n')
    settings = config.load(toml, env={"REPOTUNE_HOME": str(tmp_path / "home")})
    cfg = recipe.finetune_config(settings, new_run(repo=None, trigger={"kind": "push"}))
    assert (cfg.family, cfg.fim_rate, cfg.spm_rate) == ("starcoder2", 0.3, 0.1)
    assert recipe.eval_config(settings).family == "starcoder2"
    assert recipe.forward_eval_config(settings).family == "starcoder2"
    # [evaluation] family, where given, wins; neither given, the evaluation detects the family.
    toml.write_text('[training]\nfamily = "starcoder2"\n[evaluation]\nfamily = "qwen2.5-coder"\n')
    assert recipe.eval_config(config.load(toml, env={})).family == "qwen2.5-coder"
    toml.write_text("")
    plain = config.load(toml, env={})
    assert recipe.eval_config(plain).family is None and plain.training.family is None
