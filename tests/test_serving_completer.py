"""The completion pipeline without Flask: Completer.stream and complete against a real Triton."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import ModelRepository, TritonClient
from serving.completer import Completer, CompletionObserver, VersionRouter

MODEL = "completer"
PROMPT = "class Stack:\n    def push(self, item):\n"


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    version = repo.publish(python_artifact)
    repo.activate(version)
    return repo


def _completer(triton_server, triton_repo_root: Path, **kwargs) -> tuple[Completer, list[int]]:
    counted: list[int] = []
    completer = Completer(VersionRouter(triton_repo_root, MODEL), TritonClient(triton_server.url, MODEL),
                          model_name=MODEL, observer=CompletionObserver(tokens=counted.append), **kwargs)
    return completer, counted


def test_stream_yields_the_plain_greedy_text_in_chunks(deployed: ModelRepository, triton_server,
                                                       triton_repo_root: Path) -> None:
    completer, counted = _completer(triton_server, triton_repo_root, stream_chunk_tokens=4)
    plain_req = completer.parse({"prompt": PROMPT, "max_tokens": 20, "temperature": 0})
    plain = completer.complete(plain_req, completer.prepare(plain_req))
    assert plain.completion_tokens > 4
    assert counted == [plain.completion_tokens]

    req = completer.parse({"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "stream": True})
    stream = completer.stream(req, completer.prepare(req))
    events = list(stream.events)

    assert stream.version == deployed.current()
    assert all(e["model"] == f"{MODEL}@{deployed.current()}" for e in events)
    texts = [e["choices"][0]["text"] for e in events]
    assert "".join(texts) == plain.body["choices"][0]["text"]
    assert sum(1 for t in texts if t) >= -(-plain.completion_tokens // 4)  # chunks, not one burst
    assert [e["choices"][0]["finish_reason"] for e in events][:-1] == [None] * (len(events) - 1)
    assert events[-1]["choices"][0]["finish_reason"] == plain.body["choices"][0]["finish_reason"]
    # Every Triton call after the first chunk is reported (the first chunk is not: as before
    # the Completer was split out of the proxy's closures).
    assert sum(counted[1:]) == plain.completion_tokens - 4


def test_stream_holds_back_a_stop_string_and_ends_before_it(deployed: ModelRepository, triton_server,
                                                            triton_repo_root: Path) -> None:
    completer, _ = _completer(triton_server, triton_repo_root, stream_chunk_tokens=2)
    req = completer.parse({"prompt": PROMPT, "max_tokens": 24, "temperature": 0})
    full = completer.complete(req, completer.prepare(req)).body["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and stop in full

    req = completer.parse({"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": True, "stop": stop})
    events = list(completer.stream(req, completer.prepare(req)).events)
    text = "".join(e["choices"][0]["text"] for e in events)
    assert text == full[: full.index(stop)]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_past_its_deadline_ends_with_a_timeout_error(deployed: ModelRepository, triton_server,
                                                            triton_repo_root: Path) -> None:
    completer, _ = _completer(triton_server, triton_repo_root, stream_chunk_tokens=1, timeout_s=0.0)
    req = completer.parse({"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True})
    events = list(completer.stream(req, completer.prepare(req)).events)
    # The first chunk was generated before the stream started; the next one is past the deadline.
    assert events[-1]["error"]["code"] == "timeout"
    assert all("choices" in e for e in events[:-1])
