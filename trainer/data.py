"""Tokenise the corpus's zstd JSONL shards and pack them into fixed-length training blocks.

Two steps, kept apart so that a push touching 2 of 64 shards re-tokenises only those 2:

1. :func:`tokenize_shards` turns each shard into an Arrow dataset of per-document token ids
   (each document followed by the end-of-text token) and stores it in a cache keyed by
   ``(tokenizer fingerprint, sha256 of the shard's bytes)``. An unchanged shard is read back
   from the cache; :class:`TokenizedShard.reused` says which happened.
2. :func:`pack` concatenates the cached documents of all shards and cuts them into
   ``block_size`` blocks (the original recipe's ``group_texts``, done once over the whole corpus
   with Arrow/numpy instead of per 1000-document batch, so at most one partial block is dropped).
   With FIM settings (:class:`trainer.fim.FimSettings`), each training document is first turned
   into a fill-in-the-middle example by :mod:`trainer.fim` (token level, per file, seeded), so the
   transform lives after the cache: changing ``fim_rate`` never re-tokenises.

The block size is not part of the cache key: packing is cheap, tokenising is not.

Cache layout (``cache_dir`` is ``corpus/<name>/tokenized`` under ``REPOTUNE_HOME``)::

    <cache_dir>/<tokenizer-fingerprint>/<shard-sha256>/   dataset (save_to_disk) + meta.json
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.fim import FimApplier, FimSettings

ProgressFn = Callable[[dict[str, Any]], None]

CACHE_FORMAT = 1
"""Bumped when the cached layout changes, so old caches are ignored rather than misread."""


@dataclass(frozen=True)
class TokenizedShard:
    """One shard's tokenised documents, as stored in the cache."""

    source: Path
    """The ``*.jsonl.zst`` shard that was read."""
    sha256: str
    """Checksum of the shard's bytes: the cache key."""
    cache_path: Path
    """Folder holding the tokenised dataset (``datasets.load_from_disk``)."""
    documents: int
    tokens: int
    """Token count including one end-of-text token per document."""
    max_token_id: int
    """Largest token id in the shard (-1 if empty), checked against the model's embedding rows."""
    reused: bool
    """True when the cache already held this shard; False when it was (re)tokenised now."""

    def load(self):
        """The cached ``datasets.Dataset`` with one ``input_ids`` row per document."""
        import datasets

        return datasets.load_from_disk(str(self.cache_path))


@dataclass
class PreparedData:
    """Packed train/held-out blocks plus a record of what the cache did."""

    train: Any
    """``datasets.Dataset`` of ``input_ids`` blocks, each ``block_size`` long."""
    heldout: Any | None
    """Same for the held-out shards (``None`` when there are none)."""
    block_size: int
    train_shards: list[TokenizedShard] = field(default_factory=list)
    heldout_shards: list[TokenizedShard] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time spent tokenising and packing."""
    fim: dict[str, Any] | None = None
    """What the fill-in-the-middle transform did to the training documents (``None``: not asked)."""

    @property
    def shards(self) -> list[TokenizedShard]:
        return [*self.train_shards, *self.heldout_shards]

    @property
    def retokenized(self) -> list[Path]:
        """Shards tokenised in this call (cache misses)."""
        return [s.source for s in self.shards if not s.reused]

    @property
    def reused(self) -> list[Path]:
        """Shards read back from the cache."""
        return [s.source for s in self.shards if s.reused]

    @property
    def max_token_id(self) -> int:
        return max((s.max_token_id for s in self.shards), default=-1)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly account for ``train.json``."""
        return {
            "block_size": self.block_size,
            "train_blocks": len(self.train),
            "heldout_blocks": len(self.heldout) if self.heldout is not None else 0,
            "train_documents": sum(s.documents for s in self.train_shards),
            "train_tokens_tokenized": sum(s.tokens for s in self.train_shards),
            "retokenized": [str(p) for p in self.retokenized],
            "reused": [str(p) for p in self.reused],
            "seconds": round(self.seconds, 3),
            "fim": self.fim,
        }


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A short stable hash of everything that decides token ids (vocab, merges, normalisers).

    Part of the cache key: a different base model's tokenizer must never reuse cached ids.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:  # slow tokenizer: the vocabulary decides the ids
        payload = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps({"eos": tokenizer.eos_token_id, "format": CACHE_FORMAT})
    return hashlib.sha256((payload + extra).encode()).hexdigest()[:16]


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        from trainer.errors import FinetuneError

        raise FinetuneError(
            "the tokenizer has no end-of-text token; documents could not be separated when packing. "
            "Set tokenizer.eos_token (CodeGen uses '<|endoftext|>') and save it with the base model."
        )
    return int(tokenizer.eos_token_id)


def tokenize_shards(
    paths: Sequence[Path | str],
    tokenizer,
    cache_dir: Path | str,
    *,
    num_proc: int = 1,
    batch_size: int = 256,
    progress: ProgressFn | None = None,
) -> list[TokenizedShard]:
    """Tokenise each shard (batched, ``num_proc`` processes) unless the cache already has it.

    Returns one :class:`TokenizedShard` per path, in the order given.
    """
    from datasets.utils import logging as ds_logging

    cache_root = Path(cache_dir) / tokenizer_fingerprint(tokenizer)
    cache_root.mkdir(parents=True, exist_ok=True)
    eos = _eos_id(tokenizer)
    out: list[TokenizedShard] = []
    # Our progress events replace datasets' per-step bars; restore the global switch after.
    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        _tokenize_all(paths, tokenizer, cache_root, eos, num_proc, batch_size, progress, out)
    finally:
        if bars_were_on:
            ds_logging.enable_progress_bar()
    return out


def _tokenize_all(paths, tokenizer, cache_root: Path, eos: int, num_proc: int, batch_size: int,
                  progress: ProgressFn | None, out: list[TokenizedShard]) -> None:
    total = len(paths)
    for i, raw in enumerate(paths):
        path = Path(raw)
        sha = file_sha256(path)
        target = cache_root / sha
        meta = _read_meta(target)
        if meta is None:
            meta = _tokenize_one(path, sha, target, tokenizer, eos, num_proc, batch_size)
            reused = False
        else:
            reused = True
        out.append(TokenizedShard(source=path, sha256=sha, cache_path=target, documents=meta["documents"],
                                  tokens=meta["tokens"], max_token_id=meta["max_token_id"], reused=reused))
        if progress:
            progress({"stage": "tokenize", "done": i + 1, "total": total, "reused": reused})


def _read_meta(target: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((target / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def _tokenize_one(path: Path, sha: str, target: Path, tokenizer, eos: int, num_proc: int,
                  batch_size: int) -> dict[str, Any]:
    import datasets
    import pyarrow.compute as pc

    work = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=target.parent))
    try:
        # One shard is small (the corpus keeps them ~128 KB): reading it straight into an
        # in-memory Dataset skips the json builder's per-file setup and two on-disk arrow copies,
        # which cost more than the tokenising itself at this size.
        raw = datasets.Dataset.from_dict({"text": _read_texts(path)})
        tokenized = raw.map(
            _TokenizeBatch(tokenizer, eos),
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc > 1 and len(raw) >= 2 * num_proc else None,
            remove_columns=raw.column_names,
            desc=None,
            new_fingerprint=f"tok-{sha[:16]}",
        )
        ids = tokenized.data.column("input_ids")
        flat = pc.list_flatten(ids)
        meta = {
            "format": CACHE_FORMAT,
            "source": path.name,
            "sha256": sha,
            "documents": len(tokenized),
            "tokens": len(flat),
            "max_token_id": int(pc.max(flat).as_py()) if len(flat) else -1,
            "created": time.time(),
        }
        staged = work / "dataset"
        tokenized.save_to_disk(str(staged))
        (staged / "meta.json").write_text(json.dumps(meta))
        _fsync_dir(staged)
        try:
            os.rename(staged, target)
        except OSError:
            # Another rank or process finished the same shard first; its copy is identical.
            if _read_meta(target) is None:
                raise
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_texts(path: Path) -> list[str]:
    """The ``text`` of every line of a ``.jsonl.zst`` (or plain ``.jsonl``) corpus shard."""
    from trainer.errors import FinetuneError

    data = path.read_bytes()
    if path.suffix == ".zst":
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(data).read()
    texts = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise FinetuneError(f"{path}:{number}: not a JSON line ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise FinetuneError(f"{path}:{number}: corpus lines need a string 'text' field")
        texts.append(record["text"])
    return texts


class _TokenizeBatch:
    """Picklable batch function (multi-process ``map`` ships it to workers)."""

    def __init__(self, tokenizer, eos: int) -> None:
        self.tokenizer = tokenizer
        self.eos = eos

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        # add_special_tokens=False: CodeGen adds none anyway; the EOS below separates files.
        encoded = self.tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False,
                                 verbose=False)["input_ids"]
        return {"input_ids": [ids + [self.eos] for ids in encoded]}


def _fsync_dir(folder: Path) -> None:
    for item in folder.iterdir():
        if item.is_file():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())


def pack(shards: Sequence[TokenizedShard], block_size: int, max_blocks: int | None = None,
         fim: FimApplier | None = None, eos: int | None = None):
    """Concatenate every shard's documents and cut them into ``block_size`` blocks.

    Returns a ``datasets.Dataset`` with one fixed-size ``input_ids`` list per row (int32).
    The trailing partial block is dropped (at most ``block_size - 1`` tokens for the corpus).
    ``max_blocks`` keeps only the first blocks (used to bound held-out evaluation time).
    With ``fim`` (and the tokenizer's ``eos`` id), every document is passed through the FIM
    transform first; its end-of-text token stays last.
    """
    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for shard in shards:
        if not shard.tokens:
            continue
        column = shard.load().data.column("input_ids")
        if fim is None:
            parts.extend(pc.list_flatten(chunk).to_numpy(zero_copy_only=False) for chunk in column.chunks)
        else:
            parts.extend(_fim_documents(column, shard.sha256, fim, eos))
    flat = np.concatenate(parts).astype(np.int32, copy=False) if parts else np.zeros(0, np.int32)
    n_blocks = len(flat) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    values = pa.array(flat[: n_blocks * block_size], type=pa.int32())
    blocks = pa.FixedSizeListArray.from_arrays(values, block_size)
    return datasets.Dataset(pa.table({"input_ids": blocks}))


def _fim_documents(column, key: str, fim: FimApplier, eos: int | None):
    """Each cached document of one shard as a FIM-transformed numpy array (end-of-text kept last)."""
    import numpy as np

    index = 0
    for chunk in column.chunks:
        for ids in chunk.to_pylist():
            tail = ids[-1:] if ids and ids[-1] == eos else []
            body = ids[:-1] if tail else ids
            yield np.asarray(fim(body, key, index) + tail, dtype=np.int32)
            index += 1


def prepare(
    train_files: Sequence[Path | str],
    heldout_files: Sequence[Path | str],
    tokenizer,
    cache_dir: Path | str,
    block_size: int,
    *,
    num_proc: int = 1,
    max_eval_blocks: int | None = None,
    progress: ProgressFn | None = None,
    fim: FimSettings | None = None,
) -> PreparedData:
    """Tokenise (through the cache) and pack the train and held-out shards.

    ``fim`` turns training documents into fill-in-the-middle examples before packing (see
    :mod:`trainer.fim`); held-out blocks stay left to right, so their loss stays comparable
    between runs and with the production model. The settings and counts land in
    :attr:`PreparedData.fim`.
    """
    from trainer.errors import FinetuneError
    from trainer.fim import FimApplier

    started = time.perf_counter()
    applier = FimApplier.create(fim, tokenizer) if fim is not None else None
    train_files = sorted(Path(p) for p in train_files)
    heldout_files = sorted(Path(p) for p in heldout_files)
    missing = [str(p) for p in (*train_files, *heldout_files) if not p.is_file()]
    if missing:
        raise FinetuneError(f"corpus shard(s) not found: {', '.join(missing)}; run `repotune corpus update` "
                            "first or check the corpus name")
    all_shards = tokenize_shards([*train_files, *heldout_files], tokenizer, cache_dir, num_proc=num_proc,
                                 progress=progress)
    train_shards = all_shards[: len(train_files)]
    heldout_shards = all_shards[len(train_files):]
    train = pack(train_shards, block_size, fim=applier, eos=_eos_id(tokenizer))
    if len(train) == 0:
        tokens = sum(s.tokens for s in train_shards)
        raise FinetuneError(
            f"the training shards hold {tokens} tokens, fewer than one block of {block_size}; "
            "add code to the corpus or lower block_size"
        )
    heldout = pack(heldout_shards, block_size, max_eval_blocks) if heldout_shards else None
    if heldout is not None and len(heldout) == 0:
        # A small held-out split still deserves a loss: one shorter block of all its tokens.
        tokens = sum(s.tokens for s in heldout_shards)
        heldout = pack(heldout_shards, tokens, 1) if tokens > 1 else None
    return PreparedData(train=train, heldout=heldout, block_size=block_size, train_shards=train_shards,
                        heldout_shards=heldout_shards, seconds=time.perf_counter() - started,
                        fim=applier.summary() if applier is not None else None)
