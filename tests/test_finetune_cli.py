"""``repotune model init-tiny`` and ``repotune train`` on a corpus built from a real git repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.cli import cli


@pytest.mark.timeout(240)
def test_init_tiny_then_train_from_the_cli(make_repo, tmp_path: Path) -> None:
    repo = make_repo(files=80, seed=4)
    home = tmp_path / "home"
    runner = CliRunner()
    built = runner.invoke(cli, ["corpus", "build", repo.url, "--name", "acme", "--home", str(home)])
    assert built.exit_code == 0, built.output

    model = tmp_path / "tiny"
    init = runner.invoke(cli, ["model", "init-tiny", "--corpus", "acme", "--out", str(model),
                               "--vocab-size", "512", "--home", str(home)])
    assert init.exit_code == 0, init.output
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()

    out = tmp_path / "run"
    args = ["train", "--corpus", "acme", "--base", str(model), "--out", str(out), "--deepspeed", "none",
            "--max-steps", "6", "--eval-every", "3", "--lr", "3e-3", "--batch", "2", "--home", str(home)]
    trained = runner.invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    assert "trained 6 steps" in trained.output and "held-out loss" in trained.output
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 6
    # The tokenisation cache lives with the corpus, so the next run reuses every shard.
    assert (home / "corpus" / "acme" / "tokenized").is_dir()
    again = runner.invoke(cli, [*args[:6], str(tmp_path / "run2"), *args[7:]])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "run2" / "train.json").read_text())
    assert second["extras"]["data"]["retokenized"] == []
    assert len(second["extras"]["data"]["reused"]) == len(summary["extras"]["data"]["retokenized"]) > 0


def test_train_on_an_unknown_corpus_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--corpus", "nope", "--base", "x", "--out", str(tmp_path / "o"),
                                      "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "repotune corpus build" in result.output


def test_multi_node_options_reach_the_launcher_checks(make_repo, tmp_path: Path) -> None:
    repo = make_repo(files=12, seed=5)
    home = tmp_path / "home"
    runner = CliRunner()
    built = runner.invoke(cli, ["corpus", "build", repo.url, "--name", "acme", "--home", str(home)])
    assert built.exit_code == 0, built.output
    result = runner.invoke(cli, ["train", "--corpus", "acme", "--base", "x", "--out", str(tmp_path / "o"),
                                 "--num-nodes", "2", "--node-rank", "2", "--dist-timeout", "0",
                                 "--home", str(home)])
    assert result.exit_code == 1, result.output
    for needle in ("node_rank=2: must be in 0..1", "master_addr is required", "dist_timeout_s=0",
                   "gpus (ranks per node) is required"):
        assert needle in result.output, result.output


@pytest.mark.timeout(120)
def test_init_tiny_writes_the_family_asked_for(make_repo, tmp_path: Path) -> None:
    from families import detect_checkpoint_family
    from trainer.tiny import FAMILY_ALIASES

    repo = make_repo(files=12, seed=6)
    home = tmp_path / "home"
    runner = CliRunner()
    built = runner.invoke(cli, ["corpus", "build", repo.url, "--name", "acme", "--home", str(home)])
    assert built.exit_code == 0, built.output
    for family, detected in [("starcoder2", "starcoder2"), ("llama", "deepseek-coder")]:
        out = tmp_path / family
        init = runner.invoke(cli, ["model", "init-tiny", "--corpus", "acme", "--out", str(out), "--family", family,
                                   "--vocab-size", "400", "--home", str(home)])
        assert init.exit_code == 0, init.output
        assert f"tiny {family} model written to {out}" in init.output
        assert detect_checkpoint_family(out).name == detected
    unknown = runner.invoke(cli, ["model", "init-tiny", "--corpus", "acme", "--out", str(tmp_path / "x"),
                                  "--family", "gpt5", "--home", str(home)])
    assert unknown.exit_code == 2 and "qwen2.5-coder" in unknown.output and not (tmp_path / "x").exists()
    help_text = runner.invoke(cli, ["model", "init-tiny", "--help"]).output
    assert all(alias in help_text for alias in FAMILY_ALIASES)
