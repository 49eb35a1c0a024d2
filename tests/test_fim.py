"""The token-level FIM transform: round trip, sentinel counts, rates, determinism, a real vocabulary."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from families import FamilyError, build_fim_prompt, get_family, stop_tokens
from trainer import sample_code
from trainer._vocab import ensure_starcoder_vocab
from trainer.fim import FimApplier, FimIds, FimSettings, fim_transform, undo_fim
from trainer.tiny import init_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    files = sample_code.generate(tmp_path_factory.mktemp("fim-src"), files=24, seed=5)
    return [p.read_text() for p in sorted(files)]


@pytest.fixture(scope="module")
def tiny_tokenizers(texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("fim-tiny")
    return {fam: AutoTokenizer.from_pretrained(init_tiny(texts, root / fam, family=fam))
            for fam in ("starcoder2", "codellama", "deepseek-coder", "codegen")}


@pytest.fixture(scope="module")
def starcoder_tokenizer():
    """The real StarCoder2 vocabulary (49,152 tokens) from the llama-cpp-python sdist (`make vocab`)."""
    from transformers import AutoTokenizer

    path = ensure_starcoder_vocab(REPO / ".cache" / "vocab")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _check_examples(tokenizer, family: str, texts: list[str], draws: int = 6) -> set[str]:
    """Every transformed file decodes back to the original; each sentinel appears exactly once."""
    fim_ids = FimIds.from_tokenizer(family, tokenizer)
    modes = set()
    for n, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for draw in range(draws):
            out, mode = fim_transform(ids, random.Random(n * 100 + draw), fim_ids, 1.0, 0.5)
            modes.add(mode)
            assert [out.count(s) for s in fim_ids.sentinel_ids] == [1, 1, 1], (family, mode)
            restored = undo_fim(out, fim_ids)
            assert restored == ids
            assert tokenizer.decode(restored) == text
            assert len(out) == len(ids) + sum(len(p) for p in (fim_ids.spm if mode == "spm" else fim_ids.psm)
                                              if isinstance(p, tuple))
    return modes


@pytest.mark.parametrize("family", ["starcoder2", "codellama", "deepseek-coder"])
def test_fim_examples_round_trip_to_the_original_file(tiny_tokenizers, texts, family: str) -> None:
    modes = _check_examples(tiny_tokenizers[family], family, texts)
    assert modes == ({"psm"} if family == "deepseek-coder" else {"psm", "spm"})


def test_psm_example_reads_in_the_familys_order(tiny_tokenizers) -> None:
    tok = tiny_tokenizers["starcoder2"]
    fim_ids = FimIds.from_tokenizer("starcoder2", tok)
    ids = list(range(100, 110))
    rng = random.Random(0)
    out, mode = fim_transform(ids, rng, fim_ids, 1.0, 0.0)
    pre, suf, mid = fim_ids.sentinel_ids
    assert mode == "psm" and out[0] == pre
    p_end, m_start = out.index(suf), out.index(mid) + 1
    prefix, suffix, middle = out[1:p_end], out[p_end + 1:m_start - 1], out[m_start:]
    assert prefix + middle + suffix == ids
    spm, mode = fim_transform(ids, random.Random(0), fim_ids, 1.0, 1.0)
    assert mode == "spm" and spm[:2] == [pre, suf]  # <fim_prefix><fim_suffix>S<fim_middle>PM


def test_rates_decide_how_many_files_are_cut(tiny_tokenizers) -> None:
    tok = tiny_tokenizers["starcoder2"]
    doc = list(range(200, 260))

    def counts(fim_rate: float, spm_rate: float, seed: int = 0) -> dict[str, int]:
        applier = FimApplier.create(FimSettings("starcoder2", fim_rate, spm_rate, seed), tok)
        for i in range(400):
            applier(doc, "shard", i)
        return applier.summary()["documents"]

    assert counts(0.0, 0.5) == {"plain": 400, "psm": 0, "spm": 0}
    assert counts(1.0, 0.0) == {"plain": 0, "psm": 400, "spm": 0}
    assert counts(1.0, 1.0) == {"plain": 0, "psm": 0, "spm": 400}
    half = counts(0.5, 0.5)
    assert 160 <= half["plain"] <= 240 and 60 <= half["spm"] <= 140
    assert counts(0.5, 0.5) == half  # same seed, same draws
    assert counts(0.5, 0.5, seed=1) != half


def test_same_seed_key_and_index_give_the_same_example(tiny_tokenizers) -> None:
    tok = tiny_tokenizers["starcoder2"]
    settings = FimSettings("starcoder2", 1.0, 0.5, seed=7)
    a, b = FimApplier.create(settings, tok), FimApplier.create(settings, tok)
    doc = list(range(300, 380))
    assert [a(doc, "k", i) for i in range(20)] == [b(doc, "k", i) for i in reversed(range(20))][::-1]
    assert a(doc, "k", 0) != a(doc, "other-shard", 0) or a(doc, "k", 1) != a(doc, "other-shard", 1)


def test_summary_records_settings_and_psm_only_families(tiny_tokenizers) -> None:
    applier = FimApplier.create(FimSettings("deepseek-coder", 1.0, 1.0, seed=3), tiny_tokenizers["deepseek-coder"])
    applier(list(range(10, 40)), "s", 0)
    summary = applier.summary()
    assert summary == {"family": "deepseek-coder", "fim_rate": 1.0, "spm_rate": 0.0, "seed": 3,
                       "documents": {"plain": 0, "psm": 1, "spm": 0}, "sentinel_tokens_added": 3,
                       "files_with_sentinels": 0}


def test_files_that_already_hold_a_sentinel_stay_left_to_right(tiny_tokenizers) -> None:
    tok = tiny_tokenizers["starcoder2"]
    applier = FimApplier.create(FimSettings("starcoder2", 1.0, 0.5), tok)
    doc = tok('PROMPT = "<fim_prefix>" + prefix\n', add_special_tokens=False)["input_ids"]
    assert applier(doc, "s", 0) == doc
    assert applier.summary()["files_with_sentinels"] == 1 and applier.summary()["documents"]["plain"] == 1


def test_bad_settings_and_wrong_tokenizers_fail_clearly(tiny_tokenizers) -> None:
    with pytest.raises(FamilyError, match="fim_rate=1.5.*spm_rate=-0.1"):
        FimApplier.create(FimSettings("starcoder2", 1.5, -0.1), tiny_tokenizers["starcoder2"])
    with pytest.raises(FamilyError, match="'codegen' has no fill-in-the-middle.*fim_rate"):
        FimApplier.create(FimSettings("codegen", 0.5), tiny_tokenizers["codegen"])
    assert FimApplier.create(FimSettings("codegen", 0.0), tiny_tokenizers["codegen"]).fim_ids is None
    with pytest.raises(FamilyError, match="'<fim_prefix>'.*not one token"):
        FimIds.from_tokenizer("starcoder2", tiny_tokenizers["codegen"])
    with pytest.raises(FamilyError, match="family"):
        FimApplier.create(FimSettings("starcoder9"), tiny_tokenizers["starcoder2"])


def test_real_starcoder2_vocabulary_matches_the_registry(starcoder_tokenizer) -> None:
    tok = starcoder_tokenizer
    fam = get_family("starcoder2")
    assert len(tok) == 49152
    fim_ids = FimIds.from_tokenizer(fam, tok)  # raises unless each sentinel is a single token
    assert fim_ids.sentinel_ids == (1, 3, 2)  # <fim_prefix>=1, <fim_suffix>=3, <fim_middle>=2
    assert tok.convert_tokens_to_ids([fam.repo_name_token, fam.file_sep_token, fam.eos_token]) == [5, 6, 0]
    for token in stop_tokens(fam):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token
    prompt = tok(build_fim_prompt(fam, "def add(a, b):\n    return ", "\n"), add_special_tokens=False)["input_ids"]
    assert prompt[0] == 1 and prompt[-1] == 2 and prompt.count(3) == 1


def test_fim_transform_round_trips_with_the_real_tokenizer(starcoder_tokenizer, texts) -> None:
    assert _check_examples(starcoder_tokenizer, "starcoder2", texts[:8], draws=4) == {"psm", "spm"}
