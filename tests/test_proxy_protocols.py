"""The proxy's protocols against a real Triton serving the tiny (CodeGen, left-to-right) model:
suffix handling, llama.cpp's /infill and /completion, Tabby's shapes and events, trimming
long files, and the defects real clients found (logprobs, usage chunk, seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving import ModelRepository, ProxyConfig, create_proxy_app

MODEL = "protocols"
PREFIX = "def add(a, b):\n    "


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, python_artifact: Path) -> ModelRepository:
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(python_artifact))
    return repo


def _client(triton_server, triton_repo_root: Path, **kwargs):
    cfg = ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root, model_name=MODEL,
                      timeout_s=30, **kwargs)
    return create_proxy_app(cfg).test_client()


def _sse(resp) -> list[dict]:
    return [json.loads(e[6:]) for e in resp.get_data(as_text=True).split("\n\n") if e and e != "data: [DONE]"]


def test_suffix_on_a_left_to_right_model_is_ignored_with_a_header_or_refused_when_strict(
        deployed, triton_server, triton_repo_root: Path) -> None:
    client = _client(triton_server, triton_repo_root)
    body = {"prompt": PREFIX, "max_tokens": 8, "temperature": 0}
    plain = client.post("/v1/completions", json=body)
    with_suffix = client.post("/v1/completions", json={**body, "suffix": "\nprint(add(1, 2))\n"})
    assert with_suffix.status_code == 200
    assert with_suffix.headers["X-RepoTune-Suffix"] == "ignored (codegen has no fill-in-the-middle)"
    assert "X-RepoTune-Suffix" not in plain.headers
    assert with_suffix.get_json()["choices"][0]["text"] == plain.get_json()["choices"][0]["text"]
    strict = _client(triton_server, triton_repo_root, strict_suffix=True)
    refused = strict.post("/v1/completions", json={**body, "suffix": "x"})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "suffix_not_supported"


def test_llama_cpp_infill_and_completion_shapes(deployed, triton_server, triton_repo_root: Path) -> None:
    client = _client(triton_server, triton_repo_root)
    openai = client.post("/completions", json={"prompt": PREFIX, "max_tokens": 8, "temperature": 0}).get_json()
    infill = client.post("/infill", json={"input_prefix": "def add(a, b):\n", "prompt": "    ",
                                          "input_suffix": "", "n_predict": 8, "temperature": 0})
    assert infill.status_code == 200, infill.get_data(as_text=True)
    answer = infill.get_json()
    assert answer["content"] == openai["choices"][0]["text"]
    assert answer["stop"] is True and answer["tokens_predicted"] == openai["usage"]["completion_tokens"]
    assert answer["tokens_evaluated"] == openai["usage"]["prompt_tokens"]
    completion = client.post("/completion", json={"prompt": PREFIX, "n_predict": 8, "temperature": 0}).get_json()
    assert completion["content"] == answer["content"]
    assert answer["stopped_word"] is False
    stop = answer["content"][2:4]
    cut = client.post("/completion", json={"prompt": PREFIX, "n_predict": 8, "temperature": 0,
                                           "stop": [stop]}).get_json()
    assert cut["content"] == answer["content"][: answer["content"].index(stop)]
    assert cut["stopped_word"] is True
    streamed = client.post("/infill", json={"input_prefix": PREFIX, "n_predict": 8, "temperature": 0,
                                            "stream": True})
    events = _sse(streamed)
    assert "[DONE]" not in streamed.get_data(as_text=True)
    assert "".join(e["content"] for e in events) == answer["content"]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])


def test_tabby_shapes_and_events(deployed, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    client = _client(triton_server, triton_repo_root, events_dir=tmp_path / "events")
    health = client.get("/v1/health").get_json()
    assert health["model"] == f"{MODEL}@{deployed.current()}" and "git_describe" in health["version"]
    assert client.get("/v1beta/server_setting").get_json() == {"disable_client_side_telemetry": False}
    tabby = client.post("/v1/completions", json={"language": "python",
                                                 "segments": {"prefix": PREFIX, "suffix": "\n"}})
    assert tabby.status_code == 200, tabby.get_data(as_text=True)
    body = tabby.get_json()
    assert set(body) == {"id", "choices"} and body["choices"][0]["index"] == 0
    greedy = client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 64, "temperature": 0})
    assert body["choices"][0]["text"] == greedy.get_json()["choices"][0]["text"]
    event = {"type": "view", "completion_id": body["id"], "choice_index": 0}
    assert client.post("/v1/events?select_kind=line", json=event).status_code == 200
    bad = client.post("/v1/events", json={"type": "clicked", "completion_id": body["id"], "choice_index": 0})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "unknown_event"
    stored = [json.loads(line) for f in (tmp_path / "events").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [(e["type"], e["completion_id"]) for e in stored] == [("view", body["id"])]


def test_long_files_are_trimmed_with_a_header_unless_strict(deployed, triton_server, triton_repo_root: Path) -> None:
    client = _client(triton_server, triton_repo_root)
    prompt = "".join(f"value_{i} = {i}\n" for i in range(400))
    resp = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4096, "temperature": 0})
    assert resp.status_code == 400  # over max_tokens_limit (2048) is still a 400
    resp = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 500, "temperature": 0})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    trimmed = resp.headers["X-RepoTune-Trimmed"]
    assert "max_tokens=500->64" in trimmed and "prefix=0" not in trimmed
    assert resp.get_json()["usage"]["prompt_tokens"] + 64 <= 256  # the tiny model's window
    strict = _client(triton_server, triton_repo_root, strict_context=True)
    refused = strict.post("/v1/completions", json={"prompt": prompt, "max_tokens": 500})
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "context_length_exceeded"


def test_logprobs_usage_chunk_seeds_and_string_booleans(deployed, triton_server, triton_repo_root: Path) -> None:
    client = _client(triton_server, triton_repo_root, stream_chunk_tokens=3)
    body = {"prompt": PREFIX, "max_tokens": 6, "temperature": 0, "logprobs": 1}
    plain = client.post("/v1/completions", json=body).get_json()["choices"][0]["logprobs"]
    assert len(plain["top_logprobs"]) == len(plain["tokens"]) > 0
    assert plain["top_logprobs"][0] == {plain["tokens"][0]: plain["token_logprobs"][0]}
    chunks = _sse(client.post("/v1/completions", json={**body, "stream": True,
                                                       "stream_options": {"include_usage": True}}))
    streamed_tokens = [t for c in chunks if c["choices"] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert streamed_tokens == plain["tokens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(plain["tokens"])
    not_streamed = client.post("/v1/completions", json={**body, "stream": "false"})
    assert not_streamed.headers["content-type"].startswith("application/json")
    assert client.post("/v1/completions", json={**body, "stream": "nope"}).status_code == 400
    sampled = {client.post("/v1/completions", json={"prompt": PREFIX, "max_tokens": 12, "temperature": 1.5,
                                                    "stop": ""}).get_json()["choices"][0]["text"]
               for _ in range(4)}
    assert len(sampled) > 1 and all(sampled)  # fresh seeds; the empty stop cut nothing


@pytest.fixture(scope="module")
def fim_deployed(triton_server, triton_repo_root: Path, python_artifact: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A tiny StarCoder2 (a FIM family) in a python-backend artifact. The converter takes CodeGen
    checkpoints only on this branch, so the CodeGen artifact's model folder is swapped for the
    StarCoder2 checkpoint (the python backend loads any causal LM)."""
    import shutil

    from trainer.tiny import init_tiny

    root = tmp_path_factory.mktemp("fim")
    model = init_tiny([PREFIX + "return a + b\n"] * 40, root / "starcoder2", family="starcoder2")
    artifact = root / "artifact"
    shutil.copytree(python_artifact, artifact)
    shutil.rmtree(artifact / "model")
    shutil.copytree(model, artifact / "model")
    repo = ModelRepository(triton_repo_root, "fim", triton_server.url)
    repo.activate(repo.publish(artifact))
    return repo


def test_suffix_builds_the_family_fim_prompt_and_stops_on_its_sentinels(
        fim_deployed, triton_server, triton_repo_root: Path) -> None:
    from families import build_fim_prompt

    cfg = ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root, model_name="fim")
    app = create_proxy_app(cfg)
    client = app.test_client()
    suffix = "\nprint(add(1, 2))\n"
    fim = client.post("/v1/completions", json={"prompt": PREFIX, "suffix": suffix, "max_tokens": 8,
                                               "temperature": 0})
    assert fim.status_code == 200 and "X-RepoTune-Suffix" not in fim.headers
    by_hand = client.post("/v1/completions", json={"prompt": build_fim_prompt("starcoder2", PREFIX, suffix),
                                                   "max_tokens": 8, "temperature": 0}).get_json()
    assert fim.get_json()["choices"][0]["text"] == by_hand["choices"][0]["text"]
    assert fim.get_json()["usage"]["prompt_tokens"] == by_hand["usage"]["prompt_tokens"]
    extra = [{"filename": "util.py", "text": "X = 1\n"}]
    infill = client.post("/infill", json={"input_prefix": PREFIX, "input_suffix": suffix, "input_extra": extra,
                                          "n_predict": 8, "temperature": 0}).get_json()
    context = "<file_sep>util.py\nX = 1\n" + build_fim_prompt("starcoder2", PREFIX, suffix)
    expected = client.post("/v1/completions", json={"prompt": context, "max_tokens": 8, "temperature": 0})
    assert infill["content"] == expected.get_json()["choices"][0]["text"]
    assert infill["tokens_evaluated"] == expected.get_json()["usage"]["prompt_tokens"]
    completer = app.config["repotune.completer"]
    prompt = completer.prepare(completer.parse({"prompt": PREFIX, "suffix": suffix}))
    assert {"<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"} <= set(prompt.stops)
    sentinel_ids = prompt.tokenizer.convert_tokens_to_ids(["<fim_middle>", "<file_sep>"])
    assert all([i] in prompt.stop_ids for i in sentinel_ids)
