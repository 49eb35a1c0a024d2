"""The completion proxy against a real Triton: the openai SDK, error shapes, auth, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from serving import (
    VERSION_HEADER,
    ModelRepository,
    ProxyConfig,
    TritonClient,
    TritonServer,
    create_proxy_app,
)
from tests.fixtures.base import free_port
from tests.fixtures.triton import OOV_TOKEN, serve_app

MODEL = "proxy"


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    version = repo.publish(python_artifact)
    repo.activate(version)
    return repo


@pytest.fixture(scope="module")
def proxy_url(deployed: ModelRepository, triton_server, triton_repo_root: Path):
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30))
    with serve_app(app) as url:
        yield url


def test_openai_sdk_plain_completion_returns_model_text(proxy_url: str, deployed: ModelRepository) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused")
    result = client.completions.create(model=MODEL, prompt="def add(a, b):\n    ", max_tokens=12,
                                       temperature=0)
    assert result.object == "text_completion"
    assert result.model == f"{MODEL}@{deployed.current()}"
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.choices[0].text.strip()
    assert result.usage.completion_tokens > 0
    assert result.usage.prompt_tokens > 0


def test_openai_sdk_streaming_matches_plain_greedy_text(proxy_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused")
    prompt = "class Stack:\n    def push(self, item):\n"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, temperature=0,
                                            stream=True))
    # Generated in chunks of 8 tokens: text arrives in several events, not all at the end.
    assert plain.usage.completion_tokens > 8
    assert sum(1 for c in chunks if c.choices[0].text) >= -(-plain.usage.completion_tokens // 8)
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_raw_sse_ends_with_done_and_stream_false_is_json(proxy_url: str) -> None:
    body = {"prompt": "import os\n", "max_tokens": 4, "temperature": 0}
    streamed = requests.post(f"{proxy_url}/v1/engines/{MODEL}/completions", json={**body, "stream": True},
                             timeout=30)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    plain = requests.post(f"{proxy_url}/v1/engines/{MODEL}/completions", json={**body, "stream": False},
                          timeout=30)
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json()["choices"][0]["text"] == "".join(
        json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])


def test_stop_string_is_not_split_into_characters(proxy_url: str) -> None:
    body = {"prompt": "def main():\n    ", "max_tokens": 24, "temperature": 0}
    full = requests.post(f"{proxy_url}/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:6]
    cut = requests.post(f"{proxy_url}/v1/completions", json={**body, "stop": stop}, timeout=30).json()
    assert cut["choices"][0]["text"] == full[: full.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    # A single character of the stop string alone must not cut the text earlier.
    listed = requests.post(f"{proxy_url}/v1/completions", json={**body, "stop": [stop, "\x00never"]},
                           timeout=30).json()
    assert listed["choices"][0]["text"] == full[: full.find(stop)]


def test_over_context_is_400_in_openai_shape_when_strict(triton_server, triton_repo_root: Path,
                                                         deployed: ModelRepository) -> None:
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, strict_context=True))
    resp = app.test_client().post("/v1/completions", json={"prompt": "x = 1\n" * 200, "max_tokens": 100})
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 256" in error["message"]


def test_models_token_headers_and_metrics(proxy_url: str, deployed: ModelRepository) -> None:
    models = requests.get(f"{proxy_url}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == MODEL
    assert requests.get(f"{proxy_url}/copilot_internal/v2/token", timeout=10).json()["token"]
    resp = requests.post(f"{proxy_url}/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=30)
    assert resp.headers[VERSION_HEADER] == str(deployed.current())
    metrics = requests.get(f"{proxy_url}/metrics", timeout=10).text
    assert 'repotune_proxy_requests_total{route="/v1/completions",status="200"}' in metrics


def test_api_keys_are_enforced(triton_server, triton_repo_root: Path, deployed: ModelRepository) -> None:
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, api_keys=("s3cret",)))
    client = app.test_client()
    denied = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert denied.status_code == 401
    assert denied.get_json()["error"]["code"] == "invalid_api_key"
    allowed = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2},
                          headers={"Authorization": "Bearer s3cret"})
    assert allowed.status_code == 200, allowed.get_data(as_text=True)


def test_triton_down_is_503_never_200(triton_repo_root: Path, deployed: ModelRepository,
                                      python_artifact: Path, tmp_path: Path) -> None:
    """A second real Triton serves, then is stopped: the proxy answers 503 in OpenAI's shape."""
    root = tmp_path / "repo"
    server = TritonServer(root).start()
    try:
        repo = ModelRepository(root, "down", server.url)
        repo.activate(repo.publish(python_artifact))
        app = create_proxy_app(ProxyConfig(triton_url=server.url, model_repository=root, model_name="down",
                                           timeout_s=5))
        client = app.test_client()
        assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200
    finally:
        server.stop()
    down = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
    assert down.status_code == 503
    assert down.get_json()["error"]["type"] == "server_error"
    assert "unavailable" in down.get_json()["error"]["message"]
    streamed = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2, "stream": True})
    assert streamed.status_code == 503
    # Nothing listens on this port at all:
    app2 = create_proxy_app(ProxyConfig(triton_url=f"127.0.0.1:{free_port()}", model_repository=root,
                                        model_name="down", timeout_s=5))
    assert app2.test_client().post("/v1/completions", json={"prompt": "a"}).status_code == 503


def test_triton_error_is_502_in_openai_shape(triton_server, triton_repo_root: Path, make_artifact) -> None:
    """A real Triton error: this version's tokenizer knows a token its model does not, so the
    python-backend model rejects prompts containing it. The proxy answers 502 in OpenAI's shape
    (plain and streamed) and keeps serving other prompts."""
    repo = ModelRepository(triton_repo_root, "mismatch", triton_server.url)
    version = repo.publish(make_artifact("oov-token"))
    repo.activate(version)  # the smoke completion does not use the extra token
    try:
        app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                           model_name="mismatch", timeout_s=30))
        client = app.test_client()
        assert client.post("/v1/completions", json={"prompt": "x = 1", "max_tokens": 2}).status_code == 200
        bad_prompt = {"prompt": f"x = {OOV_TOKEN}", "max_tokens": 2}
        for body in (bad_prompt, {**bad_prompt, "stream": True}):
            resp = client.post("/v1/completions", json=body)
            assert resp.status_code == 502, resp.get_data(as_text=True)
            assert resp.headers["content-type"].startswith("application/json")
            error = resp.get_json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "inference_failed")
            assert "outside the vocabulary" in error["message"]  # Triton's model said so
        assert client.post("/v1/completions", json={"prompt": "y = 2", "max_tokens": 2}).status_code == 200
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'repotune_proxy_requests_total{route="/v1/completions",status="502"} 2.0' in metrics
    finally:
        TritonClient(triton_server.url, "mismatch").unload()
