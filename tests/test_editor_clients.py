"""Real editor clients against the proxy served by the production edge over a real Triton.

tabby-agent (the language server behind Tabby's VS Code, JetBrains and Vim plugins) is driven
by ``tests/node/tabby_lsp.mjs``: it probes ``/v1/health`` and ``/v1beta/server_setting`` with
the configured token, then asks ``/v1/completions`` in Tabby's shape."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from serving import ApiKey, ModelRepository, ProxyConfig, create_proxy_app
from serving.http import HttpServer

NODE_DIR = Path(__file__).parent / "node"
MODEL = "editors"
KEY = "editor-key"
DOCUMENT = "def add(a, b):\n    \n\nprint(add(1, 2))\n"
CURSOR = (1, 4)


@pytest.fixture(scope="module")
def proxy(triton_server, triton_repo_root: Path, python_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(python_artifact))
    events = tmp_path_factory.mktemp("tabby-events")
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, api_keys=(KEY,), events_dir=events))
    server = HttpServer(app, "127.0.0.1", 0, name="editors").start()
    try:
        yield server.url
    finally:
        server.stop()


def test_tabby_agent_completion_equals_the_direct_tabby_answer(proxy: str, tmp_path: Path, node_client) -> None:
    done = _tabby(node_client, tmp_path, proxy, KEY)
    assert done.returncode == 0, done.stderr[-2000:]
    item = json.loads(done.stdout.strip().splitlines()[-1])["items"][0]

    lines = DOCUMENT.split("\n")
    offset = sum(len(line) + 1 for line in lines[: CURSOR[0]]) + CURSOR[1]
    # tabby-agent sends no temperature: the Tabby shape's default is greedy, so both agree.
    direct = requests.post(f"{proxy}/v1/completions", timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                           json={"language": "python",
                                 "segments": {"prefix": DOCUMENT[:offset], "suffix": DOCUMENT[offset:]}})
    assert direct.status_code == 200, direct.text
    assert direct.headers["X-RepoTune-Suffix"].startswith("ignored (codegen")  # the tiny model is CodeGen
    assert item["textEdit"]["newText"] == direct.json()["choices"][0]["text"]
    assert item["data"]["completionId"].startswith("cmpl-")
    unauthorised = requests.post(f"{proxy}/v1/completions", timeout=30,
                                 json={"language": "python", "segments": {"prefix": "x", "suffix": ""}})
    assert unauthorised.status_code == 401


OTHER = "editors-b"


def _tabby(node_client, tmp_path: Path, endpoint: str, token: str) -> subprocess.CompletedProcess:
    """tabby-agent asking one completion at CURSOR of DOCUMENT from ``endpoint``."""
    node_client("tabby-agent")
    home = tmp_path / f"home-{len(list(tmp_path.glob('home-*')))}"
    (home / ".tabby-client" / "agent").mkdir(parents=True)
    (home / ".tabby-client" / "agent" / "config.toml").write_text(
        f'[server]\nendpoint = "{endpoint}"\ntoken = "{token}"\n')
    doc = tmp_path / "main.py"
    doc.write_text(DOCUMENT)
    return subprocess.run(["node", str(NODE_DIR / "tabby_lsp.mjs"), doc.as_uri(), "python", str(doc),
                           str(CURSOR[0]), str(CURSOR[1]), "60000"], env={**os.environ, "HOME": str(home)},
                          capture_output=True, text=True, timeout=120, cwd=NODE_DIR)


def _served_model(telemetry: Path, completion_id: str, timeout_s: float = 10.0) -> str:
    """The model the proxy's telemetry recorded for ``completion_id`` (written off the request path)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for f in sorted(telemetry.glob("completions-*.jsonl")):
            for line in f.read_text().splitlines():
                record = json.loads(line)
                if record["id"] == completion_id:
                    return record["model"]
        assert time.monotonic() < deadline, f"no telemetry record for {completion_id}"
        time.sleep(0.05)  # polling the telemetry file for the writer thread's append


def test_tabby_agent_picks_one_of_several_models_by_the_m_prefix(proxy: str, triton_server, triton_repo_root: Path,
                                                                 python_artifact: Path, tmp_path: Path,
                                                                 node_client) -> None:
    """docs/editors.md: Tabby sends no model name, so with several models its server address ends
    in ``/m/<model>``; a key limited to other models gets 404 there, as for a model that does not exist."""
    other = ModelRepository(triton_repo_root, OTHER, triton_server.url)
    other.activate(other.publish(python_artifact))
    telemetry = tmp_path / "telemetry"
    keys = (ApiKey("both-key", frozenset({MODEL, OTHER})), ApiKey("b-only-key", frozenset({OTHER})))
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, api_keys=keys, telemetry_dir=telemetry))
    server = HttpServer(app, "127.0.0.1", 0, name="editors-m").start()
    try:
        for model in (MODEL, OTHER):
            done = _tabby(node_client, tmp_path, f"{server.url}/m/{model}", "both-key")
            assert done.returncode == 0, done.stderr[-2000:]
            item = json.loads(done.stdout.strip().splitlines()[-1])["items"][0]
            assert item["textEdit"]["newText"].strip(), item
            assert _served_model(telemetry, item["data"]["completionId"]) == model
        body = {"language": "python", "segments": {"prefix": "def add(", "suffix": ""}}
        for url in (f"{server.url}/m/{MODEL}/v1/completions", f"{server.url}/m/no-such-model/v1/completions"):
            refused = requests.post(url, json=body, timeout=30, headers={"Authorization": "Bearer b-only-key"})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found", refused.text
        # The narrow key reaches its one model with no prefix at all: Tabby's health probe says which.
        auth = {"Authorization": "Bearer b-only-key"}
        own = requests.post(f"{server.url}/v1/completions", json=body, timeout=30, headers=auth)
        assert own.status_code == 200, own.text
        health = requests.get(f"{server.url}/v1/health", timeout=30, headers=auth)
        assert health.status_code == 200 and health.json()["model"].startswith(f"{OTHER}@"), health.text
    finally:
        server.stop()
