"""Real models through the whole evaluation: generation, loss, gate, reports, history, freshness."""

from __future__ import annotations

import json
import math

import pytest

from trainer.evaluate import (
    EvalConfig,
    build_tasks,
    compare,
    forward_eval,
    plot_history,
    read_history,
)
from trainer.evaluate.compare import cpu_threads
from trainer.evaluate.generate import generate_completions, load_model, record_losses

# One thread: the tiny model is far faster single-threaded on a busy 2-core machine.
CFG = dict(num_tasks=60, device="cpu", bootstrap=500, num_threads=1)


def test_finetuned_model_beats_its_initialisation_and_the_gate_passes(finetuned_tiny, tiny_model,
                                                                      heldout_records, tmp_path):
    events = []
    result = compare(finetuned_tiny, tiny_model, heldout_records, EvalConfig(**CFG), corpus_version="v1",
                     out_dir=tmp_path, progress=events.append)
    assert result.gate is not None and result.gate.passed, result.gate.reasons
    cand, base = result.candidate.overall, result.baseline.overall
    assert cand["edit_similarity"] > base["edit_similarity"] + 0.2
    assert cand["loss"] < base["loss"] - 3.0
    assert result.intervals["edit_similarity"].low > 0
    assert len(result.candidate.rows) == len(result.baseline.rows) == 60
    assert [r["task_id"] for r in result.candidate.rows] == [r["task_id"] for r in result.baseline.rows]
    assert set(result.per_language) >= {"python", "javascript"}
    generate = [e for e in events if e["stage"] == "generate"]
    assert {e["model"] for e in generate} == {"candidate", "baseline"}
    assert generate[-1]["done"] == generate[-1]["total"] == 60

    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["gate"]["passed"] is True
    assert data["task_count"] == 60 and data["tasks_by_kind"] == {"line": 20, "next_line": 20, "block": 20}
    assert data["config"]["margin"] == 0.005
    assert data["intervals"]["edit_similarity"]["low"] > 0
    assert len(data["candidate"]["tasks"]) == 60
    report = (tmp_path / "report.md").read_text()
    assert "**Gate: PASSED" in report
    assert "| edit similarity |" in report and "| python |" in report


def test_identical_models_are_rejected(finetuned_tiny, heldout_records):
    result = compare(finetuned_tiny, finetuned_tiny, heldout_records, EvalConfig(**CFG), corpus_version="v1")
    assert not result.gate.passed
    assert set(result.gate.failed_checks) == {"margin", "interval"}
    assert result.deltas["edit_similarity"] == 0.0 and result.deltas["loss"] == 0.0


def test_damaged_model_is_rejected(damaged_tiny, finetuned_tiny, heldout_records, tmp_path):
    result = compare(damaged_tiny, finetuned_tiny, heldout_records, EvalConfig(**CFG), corpus_version="v1",
                     out_dir=tmp_path)
    assert not result.gate.passed
    assert result.deltas["edit_similarity"] < 0 and result.deltas["loss"] > 0.05
    assert "tolerance:loss" in result.gate.failed_checks
    assert "**Gate: REJECTED" in (tmp_path / "report.md").read_text()


def test_batched_generation_matches_one_by_one(finetuned_tiny, heldout_records):
    lm = load_model(finetuned_tiny, "cpu")
    tasks = build_tasks(heldout_records, seed=2, n=24, corpus_version="v1")
    with cpu_threads(1):
        batched = generate_completions(lm, tasks, EvalConfig(batch_size=8, device="cpu"))
        single = generate_completions(lm, tasks, EvalConfig(batch_size=1, device="cpu"))
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(c.latency_ms > 0 and c.new_tokens >= 1 for c in batched)
    for task, completion in zip(tasks, batched, strict=True):
        if task.kind != "block":
            assert "\n" not in completion.text
        else:
            assert completion.text.count("\n") < task.target_lines


def test_record_loss_matches_the_model_loss(finetuned_tiny, heldout_records):
    import torch

    lm = load_model(finetuned_tiny, "cpu")
    record = min(heldout_records, key=lambda r: len(r["text"]))
    ids = lm.tokenizer(record["text"], add_special_tokens=False)["input_ids"]
    assert 2 <= len(ids) <= lm.context
    with cpu_threads(1), torch.no_grad():
        (nll, count), = record_losses(lm, [record], max_tokens=10_000)
        expected = lm.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert count == len(ids) - 1
    assert nll / count == pytest.approx(expected, rel=1e-4)


def test_scoring_without_baseline_and_the_history_chart(finetuned_tiny, tiny_model, heldout_records, tmp_path):
    cfg = EvalConfig(num_tasks=15, device="cpu", bootstrap=100, num_threads=1)
    solo = compare(tiny_model, None, heldout_records, cfg, corpus_version="v1", out_dir=tmp_path / "r1")
    assert solo.gate is None and solo.baseline is None and solo.deltas == {}
    assert "| metric | candidate |" in (tmp_path / "r1" / "report.md").read_text()
    compare(finetuned_tiny, tiny_model, heldout_records, cfg, corpus_version="v1", out_dir=tmp_path / "r2")

    history = tmp_path / "freshness.jsonl"
    entry = forward_eval(finetuned_tiny, heldout_records[:8], cfg, push="abc123", history=history)
    forward_eval(finetuned_tiny, heldout_records[8:16], cfg, push="def456", history=history)
    assert entry["push"] == "abc123" and entry["n_tasks"] > 0
    assert 0.0 <= entry["scores"]["edit_similarity"] <= 1.0 and math.isfinite(entry["scores"]["loss"])
    assert [e["push"] for e in read_history(history)] == ["abc123", "def456"]

    png = plot_history([tmp_path / "r1" / "eval.json", tmp_path / "r2" / "eval.json"], tmp_path / "history.png")
    fresh = plot_history([history], tmp_path / "freshness.png")
    for path in (png, fresh):
        head = path.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_errors_say_what_was_tried(tmp_path, heldout_records, finetuned_tiny):
    from trainer.errors import EvaluationError

    with pytest.raises(EvaluationError, match="no held-out records"):
        compare(finetuned_tiny, None, [], EvalConfig(**CFG), corpus_version="v1")
    with pytest.raises(EvaluationError, match=r"no model checkpoint at .*config\.json"):
        compare(tmp_path / "missing", None, heldout_records, EvalConfig(**CFG), corpus_version="v1")
    blank = [{"text": "\n\n}\n", "path": "x.py", "lang": "python", "repo": "r", "sha": ""}]
    with pytest.raises(EvaluationError, match="no completion tasks"):
        compare(finetuned_tiny, None, blank, EvalConfig(**CFG), corpus_version="v1")
    empty_push = forward_eval(finetuned_tiny, [], EvalConfig(**CFG), push="p0", history=tmp_path / "h.jsonl")
    assert empty_push["n_tasks"] == 0 and read_history(tmp_path / "h.jsonl")[0]["push"] == "p0"
