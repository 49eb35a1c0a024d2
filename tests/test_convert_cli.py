"""`repotune convert`: a path or a subcommand, one step from checkpoint to verified artifact."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli


def test_convert_ft_then_verify_and_check(codegen_small: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "art"
    res = runner.invoke(cli, ["convert", str(codegen_small), "--to", "fastertransformer",
                              "--gpus", "2", "--out", str(out), "--dtype", "fp16",
                              "--schema", "v1.2"])
    assert res.exit_code == 0, res.output
    assert "verified: max |Δ logit|" in res.output
    assert (out / "2-gpu" / "config.ini").is_file() and (out / "config.pbtxt").is_file()

    res = runner.invoke(cli, ["convert", "verify", str(out / "2-gpu"), "--reference", str(codegen_small)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["passed"] and report["tensor_parallel"] == 2 and report["weight_data_type"] == "fp16"

    res = runner.invoke(cli, ["convert", "check", str(out)])
    assert res.exit_code == 0 and "ok: fastertransformer artifact" in res.output, res.output

    (out / "2-gpu" / "model.lm_head.bias.bin").write_bytes(b"\0" * 12)
    res = runner.invoke(cli, ["convert", "check", str(out)])
    assert res.exit_code == 1
    assert "Error:" in res.output and "model.lm_head.bias.bin: 12 bytes" in res.output


def test_convert_python_and_errors(codegen_small: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", str(codegen_small), "--to", "python",
                              "--out", str(tmp_path / "py")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "py" / "model" / "config.json").is_file()
    # the same --out again is refused with a clear message, exit 1
    res = runner.invoke(cli, ["convert", str(codegen_small), "--to", "python",
                              "--out", str(tmp_path / "py")])
    assert res.exit_code == 1 and "already exists and is not empty" in res.output
    res = runner.invoke(cli, ["convert", "--help"])
    assert res.exit_code == 0 and "--to" in res.output and "verify" in res.output
    res = runner.invoke(cli, ["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "does not exist" in res.output
