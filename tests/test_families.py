"""The family registry: prompt formats, stop tokens, detection from a checkpoint, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from families import (
    BACKENDS,
    FAMILIES,
    MIDDLE,
    PREFIX,
    SUFFIX,
    FamilyError,
    build_fim_prompt,
    detect_checkpoint_family,
    detect_family,
    get_family,
    stop_tokens,
)
from trainer import errors as trainer_errors
from trainer.errors import TrainerError


def test_every_family_row_is_complete_and_consistent() -> None:
    assert set(FAMILIES) == {"codegen", "starcoder2", "qwen2.5-coder", "deepseek-coder", "codellama", "codegemma"}
    for fam in FAMILIES.values():
        assert fam.model_types and fam.eos_token and fam.context_length >= 2048, fam.name
        assert set(fam.backends) <= set(BACKENDS) and "python" in fam.backends, fam.name
        for fmt in (fam.psm, fam.spm):
            if fmt is not None:
                # Each placeholder exactly once, and every sentinel of the family in the format.
                assert [p for p in fmt if p in (PREFIX, SUFFIX, MIDDLE)].count(PREFIX) == 1
                assert sorted(p for p in fmt if p in (PREFIX, SUFFIX, MIDDLE)) == sorted((PREFIX, SUFFIX, MIDDLE))
                assert all(s in fmt for s in fam.sentinels), fam.name
    assert not FAMILIES["codegen"].has_fim and FAMILIES["codegen"].sentinels == ()
    assert FAMILIES["deepseek-coder"].spm is None  # published PSM only


@pytest.mark.parametrize(("family", "expected"), [
    ("starcoder2", "<fim_prefix>def f(<fim_suffix>)\n<fim_middle>"),
    ("qwen2.5-coder", "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>"),
    ("deepseek-coder", "<｜fim▁begin｜>def f(<｜fim▁hole｜>)\n<｜fim▁end｜>"),
    ("codellama", "<PRE> def f( <SUF>)\n <MID>"),
    ("codegemma", "<|fim_prefix|>def f(<|fim_suffix|>)\n<|fim_middle|>"),
])
def test_fim_prompts_follow_each_familys_published_format(family: str, expected: str) -> None:
    assert build_fim_prompt(family, "def f(", ")\n") == expected


def test_spm_prompt_where_trained_and_psm_fallback_where_not() -> None:
    assert build_fim_prompt("starcoder2", "P", "S", spm=True) == "<fim_prefix><fim_suffix>S<fim_middle>P"
    assert build_fim_prompt("deepseek-coder", "P", "S", spm=True) == build_fim_prompt("deepseek-coder", "P", "S")


def test_codegen_has_no_fim_prompt_and_says_what_to_do() -> None:
    with pytest.raises(FamilyError, match="left-to-right prompt.*family"):
        build_fim_prompt("codegen", "a", "b")


def test_stop_tokens_cover_end_of_text_and_every_sentinel() -> None:
    assert stop_tokens("codegen") == ("<|endoftext|>",)
    qwen = stop_tokens("qwen2.5-coder")
    assert qwen[0] == "<|endoftext|>"
    assert set(qwen) >= {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>",
                         "<|file_sep|>"}
    assert "<EOT>" in stop_tokens("codellama") and "</s>" in stop_tokens("codellama")
    assert "<|file_separator|>" in stop_tokens("codegemma")


def test_unknown_family_names_the_setting_and_the_choices() -> None:
    with pytest.raises(FamilyError) as info:
        get_family("starcoder3")
    message = str(info.value)
    assert "family" in message and "'starcoder3'" in message and "qwen2.5-coder" in message
    assert isinstance(info.value, ValueError)  # the leaf's root; the CLI shows it without a traceback
    assert issubclass(trainer_errors.FamilyError, (TrainerError, FamilyError))


def test_llama_checkpoints_are_told_apart_by_their_sentinels() -> None:
    deepseek_vocab = {"a", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"}
    codellama_vocab = {"a", "<PRE>", "<SUF>", "<MID>", "<EOT>"}
    assert detect_family("llama", deepseek_vocab).name == "deepseek-coder"
    assert detect_family("llama", codellama_vocab).name == "codellama"
    with pytest.raises(FamilyError, match="could be deepseek-coder, codellama.*set family"):
        detect_family("llama", {"a", "b"})
    # The explicit setting wins over whatever the vocabulary says.
    assert detect_family("llama", codellama_vocab, explicit="deepseek-coder").name == "deepseek-coder"


def test_model_types_map_to_families() -> None:
    assert detect_family("codegen", {"x"}).name == "codegen"
    assert detect_family("starcoder2", {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"}).name == "starcoder2"
    with pytest.raises(FamilyError, match="model_type 'gpt_neox'.*family"):
        detect_family("gpt_neox", {"x"})
    with pytest.raises(FamilyError, match="none of their FIM sentinels"):
        detect_family("qwen2", {"x"})  # a Qwen2 vocabulary without FIM tokens is not a coder model


def test_checkpoint_detection_reads_config_and_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
        "added_tokens": [{"id": 2, "content": "<PRE>"}, {"id": 3, "content": "<SUF>"}],
    }))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": {"4": {"content": "<MID>"}},
    }))
    assert detect_checkpoint_family(tmp_path).name == "codellama"
    assert detect_checkpoint_family(tmp_path, explicit="deepseek-coder").name == "deepseek-coder"
    with pytest.raises(FamilyError, match="config.json.*family"):
        detect_checkpoint_family(tmp_path / "missing")
