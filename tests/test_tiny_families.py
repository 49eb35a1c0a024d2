"""init_tiny per family: the right architecture, detectable, sentinels as single tokens, runnable."""

from __future__ import annotations

from pathlib import Path

import pytest

from families import FamilyError, build_fim_prompt, detect_checkpoint_family, get_family
from trainer import sample_code
from trainer.tiny import init_tiny

CASES = [
    ("codegen", "codegen", "CodeGenForCausalLM", "codegen"),
    ("starcoder2", "starcoder2", "Starcoder2ForCausalLM", "starcoder2"),
    ("qwen2.5-coder", "qwen2.5-coder", "Qwen2ForCausalLM", "qwen2"),
    ("llama", "deepseek-coder", "LlamaForCausalLM", "llama"),
    ("codellama", "codellama", "LlamaForCausalLM", "llama"),
    ("codegemma", "codegemma", "GemmaForCausalLM", "gemma"),
]


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    files = sample_code.generate(tmp_path_factory.mktemp("tiny-src"), files=30, seed=2)
    return [p.read_text() for p in sorted(files)]


@pytest.mark.parametrize(("requested", "family", "model_class", "model_type"), CASES)
def test_tiny_model_of_each_family(texts, tmp_path: Path, requested: str, family: str, model_class: str,
                                   model_type: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = init_tiny(texts, tmp_path / "model", family=requested)
    config = AutoConfig.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    fam = get_family(family)
    assert config.model_type == model_type and type(model).__name__ == model_class
    assert detect_checkpoint_family(out).name == family
    assert config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == fam.eos_token and config.eos_token_id == tokenizer.eos_token_id
    for token in fam.special_tokens:
        ids = tokenizer(f"x = 1{token}y", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids, token  # never split into pieces
    prompt = build_fim_prompt(fam, "def f(a):\n    return ", "\n") if fam.has_fim else "def f(a):\n"
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_codegen_default_keeps_a_single_special_token(texts, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = init_tiny(texts, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.all_special_tokens == ["<|endoftext|>"]
    assert "<fim_prefix>" not in tokenizer.get_vocab()


def test_unknown_family_is_refused_before_anything_is_written(texts, tmp_path: Path) -> None:
    with pytest.raises(FamilyError, match="family"):
        init_tiny(texts, tmp_path / "model", family="gpt5")
    assert not (tmp_path / "model").exists()
