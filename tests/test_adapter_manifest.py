"""The adapter manifest (``families.adapters``): a base is named by path and content digest."""

from __future__ import annotations

import json

import pytest

from families.adapters import (
    AdapterError,
    AdapterManifest,
    checkpoint_digest,
    is_adapter,
    read_manifest,
    resolve_base,
    write_manifest,
)


def _checkpoint(root, weights: bytes):
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (root / "model.safetensors").write_bytes(weights)
    (root / "tokenizer.json").write_text("{}")
    return root


def test_digest_covers_weights_and_config_not_tokenizer(tmp_path):
    base = _checkpoint(tmp_path / "base", b"\x00" * 64)
    first = checkpoint_digest(base)
    (base / "tokenizer.json").write_text('{"changed": true}')
    assert checkpoint_digest(base) == first
    (base / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)
    assert checkpoint_digest(base) != first
    assert first.startswith("sha256:")


def test_manifest_round_trip_and_changed_base_is_refused(tmp_path):
    base = _checkpoint(tmp_path / "base", b"\x00" * 64)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert not is_adapter(adapter)
    with pytest.raises(AdapterError, match="not a RepoTune adapter"):
        read_manifest(adapter)
    manifest = AdapterManifest(base=str(base), base_digest=checkpoint_digest(base), family="qwen2.5-coder",
                               lora={"r": 16})
    write_manifest(adapter, manifest)
    assert is_adapter(adapter) and read_manifest(adapter) == manifest
    assert resolve_base(adapter) == base
    (base / "model.safetensors").write_bytes(b"\x02" * 64)
    with pytest.raises(AdapterError, match="changed"):
        resolve_base(adapter)
    with pytest.raises(AdapterError, match="missing"):
        resolve_base(adapter, tmp_path / "elsewhere")
