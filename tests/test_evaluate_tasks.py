"""Task building: determinism, the three task kinds, trivial targets, token truncation."""

from __future__ import annotations

import random

import pytest

from trainer.evaluate import build_tasks
from trainer.evaluate.tasks import is_trivial, truncate_left


def test_same_seed_and_version_give_identical_tasks_in_any_record_order(heldout_records):
    first = build_tasks(heldout_records, seed=3, n=90, corpus_version="v7")
    shuffled = list(heldout_records)
    random.Random(1).shuffle(shuffled)
    second = build_tasks(shuffled, seed=3, n=90, corpus_version="v7")
    assert len(first) == 90
    assert [t.as_dict() for t in first] == [t.as_dict() for t in second]


def test_seed_and_corpus_version_change_the_draw(heldout_records):
    base = {t.task_id for t in build_tasks(heldout_records, seed=0, n=60, corpus_version="v1")}
    other_version = {t.task_id for t in build_tasks(heldout_records, seed=0, n=60, corpus_version="v2")}
    other_seed = {t.task_id for t in build_tasks(heldout_records, seed=1, n=60, corpus_version="v1")}
    assert base != other_version
    assert base != other_seed


def test_a_smaller_draw_is_a_prefix_of_a_larger_one(heldout_records):
    small = build_tasks(heldout_records, seed=0, n=12, corpus_version="v1")
    large = build_tasks(heldout_records, seed=0, n=45, corpus_version="v1")
    assert [t.task_id for t in small] == [t.task_id for t in large[:12]]


def test_kinds_are_balanced_and_cut_where_documented(heldout_records):
    tasks = build_tasks(heldout_records, seed=0, n=60, corpus_version="v1")
    texts = {r["path"]: r["text"] for r in heldout_records}
    counts = {kind: sum(t.kind == kind for t in tasks) for kind in ("line", "next_line", "block")}
    assert counts == {"line": 20, "next_line": 20, "block": 20}
    for task in tasks:
        text = texts[task.path]
        assert text.startswith(task.prompt), task.task_id
        rest = text[len(task.prompt):]
        assert not is_trivial(task.target)
        if task.kind == "line":
            line_so_far = task.prompt.rsplit("\n", 1)[-1]
            assert len(line_so_far.strip()) >= 3
            assert rest.split("\n", 1)[0].rstrip() == task.target
        else:
            assert task.prompt.endswith("\n")
            assert task.target.strip() and task.target == task.target.rstrip()
            assert rest.startswith(task.target)
            if task.kind == "next_line":
                assert "\n" not in task.target
            else:
                assert task.target_lines <= 5
                # The target is exactly the next lines of the file, trailing blank lines trimmed.
                assert task.target == "\n".join(rest.split("\n")[:5]).rstrip()


def test_trivial_targets_are_skipped():
    records = [{"text": "x = [\n    1,\n]\n)\n}\n", "path": "a.py", "lang": "python", "repo": "r", "sha": "s"}]
    tasks = build_tasks(records, seed=0, n=50, corpus_version="v", kinds=("next_line",))
    assert [t.target for t in tasks] == ["    1,"]
    assert is_trivial("  });  ") and is_trivial("") and not is_trivial("x")


def test_unknown_kind_is_refused(heldout_records):
    with pytest.raises(ValueError, match="unknown task kinds"):
        build_tasks(heldout_records, seed=0, n=5, corpus_version="v", kinds=("fill",))


def test_prompts_are_left_truncated_on_token_boundaries(heldout_records, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    full = build_tasks(heldout_records, seed=0, n=30, corpus_version="v1")
    cut = build_tasks(heldout_records, seed=0, n=30, corpus_version="v1", tokenizer=tokenizer,
                      max_prompt_tokens=40)
    assert [t.task_id for t in full] == [t.task_id for t in cut]
    shortened = 0
    for a, b in zip(full, cut, strict=True):
        assert a.prompt.endswith(b.prompt)
        n_tokens = len(tokenizer(b.prompt, add_special_tokens=False)["input_ids"])
        assert n_tokens <= 41  # a boundary token may re-merge differently once cut
        shortened += len(b.prompt) < len(a.prompt)
    assert shortened > 20
    assert truncate_left("abc", tokenizer, 100) == "abc"
    assert truncate_left("abc", tokenizer, 0) == ""


def _fixed_records() -> list[dict]:
    """Hand-written files, so the golden digest below depends on tasks.py alone."""
    records = []
    for k in range(6):
        lines = []
        for j in range(25):
            lines += [f"def acme_func_{k}_{j}(value, limit={j}):", f"    if value > limit:  # guard {j}",
                      f"        return AcmeClient(value).call_{j % 4}(limit)", "    return None", ""]
        records.append({"text": "\n".join(lines) + "\n", "path": f"pkg/mod_{k}.py", "repo": "acme/x",
                        "lang": "python" if k % 2 else "go", "sha": str(k)})
    return records


def test_left_to_right_tasks_are_byte_identical_to_before_fim_kinds_existed():
    import hashlib
    import json

    tasks = build_tasks(_fixed_records(), seed=4, n=75, corpus_version="v3")
    rows = [[t.task_id, t.kind, t.prompt, t.target, t.path, t.lang, t.repo, t.line] for t in tasks]
    # Digest of the same draw by tasks.py before the FIM kinds were added (commit e43ef82).
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == (
        "c1c848f6a3d497ad4a7e68cee88516419a58cde98a072c51efdd421cd8979955")
    assert all(t.suffix == "" for t in tasks)
