"""What an adapter artifact is: LoRA weights plus a pointer to the base they were trained on.

A LoRA fine-tune produces kilobytes to megabytes of weights that mean nothing without the exact
base checkpoint they were trained against. An adapter folder therefore holds what ``peft``'s
``save_pretrained`` writes (``adapter_config.json``, ``adapter_model.safetensors``), the
tokenizer files, and :data:`MANIFEST` naming its base by path *and* content digest: a base that
changed under the same path (re-downloaded, re-converted) is detected before anything is served
or evaluated on a mismatched pair, instead of producing quiet garbage.

This module is a leaf (stdlib only) because the trainer writes adapters, the evaluator and the
serving repository read them, and the Triton python backend (which imports nothing of RepoTune's
packages but this folder's files) must tell one from a full checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST = "repotune-adapter.json"
"""The file that makes a folder a RepoTune adapter (beside peft's ``adapter_config.json``)."""

DIGEST_FILES = ("config.json",)
"""Digested in full besides the weights: a different architecture is a different base."""

WEIGHT_SUFFIXES = (".safetensors", ".bin")
"""Weight files of a checkpoint; their bytes are digested."""


class AdapterError(ValueError):
    """Not an adapter, an unreadable manifest, or an adapter whose base is missing or changed."""


@dataclass(frozen=True)
class AdapterManifest:
    """The adapter's base and how it was trained (``repotune-adapter.json``)."""

    base: str
    """Path of the base checkpoint folder the adapter applies to."""
    base_digest: str
    """:func:`checkpoint_digest` of that folder when the adapter was trained."""
    family: str | None = None
    """The base's model family (``families`` registry name), when known."""
    method: str = "lora"
    """How it was trained (only ``lora`` today)."""
    lora: dict = field(default_factory=dict)
    """Rank, alpha, dropout and target modules, as trained (for the record and the status page)."""

    def as_dict(self) -> dict:
        return asdict(self)


def checkpoint_digest(checkpoint: str | Path) -> str:
    """``sha256:<hex>`` over a checkpoint's ``config.json`` and weight files (names and bytes).

    Tokenizer files, READMEs and training state are left out: they do not change what an
    adapter's weights were added to. Files are streamed, so multi-gigabyte bases cost I/O,
    not memory.
    """
    root = Path(checkpoint)
    if not (root / "config.json").is_file():
        raise AdapterError(f"{root} is not a model checkpoint (no config.json)")
    digest = hashlib.sha256()
    names = sorted(p.name for p in root.iterdir()
                   if p.is_file() and (p.name in DIGEST_FILES or p.suffix in WEIGHT_SUFFIXES))
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(root / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def is_adapter(folder: str | Path) -> bool:
    """True when ``folder`` holds a RepoTune adapter (its manifest)."""
    return (Path(folder) / MANIFEST).is_file()


def write_manifest(folder: str | Path, manifest: AdapterManifest) -> Path:
    """Write the manifest into an adapter folder (atomically: a reader sees the old or the new)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest.as_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: str | Path) -> AdapterManifest:
    """The manifest of an adapter folder; :class:`AdapterError` when missing or malformed."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
        return AdapterManifest(base=str(data["base"]), base_digest=str(data["base_digest"]),
                               family=data.get("family"), method=str(data.get("method", "lora")),
                               lora=dict(data.get("lora") or {}))
    except FileNotFoundError:
        raise AdapterError(f"{folder} is not a RepoTune adapter (no {MANIFEST})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from exc


def resolve_base(folder: str | Path, base: str | Path | None = None) -> Path:
    """The base checkpoint of an adapter, checked against the recorded digest.

    ``base`` overrides the recorded path (a base moved to another disk); its digest must still
    match. Raises :class:`AdapterError` naming both digests when it does not.
    """
    manifest = read_manifest(folder)
    path = Path(base or manifest.base)
    if not path.is_dir():
        raise AdapterError(f"the base of adapter {folder} is missing: {path} (pass the base's new path)")
    found = checkpoint_digest(path)
    if found != manifest.base_digest:
        raise AdapterError(f"the base of adapter {folder} changed: {path} is {found}, the adapter was "
                           f"trained on {manifest.base_digest}; retrain the adapter on this base")
    return path
