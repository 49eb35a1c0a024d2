"""Tokenisation cache keyed by shard checksum, and packing into blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.training import write_shard
from trainer.data import pack, prepare, tokenize_shards
from trainer.errors import FinetuneError


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_only_changed_shards_are_retokenised(corpus_shards, tokenizer, tmp_path: Path) -> None:
    cache = tmp_path / "tokenized"
    shards = [*corpus_shards.train, *corpus_shards.heldout]
    first = prepare(corpus_shards.train, corpus_shards.heldout, tokenizer, cache, 128)
    assert sorted(first.retokenized) == sorted(shards) and first.reused == []

    second = prepare(corpus_shards.train, corpus_shards.heldout, tokenizer, cache, 128)
    assert second.retokenized == [] and sorted(second.reused) == sorted(shards)
    assert second.train["input_ids"] == first.train["input_ids"]

    # A push rewrites one shard: only that one is tokenised again.
    changed = corpus_shards.train[1]
    write_shard(changed, [{"text": "def acme_new():\n    return 42\n", "path": "acme/new.py",
                           "repo": "acme/internal", "lang": "python", "sha": "0" * 40}])
    third = prepare(corpus_shards.train, corpus_shards.heldout, tokenizer, cache, 128)
    assert third.retokenized == [changed]
    assert sorted(third.reused) == sorted(p for p in shards if p != changed)
    assert third.train_shards[1].documents == 1
    assert len(third.train) < len(first.train)


def test_a_different_tokenizer_never_reuses_cached_ids(corpus_shards, tokenizer, tmp_path: Path) -> None:
    from trainer.tiny import train_tokenizer

    cache = tmp_path / "tokenized"
    tokenize_shards(corpus_shards.train, tokenizer, cache)
    other = train_tokenizer(["def other(): pass\n"] * 20, vocab_size=300)
    again = tokenize_shards(corpus_shards.train, other, cache)
    assert [s.reused for s in again] == [False] * len(corpus_shards.train)


def test_documents_end_with_eos_and_blocks_are_full(corpus_shards, tokenizer, tmp_path: Path) -> None:
    shards = tokenize_shards(corpus_shards.train, tokenizer, tmp_path / "c")
    docs = shards[0].load()["input_ids"]
    assert all(doc[-1] == tokenizer.eos_token_id for doc in docs)
    total = sum(s.tokens for s in shards)
    assert total == sum(len(d) for s in shards for d in s.load()["input_ids"])
    blocks = pack(shards, 100)
    assert len(blocks) == total // 100
    assert all(len(b) == 100 for b in blocks["input_ids"])
    # Packing concatenates shards in order: block 0 starts with shard 0's first document.
    assert blocks[0]["input_ids"][: len(docs[0])] == docs[0][:100]
    assert max(s.max_token_id for s in shards) < len(tokenizer)


def test_multiprocess_tokenisation_matches_single_process(corpus_shards, tokenizer, tmp_path: Path) -> None:
    one = tokenize_shards(corpus_shards.train[:1], tokenizer, tmp_path / "a", num_proc=1)
    two = tokenize_shards(corpus_shards.train[:1], tokenizer, tmp_path / "b", num_proc=2, batch_size=4)
    assert one[0].load()["input_ids"] == two[0].load()["input_ids"]


def test_too_little_text_for_one_block_fails_clearly(tokenizer, tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "train-00.jsonl.zst", [{"text": "x = 1\n", "path": "a.py", "repo": "r",
                                                          "lang": "python", "sha": "s"}])
    with pytest.raises(FinetuneError, match="fewer than one block of 2048"):
        prepare([shard], [], tokenizer, tmp_path / "c", 2048)
    with pytest.raises(FinetuneError, match="not found"):
        prepare([tmp_path / "nope.jsonl.zst"], [], tokenizer, tmp_path / "c", 16)


@pytest.fixture(scope="module")
def starcoder_tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from trainer import sample_code
    from trainer.tiny import init_tiny

    root = tmp_path_factory.mktemp("sc2")
    files = sample_code.generate(root / "src", files=40, seed=1)
    return AutoTokenizer.from_pretrained(init_tiny((p.read_text() for p in files), root / "model",
                                                   family="starcoder2"))


def _documents(flat: list[int], eos: int) -> list[list[int]]:
    """Complete documents of a packed stream (the partial one at the end is left out)."""
    docs, current = [], []
    for token in flat:
        current.append(token)
        if token == eos:
            docs.append(current)
            current = []
    return docs


def test_fim_examples_are_packed_recorded_and_reversible(corpus_shards, starcoder_tiny_tokenizer,
                                                         tmp_path: Path) -> None:
    from trainer.fim import FimIds, FimSettings, undo_fim

    tok = starcoder_tiny_tokenizer
    cache = tmp_path / "tokenized"
    settings = FimSettings("starcoder2", fim_rate=0.5, spm_rate=0.5, seed=1)
    data = prepare(corpus_shards.train, corpus_shards.heldout, tok, cache, 128, fim=settings)
    assert all(len(block) == 128 <= tok.model_max_length for block in data.train["input_ids"])
    fim = data.summary()["fim"]
    assert fim["family"] == "starcoder2" and fim["fim_rate"] == 0.5 and fim["seed"] == 1
    assert sum(fim["documents"].values()) == data.summary()["train_documents"]
    assert fim["documents"]["psm"] > 0 and fim["documents"]["spm"] > 0 and fim["documents"]["plain"] > 0

    fim_ids = FimIds.from_tokenizer("starcoder2", tok)
    flat = [t for block in data.train["input_ids"] for t in block]
    originals = [d for s in data.train_shards for d in s.load()["input_ids"]]
    packed = _documents(flat, tok.eos_token_id)
    assert len(packed) >= len(originals) - 2
    for example, original in zip(packed, originals, strict=False):
        counts = [example.count(s) for s in fim_ids.sentinel_ids]
        assert counts in ([0, 0, 0], [1, 1, 1])
        assert undo_fim(example[:-1], fim_ids) + [tok.eos_token_id] == original
    heldout = {t for block in data.heldout["input_ids"] for t in block}
    assert not heldout & set(fim_ids.sentinel_ids)  # held-out loss stays left to right

    # Same settings: same blocks, from the cache. Other settings: other blocks, still no re-tokenising.
    again = prepare(corpus_shards.train, corpus_shards.heldout, tok, cache, 128, fim=settings)
    assert again.retokenized == [] and again.train["input_ids"] == data.train["input_ids"]
    other = prepare(corpus_shards.train, corpus_shards.heldout, tok, cache, 128,
                    fim=FimSettings("starcoder2", seed=2))
    assert other.retokenized == [] and other.train["input_ids"] != data.train["input_ids"]
    plain = prepare(corpus_shards.train, corpus_shards.heldout, tok, cache, 128)
    assert plain.summary()["fim"] is None
    assert not {t for block in plain.train["input_ids"] for t in block} & set(fim_ids.sentinel_ids)


def test_fim_on_a_tokenizer_without_sentinels_fails_before_tokenising(corpus_shards, tokenizer,
                                                                      tmp_path: Path) -> None:
    from trainer.errors import FamilyError
    from trainer.fim import FimSettings

    with pytest.raises(FamilyError, match="not one token"):
        prepare(corpus_shards.train, [], tokenizer, tmp_path / "c", 128, fim=FimSettings("starcoder2"))
    assert not (tmp_path / "c").exists()
