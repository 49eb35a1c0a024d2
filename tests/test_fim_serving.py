"""FIM families on the python backend: tiny StarCoder2 and Qwen2.5-Coder models converted,
published and activated on the real Triton, answering FIM prompts token for token as
transformers' own greedy ``generate`` does on the same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import converter
from converter import CheckpointError
from families import build_fim_prompt, get_family, stop_tokens
from serving import ModelRepository, TritonClient
from trainer import sample_code
from trainer.tiny import TinyModelConfig, init_tiny

FAMILIES = ("starcoder2", "qwen2.5-coder")
PREFIX = "def parse_line(line: str) -> dict:\n    fields = line.split(\",\")\n    "
SUFFIX = "\n    return record\n\n\ndef main():\n    pass\n"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def fim_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model per FIM family, tokenizers trained on the sample codebase.

    Weight seed 1: with seed 0 the random StarCoder2 answers the repository's smoke prompt with
    end-of-text at once, and activation (rightly) refuses a model that generates nothing."""
    root = tmp_path_factory.mktemp("fim-models")
    texts = [p.read_text() for p in sorted(sample_code.generate(root / "src", files=40, seed=5))]
    return {fam: init_tiny(texts, root / fam, TinyModelConfig(seed=1), family=fam) for fam in FAMILIES}


@pytest.fixture(scope="module")
def deployed(fim_models, triton_server, triton_repo_root: Path, tmp_path_factory) -> dict[str, ModelRepository]:
    """Each family converted with ``to="python"``, published and activated under its own name."""
    out = {}
    for fam, src in fim_models.items():
        name = "fim-" + fam.replace(".", "")
        art = converter.convert(src, tmp_path_factory.mktemp("fim-art") / name, to="python",
                                model_name=name).artifact
        repo = ModelRepository(triton_repo_root, name, triton_server.url)
        repo.activate(repo.publish(art))
        out[fam] = repo
    return out


def _reference(src: Path, ids: list[int], stops: list[int], new: int) -> list[int]:
    """transformers' greedy generate, stopping on any of the family's single-token stops."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, eos_token_id=stops, pad_token_id=stops[0])
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_fim_prompt_on_triton_equals_transformers_greedy(family, fim_models, deployed) -> None:
    from transformers import AutoTokenizer

    repo = deployed[family]
    src = fim_models[family]
    tok = AutoTokenizer.from_pretrained(src)
    prompt = build_fim_prompt(family, PREFIX, SUFFIX)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids(get_family(family).fim_middle)  # the FIM sentinels are single tokens in the prompt
    stop_ids = [tok.convert_tokens_to_ids(t) for t in stop_tokens(family)]
    assert tok.eos_token_id == stop_ids[0]
    client = TritonClient(repo.triton_url, repo.model_name)
    # The proxy's request: stop words for every sentinel, end_id the family's end-of-text.
    gen = client.generate(ids, NEW_TOKENS, top_k=1, stop_words=[[s] for s in stop_ids[1:]],
                          end_id=stop_ids[0], return_log_probs=True)[0]
    expected = _reference(src, ids, stop_ids, NEW_TOKENS)
    if expected and expected[-1] == stop_ids[0]:
        expected = expected[:-1]  # end-of-text ends the completion without being emitted
    assert gen.tokens == expected
    assert len(gen.tokens) >= 1 and all(0 <= t < len(tok) for t in gen.tokens)

    # A stop word the model really emits ends the completion right after it.
    stop_at = gen.tokens[2] if len(gen.tokens) > 3 else gen.tokens[0]
    first = gen.tokens.index(stop_at)
    cut = client.generate(ids, NEW_TOKENS, top_k=1, stop_words=[[stop_at]], end_id=stop_ids[0])[0]
    assert cut.tokens == gen.tokens[:first + 1]

    # Batched rows of different lengths (left-padded inside the model) give each row's own answer.
    short = tok(build_fim_prompt(family, "x = ", "\n"), add_special_tokens=False)["input_ids"]
    both = client.generate([ids, short], NEW_TOKENS, top_k=1, end_id=stop_ids[0])
    alone = client.generate(short, NEW_TOKENS, top_k=1, end_id=stop_ids[0])[0]
    assert both[1].tokens == alone.tokens
    assert both[0].tokens[:len(gen.tokens)] == _reference(src, ids, [stop_ids[0]], NEW_TOKENS)[:len(gen.tokens)]


def test_artifact_records_the_family_and_ft_refuses_it(fim_models, tmp_path: Path) -> None:
    src = fim_models["starcoder2"]
    art = converter.convert(src, tmp_path / "py", to="python", verify=True).artifact
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["family"] == "starcoder2" and meta["backend"] == "python"
    assert (art / "model" / "tokenizer.json").is_file()
    assert converter.check_artifact(art)["vocab_size"] == meta["vocab_size"]
    with pytest.raises(CheckpointError, match=r"starcoder2 checkpoint.*fastertransformer.*to='python'"):
        converter.convert(src, tmp_path / "ft", to="fastertransformer")
    assert not (tmp_path / "ft").exists()
