"""The whole loop on one machine, as `make run` starts it (issue 9's end-to-end proof).

Real Redis (embedded redis-server), real Triton (bundled tritonserver, python backend), real
RQ workers in their own processes, real DeepSpeed training on CPU, a local bare repository as
the forge, signed GitHub webhooks over HTTP, and the `openai` SDK through the proxy:

1. first push → corpus → DeepSpeed training → the gate passes against the untrained base →
   converted, published, activated → a completion through the proxy;
2. second push → incremental ingest → a new run → the served version changes while a client
   polls the proxy the whole time, with no failed request;
3. a run configured to be worse (a destructive learning rate) → rejected by the gate; the
   served version is unchanged; the run and its report say why.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

from bot import demo, demo_run, up
from tests.fixtures.stack import running_up

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


class Poller(threading.Thread):
    """Sends completions through the proxy back to back and records every outcome."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = requests.post(self.url, json={"prompt": "def load_", "max_tokens": 4,
                                                       "temperature": 0}, timeout=30)
                if answer.status_code == 200 and answer.json()["choices"]:
                    self.ok.append(answer.json()["model"])
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.stop.wait(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """`repotune up` on embedded defaults (no configuration), in a fresh home."""
    with running_up(tmp_path_factory.mktemp("home"), max_steps=40, num_tasks=120) as tree:
        yield tree


def _push(tree: up.Up, files: int, seed: int) -> tuple[str, float]:
    paths = demo.DemoPaths(tree.settings.home)
    before = demo.run_git(paths.work, "rev-parse", "HEAD")
    demo.add_code(paths, files, seed)
    after = demo.commit_and_push(paths, f"batch {seed}")
    started = time.monotonic()
    answer = demo_run.deliver_github(tree.urls["webhook_github"], paths.secret.read_text().strip(), "push",
                                 demo_run.github_push_payload(demo.DEMO_FULL_NAME, paths.bare.as_uri(),
                                                          before, after))
    assert answer["status"] == "accepted" and answer["queued"][0]["kind"] == "ingest", answer
    return after, started


def _serving_version(tree: up.Up) -> int | None:
    from serving import ModelRepository

    return ModelRepository(tree.settings.home / "triton", tree.settings.serving.model_name,
                           tree.settings.serving.triton_url).current()


def test_push_to_serving_hot_swap_and_gate(stack: up.Up, capsys: pytest.CaptureFixture[str]) -> None:
    tree = stack
    home = tree.settings.home
    base_url = tree.urls["completions"].removesuffix("/completions")
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    # The bootstrap serves the untrained base model as version 1 before any push.
    assert _serving_version(tree) == 1
    first = client.completions.create(model="codegen", prompt="def load_", max_tokens=8, temperature=0)
    assert first.model.endswith("@1")

    # 1. First push: the whole pipeline, gate passes against the untrained base.
    commit, started = _push(tree, files=30, seed=101)
    run = demo_run.wait_for_run(home, commit, timeout=400)
    first_latency = time.monotonic() - started
    assert run.status.value == "serving", (run.status, run.error, run.history)
    assert run.metrics["gate"]["passed"] is True
    assert run.metrics["baseline"].endswith("models/base")
    assert run.version == 2 and _serving_version(tree) == 2
    assert [h[0] for h in run.history] == ["queued", "ingesting", "training", "evaluating",
                                           "converting", "publishing", "serving"]
    train_json = json.loads((Path(run.checkpoint) / "train.json").read_text())
    assert train_json["extras"]["deepspeed"] == "zero2" and train_json["steps"] == 40
    assert train_json["heldout_curve"][-1][1] < train_json["heldout_curve"][0][1]
    completion = client.completions.create(model="codegen", prompt="def load_invoice_", max_tokens=16,
                                           temperature=0)
    assert completion.model.endswith("@2")
    assert completion.choices[0].text.strip(), "the served model answered with empty text"

    # 2. Second push while a client polls the proxy: zero failed requests across the swap.
    corpus_before = json.loads((home / "corpus" / demo.DEMO_REPO / "corpus.json").read_text())
    poller = Poller(tree.urls["completions"])
    poller.start()
    commit, started = _push(tree, files=15, seed=202)
    run2 = demo_run.wait_for_run(home, commit, timeout=400)
    second_latency = time.monotonic() - started
    deadline = time.monotonic() + 30
    while not any(m.endswith("@3") for m in poller.ok) and time.monotonic() < deadline:
        time.sleep(0.1)  # let the poller observe the new version at least once
    poller.stop.set()
    poller.join(60)
    corpus_after = json.loads((home / "corpus" / demo.DEMO_REPO / "corpus.json").read_text())
    assert run2.status.value == "serving", (run2.status, run2.error)
    assert run2.version == 3 and _serving_version(tree) == 3
    assert corpus_after["version"] == corpus_before["version"] + 1
    assert poller.failures == [], poller.failures[:5]
    assert len(poller.ok) >= 20
    versions = [m.rsplit("@", 1)[1] for m in poller.ok]
    assert versions[0] == "2" and versions[-1] == "3"
    assert versions == sorted(versions), "answers went back to the old version after the switch"

    # 3. A destructive learning rate: the gate rejects the run, version 3 keeps serving.
    paths = demo.DemoPaths(home)
    text = paths.config.read_text()
    paths.config.write_text(text.replace("learning_rate = 0.002", "learning_rate = 0.5"))
    commit, _ = _push(tree, files=10, seed=303)
    run3 = demo_run.wait_for_run(home, commit, timeout=400)
    assert run3.status.value == "rejected", (run3.status, run3.error)
    assert run3.version is None and _serving_version(tree) == 3
    assert run3.metrics["gate"]["passed"] is False
    assert "loss" in (run3.error or "")
    report = Path(run3.eval_report).read_text()
    assert "REJECTED" in report.upper() and "held-out loss" in report
    still = client.completions.create(model="codegen", prompt="def load_", max_tokens=4, temperature=0)
    assert still.model.endswith("@3")

    with capsys.disabled():
        print(f"\npush-to-serving: first push {first_latency:.1f}s, second push {second_latency:.1f}s; "
              f"{len(poller.ok)} polled completions during the swap, {len(poller.failures)} failed")
