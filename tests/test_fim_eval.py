"""Evaluation of a FIM family: a tiny StarCoder2 trained on FIM examples against its
initialisation, on FIM tasks asked with the family's FIM prompt, metrics per task kind."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from families import build_fim_prompt, stop_tokens
from tests.fixtures.evaluation import sample_records
from trainer.errors import EvaluationError
from trainer.evaluate import EvalConfig, compare, forward_eval
from trainer.evaluate.generate import (
    fim_prompt_ids,
    generate_completions,
    load_model,
    model_family,
    stop_ids,
)
from trainer.evaluate.tasks import FIM_TASK_KINDS, build_tasks
from trainer.fim import FimIds, fim_transform
from trainer.tiny import init_tiny

STEPS = 200
CFG = dict(num_tasks=40, device="cpu", bootstrap=200, num_threads=1, max_new_tokens=24,
           block_max_new_tokens=64)


@pytest.fixture(scope="module")
def starcoder_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(untrained, FIM-trained) tiny StarCoder2: AdamW on FIM examples (rate 0.9, PSM only:
    the evaluation asks in PSM, and a model this small mixes the two orders up).

    A plain loop over :func:`trainer.fim.fim_transform` output, as the published recipe packs
    it (example, end-of-text, next example), so this test does not depend on the training job.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("fim-eval")
    records = sample_records(root / "train-src", files=60, seed=3)
    base = init_tiny([r["text"] for r in records], root / "base", family="starcoder2")
    tokenizer = AutoTokenizer.from_pretrained(base)
    fim_ids = FimIds.from_tokenizer("starcoder2", tokenizer)
    rng = random.Random(0)
    ids: list[int] = []
    for _ in range(3):  # three FIM draws per file: more holes to learn from
        for record in records:
            doc = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
            ids += fim_transform(doc, rng, fim_ids, 0.9, 0.0)[0] + [tokenizer.eos_token_id]
    data = torch.tensor(ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(STEPS):
            # Whole-context windows: a FIM prompt spans the context, so every position must be trained.
            starts = torch.randint(0, len(data) - 257, (4,), generator=generator).tolist()
            x = torch.stack([data[s:s + 256] for s in starts])
            loss = model(input_ids=x, labels=x).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 2.0, f"the FIM fine-tune did not learn (last loss {loss.item():.2f})"
    trained = root / "trained"
    model.eval().save_pretrained(trained, safe_serialization=True)
    tokenizer.save_pretrained(trained)
    return base, trained


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return sample_records(tmp_path_factory.mktemp("fim-heldout"), files=30, seed=7)


def test_fim_family_is_judged_on_fim_tasks_per_kind(starcoder_pair, heldout, tmp_path: Path) -> None:
    base, trained = starcoder_pair
    result = compare(trained, base, heldout, EvalConfig(**CFG), corpus_version="v1", out_dir=tmp_path)
    assert result.config.family == "starcoder2" and result.config.kinds == FIM_TASK_KINDS
    assert {t.kind for t in result.tasks} == set(FIM_TASK_KINDS)
    assert all(t.suffix.strip() for t in result.tasks)
    cand, basel = result.candidate, result.baseline
    assert set(cand.per_kind) == set(basel.per_kind) == set(FIM_TASK_KINDS)
    assert sum(int(v["n_tasks"]) for v in cand.per_kind.values()) == 40
    # 200 steps teach the tiny model the file layout: missing blocks are filled far better than
    # at initialisation (holes inside a line stay hard for a 64-wide model).
    assert cand.overall["edit_similarity"] > basel.overall["edit_similarity"] + 0.05
    assert cand.per_kind["fim_block"]["edit_similarity"] > basel.per_kind["fim_block"]["edit_similarity"] + 0.15
    assert set(result.per_kind) == set(FIM_TASK_KINDS)
    assert result.per_kind["fim_line_end"]["deltas"]["edit_similarity"] == pytest.approx(
        cand.per_kind["fim_line_end"]["edit_similarity"] - basel.per_kind["fim_line_end"]["edit_similarity"])
    # Answers never carry a sentinel, and one-line kinds never run past their line.
    assert all("<fim_" not in r["prediction"] for r in cand.rows)
    assert all("\n" not in r["prediction"] for r in cand.rows if r["kind"] != "fim_block")
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["config"]["family"] == "starcoder2" and data["tasks_by_kind"] == dict.fromkeys(FIM_TASK_KINDS, 10)
    report = (tmp_path / "report.md").read_text()
    assert "### Per task kind" in report and "| fim_block | 10 |" in report


def test_identical_fim_models_tie(starcoder_pair, heldout) -> None:
    _, trained = starcoder_pair
    result = compare(trained, trained, heldout, EvalConfig(**CFG), corpus_version="v2")
    assert not result.gate.passed
    assert result.deltas["edit_similarity"] == 0.0 and result.deltas["exact_match"] == 0.0
    assert all(info["deltas"]["edit_similarity"] == 0.0 for info in result.per_kind.values())


def test_fim_prompt_and_stops_are_the_familys(starcoder_pair, heldout) -> None:
    _, trained = starcoder_pair
    lm = load_model(trained, "cpu")
    cfg = EvalConfig(**CFG)
    tasks = build_tasks(heldout, seed=0, n=8, corpus_version="v", kinds=FIM_TASK_KINDS)
    task = tasks[0]
    family = model_family(lm)
    assert family is not None and family.name == "starcoder2"  # detected from the checkpoint
    ids = fim_prompt_ids(lm.tokenizer, family, task.prompt, task.suffix, 10_000)
    assert ids == lm.tokenizer(build_fim_prompt("starcoder2", task.prompt, task.suffix),
                               add_special_tokens=False)["input_ids"]
    short = fim_prompt_ids(lm.tokenizer, family, task.prompt, task.suffix, 40)
    assert len(short) <= 40 and lm.tokenizer.convert_tokens_to_ids("<fim_prefix>") == short[0]
    assert short[-1] == lm.tokenizer.convert_tokens_to_ids("<fim_middle>")
    vocab = lm.tokenizer.get_vocab()
    assert stop_ids(lm.tokenizer, family, lm.tokenizer.eos_token_id) == \
        [vocab[t] for t in stop_tokens("starcoder2")]
    completions = generate_completions(lm, tasks, cfg)
    assert len(completions) == 8 and all("<fim_" not in c.text for c in completions)


def test_forward_eval_uses_fim_tasks_and_codegen_refuses_them(starcoder_pair, heldout, tiny_model,
                                                              tmp_path: Path) -> None:
    _, trained = starcoder_pair
    entry = forward_eval(trained, heldout[:10], EvalConfig(**CFG), push="p1")
    assert entry["n_tasks"] > 0 and entry["scores"]["edit_similarity"] >= 0
    with pytest.raises(EvaluationError, match="cannot fill in the middle"):
        compare(tiny_model, None, heldout, EvalConfig(**CFG, kinds=("fim_line",)), corpus_version="v1")


def test_eval_config_accepts_fim_kinds_and_checks_family() -> None:
    assert EvalConfig().kinds is None and EvalConfig().family is None  # chosen by family at run time
    assert EvalConfig(kinds=["fim_line", "line"], family="qwen2.5-coder").kinds == ("fim_line", "line")
    with pytest.raises(ValueError, match="family='gpt9' is not one of codegen"):
        EvalConfig(family="gpt9")
    with pytest.raises(ValueError, match=r"kinds=\('fill',\)"):
        EvalConfig(kinds=("fill",))
