"""Fill-in-the-middle evaluation tasks: holes cut the way editors ask, with the real suffix."""

from __future__ import annotations

import random

import pytest

from trainer.evaluate.metrics import breakdown, score_completion
from trainer.evaluate.tasks import FIM_TASK_KINDS, build_tasks, is_trivial, truncate_right


def test_fim_tasks_rebuild_the_file_and_cut_where_documented(heldout_records):
    tasks = build_tasks(heldout_records, seed=0, n=80, corpus_version="v1", kinds=FIM_TASK_KINDS)
    texts = {r["path"]: r["text"] for r in heldout_records}
    assert {kind: sum(t.kind == kind for t in tasks) for kind in FIM_TASK_KINDS} == dict.fromkeys(FIM_TASK_KINDS, 20)
    for task in tasks:
        assert task.prompt + task.target + task.suffix == texts[task.path], task.task_id
        assert task.prompt.strip() and task.suffix.strip() and not is_trivial(task.target)
        line_before = task.prompt.rsplit("\n", 1)[-1]
        line_after = task.suffix.split("\n", 1)[0]
        if task.kind == "fim_inline":
            assert "\n" not in task.target and line_after.strip()  # the rest of the line follows the hole
            assert len(line_before.strip()) >= 3
        elif task.kind == "fim_line_end":
            assert "\n" not in task.target and not line_after.strip() and len(line_before.strip()) >= 3
        else:
            assert line_before == "" and not line_after.strip()
            if task.kind == "fim_line":
                assert "\n" not in task.target
            else:
                assert task.target_lines <= 5


def test_fim_draws_are_deterministic_and_leave_left_to_right_tasks_alone(heldout_records):
    kinds = ("line", "next_line", "block", *FIM_TASK_KINDS)
    mixed = build_tasks(heldout_records, seed=2, n=70, corpus_version="v9", kinds=kinds)
    shuffled = list(heldout_records)
    random.Random(5).shuffle(shuffled)
    again = build_tasks(shuffled, seed=2, n=70, corpus_version="v9", kinds=kinds)
    assert [t.as_dict() for t in mixed] == [t.as_dict() for t in again]
    assert {t.task_id for t in build_tasks(heldout_records, seed=3, n=70, corpus_version="v9", kinds=kinds)} != {
        t.task_id for t in mixed}
    # The left-to-right tasks of a mixed draw are the ones a left-to-right-only draw deals first.
    plain = build_tasks(heldout_records, seed=2, n=30, corpus_version="v9")
    assert [t.task_id for t in mixed if not t.kind.startswith("fim_")] == [t.task_id for t in plain]


def test_suffix_is_right_truncated_on_token_boundaries(heldout_records, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    full = build_tasks(heldout_records, seed=0, n=24, corpus_version="v1", kinds=FIM_TASK_KINDS)
    cut = build_tasks(heldout_records, seed=0, n=24, corpus_version="v1", kinds=FIM_TASK_KINDS,
                      tokenizer=tokenizer, max_prompt_tokens=64, max_suffix_tokens=20)
    assert [t.task_id for t in full] == [t.task_id for t in cut]
    for a, b in zip(full, cut, strict=True):
        assert a.suffix.startswith(b.suffix) and a.prompt.endswith(b.prompt) and a.target == b.target
        assert len(tokenizer(b.suffix, add_special_tokens=False)["input_ids"]) <= 21
    assert sum(len(b.suffix) < len(a.suffix) for a, b in zip(full, cut, strict=True)) > 20
    assert truncate_right("abc", tokenizer, 100) == "abc" and truncate_right("abc", tokenizer, 0) == ""


def test_scores_break_down_per_kind_and_language():
    rows = [
        {"kind": "fim_inline", "lang": "python", **score_completion("limit)", "limit)")},
        {"kind": "fim_inline", "lang": "go", **score_completion("x", "limit")},
        {"kind": "fim_block", "lang": "python", **score_completion("return limit + 1", "return limit + offset")},
    ]
    table = breakdown(rows)
    assert table["fim_inline"]["python"]["exact_match"] == 1.0
    assert table["fim_inline"]["go"]["exact_match"] == 0.0
    assert table["fim_inline"]["*"] == pytest.approx({"exact_match": 0.5, "edit_similarity": 0.5,
                                                      "identifier_match": 0.5, "n_tasks": 2})
    assert table["fim_block"]["python"]["identifier_match"] == 0.5 and table["fim_block"]["*"]["n_tasks"] == 1
    by_lang = breakdown(rows, outer="lang", inner="kind")
    assert by_lang["python"]["*"]["n_tasks"] == 2
