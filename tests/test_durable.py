"""The one atomic-write helper: readers never see a torn file, concurrent writers never collide."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from durable import write_atomic, write_json_atomic


def test_concurrent_writers_never_tear_or_collide(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    payloads = [json.dumps({"writer": i, "pad": "x" * 50_000}) for i in range(8)]
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if target.exists():
                seen.add(target.read_text())

    def writer(i: int) -> None:
        try:
            for _ in range(20):
                write_atomic(target, payloads[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    r.join()
    assert not errors
    assert seen <= set(payloads), "a reader saw a torn or mixed file"
    assert target.read_text() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"], "a temp file was left behind"


def test_failed_write_keeps_old_bytes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "eval.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
