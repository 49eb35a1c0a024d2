"""Read a Hugging Face checkpoint folder tensor by tensor, whatever its weight format.

Safetensors (single file or sharded with an index) are opened with ``safe_open`` so only the
tensor asked for is read; ``pytorch_model*.bin`` files are memory-mapped with
``torch.load(mmap=True)``. Every failure to read becomes :class:`CheckpointError` naming the
file and what to do.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from converter.errors import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""Files that make up a Hugging Face tokenizer; whichever exist are copied alongside weights."""


def read_config(src: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder as a dict."""
    path = Path(src) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src} has no config.json: pass a Hugging Face checkpoint folder "
                              "(the one save_pretrained wrote)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def weight_files(src: Path) -> list[Path]:
    """The weight files of a checkpoint folder, safetensors preferred over ``.bin``."""
    src = Path(src)
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        found = sorted(p for p in src.glob(pattern) if p.is_file())
        if found:
            return found
    raise CheckpointError(f"{src} holds no *.safetensors or pytorch_model*.bin weights")


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files present in ``src`` to ``dst``; error when there are none."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "vocab.json")):
        raise CheckpointError(f"{src} has no tokenizer (tokenizer.json or vocab.json + merges.txt); "
                              "save it next to the weights with tokenizer.save_pretrained()")
    return copied


def token_ids(src: Path) -> tuple[int, int, int]:
    """``(start_id, end_id, tokenizer_length)`` read from the tokenizer stored in ``src``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src))
    except Exception as exc:  # tokenizers raise many unrelated types
        raise CheckpointError(f"cannot load the tokenizer in {src}: {exc}") from exc
    end_id = tok.eos_token_id
    start_id = tok.bos_token_id if tok.bos_token_id is not None else end_id
    if end_id is None:
        raise CheckpointError(f"the tokenizer in {src} has no eos token; set eos_token and save it again")
    return int(start_id), int(end_id), len(tok)


class TensorReader:
    """Lazy access to every tensor of a checkpoint folder. Use as a context manager."""

    def __init__(self, src: Path) -> None:
        self.src = Path(src)
        self.files = weight_files(self.src)
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}
        self._open()

    def _open(self) -> None:
        for path in self.files:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
                except Exception as exc:  # safetensors raises its own SafetensorError
                    raise CheckpointError(
                        f"{path} is not a readable safetensors file ({exc}); it is probably "
                        "truncated or still being written: copy or save it again") from exc
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    self._where[key] = handle
            else:
                import torch

                try:
                    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
                except Exception as exc:  # zip/pickle errors come in many types
                    raise CheckpointError(
                        f"{path} cannot be loaded ({type(exc).__name__}: {exc}); the file is "
                        "probably truncated or corrupt: copy or save the checkpoint again") from exc
                if not isinstance(state, dict):
                    raise CheckpointError(f"{path} does not hold a state dict")
                for key, value in state.items():
                    self._where[key] = _Plain(value)

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._where[name]
        if isinstance(handle, _Plain):
            return tuple(handle.tensor.shape)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str):
        """The tensor ``name`` (a CPU ``torch.Tensor``)."""
        handle = self._where.get(name)
        if handle is None:
            raise CheckpointError(f"{self.src} has no tensor {name!r}")
        if isinstance(handle, _Plain):
            return handle.tensor
        try:
            return handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {self.src}: {exc}") from exc

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self.keys():
            yield name, self.get(name)

    def close(self) -> None:
        self._stack.close()
        self._where.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Plain:
    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor
