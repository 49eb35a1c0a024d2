"""Issue 13 §3: the proxy's limits and keys, each answered with a clear OpenAI-shaped 4xx."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import requests

from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.http import HttpLimits, HttpServer

MODEL = "limits"


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(python_artifact))
    return repo


def _cfg(triton_server, triton_repo_root: Path, **kwargs) -> ProxyConfig:
    return ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root, model_name=MODEL,
                       timeout_s=30, **kwargs)


def test_a_25_mb_prompt_is_refused_fast_with_flat_memory(deployed, triton_server, triton_repo_root: Path) -> None:
    """Served by the production edge with a body limit raised past 25 MB, so the proxy's cheap
    character check (not waitress, not the tokenizer) is what refuses it."""
    app = create_proxy_app(_cfg(triton_server, triton_repo_root, max_body_bytes=64 << 20))
    server = HttpServer(app, "127.0.0.1", 0, HttpLimits(max_body_bytes=64 << 20), name="limits").start()
    try:
        body = b'{"prompt": "' + b"x" * (25 << 20) + b'", "max_tokens": 8}'
        tracemalloc.start()
        resp = requests.post(f"{server.url}/v1/completions", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "prompt_too_long"
        # The body and its decoded string, a few times over at most; tokenizing would be far more.
        # (How fast: benchmarks/serving_bench.py prints it; a timed assert fails on a busy machine.)
        assert peak < 8 * len(body), f"peak {peak / 2**20:.0f} MiB"
    finally:
        server.stop()


def test_body_size_choices_stops_and_max_tokens_limits(deployed, triton_server, triton_repo_root: Path) -> None:
    client = create_proxy_app(_cfg(triton_server, triton_repo_root, max_body_bytes=1024, max_choices=4,
                                   max_stops=2, max_stop_chars=8, max_tokens_limit=32)).test_client()
    big = client.post("/v1/completions", data=b'{"prompt": "' + b"x" * 2000 + b'"}',
                      content_type="application/json")
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "body_too_large"
    cases = [({"prompt": ["a", "b"], "n": 3}, "too_many_choices"),
             ({"prompt": "a", "stop": ["1", "2", "3"]}, "too_many_stops"),
             ({"prompt": "a", "stop": "123456789"}, "stop_too_long")]
    for body, code in cases:
        resp = client.post("/v1/completions", json=body)
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == code, body
    over = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 33})
    assert over.status_code == 400 and over.get_json()["error"]["param"] == "max_tokens"


def test_concurrent_streams_beyond_the_limit_get_429(deployed, triton_server, triton_repo_root: Path) -> None:
    app = create_proxy_app(_cfg(triton_server, triton_repo_root, max_concurrent_streams=1, stream_chunk_tokens=1))
    server = HttpServer(app, "127.0.0.1", 0, name="streams").start()
    try:
        body = {"prompt": "def f():\n", "max_tokens": 40, "temperature": 0, "stream": True}
        first = requests.post(f"{server.url}/v1/completions", json=body, stream=True, timeout=30)
        lines = first.iter_lines()
        assert next(lines).startswith(b"data: ")  # the first stream is open and holds the slot
        second = requests.post(f"{server.url}/v1/completions", json=body, timeout=30)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_streams"
        rest = [line for line in lines if line]
        first.close()
        assert rest[-1] == b"data: [DONE]"
        third = requests.post(f"{server.url}/v1/completions", json=body, timeout=30)
        assert third.status_code == 200  # the slot was released when the first stream ended
    finally:
        server.stop()


def test_keys_and_copilot_tokens(deployed, triton_server, triton_repo_root: Path) -> None:
    client = create_proxy_app(_cfg(triton_server, triton_repo_root, api_keys=("k-one", "k-two"),
                                   token_ttl_s=2)).test_client()
    body = {"prompt": "a", "max_tokens": 2}
    assert client.get("/copilot_internal/v2/token").status_code == 401
    assert client.get("/copilot_internal/v2/token", headers={"Authorization": "token wrong"}).status_code == 401
    minted = client.get("/copilot_internal/v2/token", headers={"Authorization": "token k-two"}).get_json()
    token = minted["token"]
    assert "k-two" not in token
    for header in ("Bearer k-one", "token k-two", f"Bearer {token}"):
        resp = client.post("/v1/completions", json=body, headers={"Authorization": header})
        assert resp.status_code == 200, header
    # A token cannot mint another token: only a key can.
    assert client.get("/copilot_internal/v2/token", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    deadline = minted["expires_at"] + 1
    threading.Event().wait(max(0.0, deadline - time.time()))  # the token's expiry is wall-clock time
    expired = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "invalid_api_key"
