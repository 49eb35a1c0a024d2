"""Zero-downtime hot-swap under load, and rejection of broken versions, against a real Triton."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from serving import (
    VERSION_HEADER,
    ModelLoadFailed,
    ModelRepository,
    ProxyConfig,
    SmokeTestFailed,
    TritonClient,
    create_proxy_app,
)
from tests.fixtures.triton import serve_app

MODEL = "swap"
PROMPT = {"prompt": "def parse(line):\n    ", "max_tokens": 6, "temperature": 0}


class LoadClient:
    """Sends completions through the proxy at a steady rate; records every outcome."""

    def __init__(self, url: str, rate_per_s: float = 25.0, threads: int = 8) -> None:
        self.url = url
        self.n_threads = threads
        self.interval = 1.0 / rate_per_s
        # (time sent, status, version header, text); a slow answer never lowers the offered rate
        # because each of the threads keeps its own schedule.
        self.results: list[tuple[float, int, str | None, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        session = requests.Session()
        next_at = time.monotonic() + offset * self.interval
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                resp = session.post(f"{self.url}/v1/completions", json=PROMPT, timeout=30)
                text = resp.json()["choices"][0]["text"] if resp.ok else resp.text
                self.results.append((sent, resp.status_code, resp.headers.get(VERSION_HEADER), text))
            except requests.RequestException as exc:
                self.results.append((sent, 0, None, repr(exc)))
            next_at += self.n_threads * self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> LoadClient:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def swap_repo(triton_server, triton_repo_root: Path) -> ModelRepository:
    return ModelRepository(triton_repo_root, MODEL, triton_server.url, keep=3, drain_s=0.5)


@pytest.fixture(scope="module")
def swap_proxy(swap_repo: ModelRepository, triton_server, triton_repo_root: Path):
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30))
    with serve_app(app) as url:
        yield url


def _instance_loads(triton_server) -> int:
    """Model instances Triton has initialised so far (one per version load), from its log."""
    return Path(triton_server.log_path).read_text(errors="replace").count(
        f"TRITONBACKEND_ModelInstanceInitialize: {MODEL}_")


def _direct_text(triton_server, swap_proxy: str, version: int) -> list[int]:
    """Greedy tokens straight from Triton, pinned to one version (no proxy involved)."""
    from serving.repository import load_tokenizer

    tok = load_tokenizer(Path(triton_server.model_repository) / MODEL / str(version))
    client = TritonClient(triton_server.url, MODEL)
    gen = client.generate(tok(PROMPT["prompt"])["input_ids"], PROMPT["max_tokens"], top_k=1,
                          end_id=tok.eos_token_id, version=version)[0]
    return tok.decode(gen.tokens, skip_special_tokens=True)


def test_hot_swap_under_load_has_zero_failed_requests(swap_repo, swap_proxy, triton_server, make_artifact):
    first = swap_repo.publish(make_artifact("good"))
    swap_repo.activate(first)
    old_text = _direct_text(triton_server, swap_proxy, first)

    with LoadClient(swap_proxy, rate_per_s=25) as load:
        time.sleep(1.0)
        loads_before = _instance_loads(triton_server)
        started = time.monotonic()
        second = swap_repo.publish(make_artifact("perturbed"))
        swap_repo.activate(second)
        switched = time.monotonic()
        loads_during = _instance_loads(triton_server) - loads_before
        time.sleep(1.5)
    new_text = _direct_text(triton_server, swap_proxy, second)

    failures = [r for r in load.results if r[1] != 200]
    assert not failures, failures[:5]
    during = [r for r in load.results if started <= r[0] <= switched]
    duration = switched - started
    assert len(during) >= 20 * duration * 0.8, (len(during), duration)  # the load really ran
    assert old_text != new_text  # the versions are distinguishable by their answers
    before = [r for r in load.results if r[0] < started]
    after = [r for r in load.results if r[0] > switched]
    assert before and all(r[2] == str(first) and r[3] == old_text for r in before)
    assert after and all(r[2] == str(second) and r[3] == new_text for r in after)
    assert swap_repo.current() == second
    # Triton loaded only the new version (the serving one was neither reloaded nor loaded
    # twice), and the previous version stays loaded as the instant rollback target.
    assert loads_during == 1, loads_during
    client = TritonClient(triton_server.url, MODEL)
    assert client.model_ready(first) and client.model_ready(second)


@pytest.mark.parametrize("kind, error", [("corrupt", ModelLoadFailed), ("nan", SmokeTestFailed)])
def test_broken_version_is_rejected_and_old_keeps_serving(kind, error, swap_repo, swap_proxy, make_artifact):
    serving_before = swap_repo.current()
    assert serving_before is not None
    with LoadClient(swap_proxy, rate_per_s=10) as load:
        bad = swap_repo.publish(make_artifact(kind))
        with pytest.raises(error) as info:
            swap_repo.activate(bad)
        time.sleep(0.5)
    assert f"version {bad}" in str(info.value)
    assert swap_repo.current() == serving_before
    client = TritonClient(swap_repo.triton_url, MODEL)
    assert not client.model_ready(bad) and client.model_ready(serving_before)
    assert [v["failed"] for v in swap_repo.versions() if v["version"] == bad][0]
    assert load.results and all(r[1] == 200 and r[2] == str(serving_before) for r in load.results), \
        [r for r in load.results if r[1] != 200][:3]


def test_rollback_returns_to_previous_healthy_version_and_prunes_failed(swap_repo, swap_proxy,
                                                                          python_artifact, triton_server):
    serving = swap_repo.current()
    failed = [v["version"] for v in swap_repo.versions() if v["failed"]]
    assert failed  # left by the previous test
    back_to = swap_repo.rollback()
    assert back_to < serving
    assert swap_repo.current() == back_to
    resp = requests.post(f"{swap_proxy}/v1/completions", json=PROMPT, timeout=30)
    assert resp.status_code == 200 and resp.headers[VERSION_HEADER] == str(back_to)
    # Retention after the switch: failed versions are removed first, healthy ones kept (keep=3).
    left = swap_repo.versions()
    assert [v["version"] for v in left] == [back_to, serving]
    # Both are loaded now: rolling forward and back again loads nothing.
    loads_before = _instance_loads(triton_server)
    assert swap_repo.rollback(to=serving) == serving and swap_repo.current() == serving
    resp = requests.post(f"{swap_proxy}/v1/completions", json=PROMPT, timeout=30)
    assert resp.status_code == 200 and resp.headers[VERSION_HEADER] == str(serving)
    assert swap_repo.rollback() == back_to and swap_repo.current() == back_to
    resp = requests.post(f"{swap_proxy}/v1/completions", json=PROMPT, timeout=30)
    assert resp.status_code == 200 and resp.headers[VERSION_HEADER] == str(back_to)
    assert _instance_loads(triton_server) == loads_before
    # Version numbers are never reused, even after the failed ones were deleted.
    assert swap_repo.publish(python_artifact) == max(failed) + 1
