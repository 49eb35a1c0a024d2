"""Test configuration: scrub the environment and load every fixture module in tests/fixtures."""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

import tests.fixtures as _fixtures

# Nothing in the suite may reach a model hub, and no developer setting may leak in.
for _key in list(os.environ):
    if _key.startswith("REPOTUNE_"):
        del os.environ[_key]
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    DS_ACCELERATOR="cpu",
    TORCH_EXTENSIONS_DIR=str(Path(__file__).resolve().parent.parent / ".torch_extensions"),
)

pytest_plugins = [
    f"tests.fixtures.{info.name}"
    for info in pkgutil.iter_modules(_fixtures.__path__)
    if not info.name.startswith("_")
]
