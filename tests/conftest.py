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


def pytest_collection_modifyitems(items: list) -> None:
    """Files with a test marked ``slow`` first (otherwise in collection order): ``make test`` runs
    files on two processes (``--dist loadfile``), which take files in this order, so the longest
    start at once instead of one of them running alone at the end."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
