"""A publish killed midway (SIGKILL, OOM, node loss) leaves nothing in Triton's model folder
once the next publish or start has run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import ModelRepository

MODEL = "crashy"


def _killed_publish(root: Path, artifact: Path) -> None:
    """Start a publisher in another process and SIGKILL it while its staging folder exists."""
    code = ("import sys; from serving import ModelRepository; "
            f"ModelRepository(sys.argv[1], {MODEL!r}, None).publish(sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(artifact)],
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    deadline = time.monotonic() + 60
    model_dir = root / MODEL
    while not list(model_dir.glob(".publish-*")):
        assert proc.poll() is None, "the publisher finished before it could be killed"
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.005)  # polling the folder: the event under test is the folder appearing
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(model_dir.glob(".publish-*")), "the kill should have left the staging folder"


@pytest.fixture
def heavy_artifact(python_artifact: Path, tmp_path: Path) -> Path:
    """The tiny artifact plus 256 MB of padding, so the copy is slow enough to be killed in."""
    art = tmp_path / "heavy"
    shutil.copytree(python_artifact, art)
    with open(art / "model" / "padding.bin", "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    return art


def test_next_publish_removes_what_a_killed_publish_left(tmp_path: Path, heavy_artifact: Path,
                                                         python_artifact: Path) -> None:
    root = tmp_path / "triton"
    _killed_publish(root, heavy_artifact)
    version = ModelRepository(root, MODEL, None).publish(python_artifact)
    assert version == 1, "the killed publish must not have taken a version number"
    assert sorted(p.name for p in (root / MODEL).iterdir() if p.name.startswith(".publish")) == []
    assert (root / MODEL / "1" / "artifact.json").is_file()


def test_start_removes_what_a_killed_publish_left(tmp_path: Path, heavy_artifact: Path) -> None:
    root = tmp_path / "triton"
    _killed_publish(root, heavy_artifact)
    assert ModelRepository(root, MODEL, None).ensure_loaded() is None  # nothing published yet
    assert not list((root / MODEL).glob(".publish-*"))
