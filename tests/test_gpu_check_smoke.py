"""benchmarks/gpu_check.sh --smoke: the GPU check's code runs end to end on CPU and prints every
figure with a number (so the script cannot rot between the rare runs on a GPU machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIGURES = {
    "full_zero2": ("tokens_per_s", "mfu"),
    "lora": ("tokens_per_s", "peak_memory_gib"),
    "serving_c1": ("p50_ms", "p99_ms"),
    "serving_c8": ("p50_ms", "p99_ms"),
    "ft_convert": ("seconds",),
}
NUMBER = r"[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"


def test_gpu_check_smoke_prints_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke",
                           "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^GPU-CHECK (\S+) (.*)$", done.stdout, re.M)}
    for figure, keys in FIGURES.items():
        assert figure in lines, f"no {figure} line in:\n{done.stdout}"
        for key in keys:
            match = re.search(rf"\b{key}=({NUMBER})\b", lines[figure])
            assert match, f"{figure} has no number for {key}: {lines[figure]}"
            assert float(match.group(1)) > 0, f"{figure} {key} is zero: {lines[figure]}"
    assert "verified=True" in lines["ft_convert"]
    assert (tmp_path / "work" / "lora-run" / "repotune-adapter.json").is_file(), "LoRA wrote no adapter"
