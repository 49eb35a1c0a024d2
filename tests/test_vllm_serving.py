"""A vLLM-backend model activated and served through the text protocol, on the real Triton.

vLLM needs a GPU, so the model folder ``convert(to="vllm")`` writes is published with one change,
``backend: "python"``, and the TEST-ONLY stand-in ``tests/fixtures/vllm_standin/model.py`` (the
vLLM backend's documented tensors, decoupled, a tiny Qwen2.5-Coder on CPU) as its ``model.py``.
Activation smoke-tests it through Triton's generate endpoint; the proxy answers OpenAI
completions (plain, streamed, FIM) with exactly the text transformers' greedy decoding gives.
"""

from __future__ import annotations

import json
import py_compile
import shutil
from pathlib import Path

import pytest
import requests

import converter
from converter.triton_config import parse_model_config
from converter.vllm import pin_version
from families import build_fim_prompt, stop_tokens
from serving import ModelRepository, ProxyConfig, create_proxy_app
from serving.completions import trim_at_stop
from serving.textgen import sampling_parameters, speaks_text
from tests.fixtures.triton import serve_app

MODEL = "vllm-standin"
FAMILY = "qwen2.5-coder"
STANDIN = Path(__file__).resolve().parent / "fixtures" / "vllm_standin" / "model.py"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer import sample_code
    from trainer.tiny import TinyModelConfig, init_tiny

    root = tmp_path_factory.mktemp("vllm-serving")
    texts = [p.read_text() for p in sorted(sample_code.generate(root / "src", files=40, seed=5))]
    # Weight seed 1, as tests/test_fim_serving.py: seed 0 answers the smoke prompt with end-of-text.
    return init_tiny(texts, root / "qwen", TinyModelConfig(seed=1), family=FAMILY)


@pytest.fixture(scope="module")
def deployed(qwen: Path, triton_server, triton_repo_root: Path, tmp_path_factory) -> ModelRepository:
    """``convert(to="vllm")``'s version folder, backend swapped for the stand-in, published,
    pinned (as ``repotune deploy --backend vllm`` does) and activated."""
    art = converter.convert(qwen, tmp_path_factory.mktemp("vllm-art") / MODEL, to="vllm", model_name=MODEL).artifact
    version_dir = art / "1"
    written = parse_model_config((version_dir / "config.pbtxt").read_text())
    text = (version_dir / "config.pbtxt").read_text().replace('backend: "vllm"', 'backend: "python"')
    standin = parse_model_config(text)
    written.backend = "python"
    assert standin == written  # the converter's config, backend apart
    (version_dir / "config.pbtxt").write_text(text)
    shutil.copy2(STANDIN, version_dir / "model.py")
    py_compile.compile(str(version_dir / "model.py"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    version = repo.publish(version_dir)
    vdir = repo.version_dir(version)
    pin_version(vdir, str(vdir))
    assert speaks_text(vdir)
    repo.activate(version)  # loads, smoke-completes through /generate, switches
    return repo


@pytest.fixture(scope="module")
def proxy_url(deployed: ModelRepository, triton_server, triton_repo_root: Path):
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=60))
    with serve_app(app) as url:
        yield url


def greedy_text(src: Path, prompt: str, max_tokens: int) -> tuple[str, int]:
    """transformers' greedy completion of ``prompt`` as the proxy would return it: ending at
    any of the family's end markers, special tokens skipped; and the prompt's token count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    ids = tok(prompt)["input_ids"]
    ends = [tok.convert_tokens_to_ids(t) for t in stop_tokens(FAMILY)]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, eos_token_id=ends, pad_token_id=ends[0])
    new = [t for t in out[0, len(ids):].tolist() if t not in ends]
    return trim_at_stop(tok.decode(new, skip_special_tokens=True), list(stop_tokens(FAMILY)))[0], len(ids)


def test_sampling_parameters_map_the_request() -> None:
    assert sampling_parameters(max_tokens=8, temperature=0.0, top_p=0.5, top_k=4, seed=3) == {
        "max_tokens": 8, "temperature": 0.0}  # greedy: vLLM's own defaults for the rest
    assert sampling_parameters(max_tokens=8, temperature=0.7, top_p=0.9, top_k=40, seed=3, stop=["\n\n"],
                               stop_token_ids=[5, 2, 5], lora_name="team") == {
        "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3, "stop": ["\n\n"],
        "stop_token_ids": [2, 5], "lora_name": "team"}
    assert "top_p" not in sampling_parameters(max_tokens=1, temperature=1.0, top_p=1.0)


def test_activation_smoke_tests_through_the_generate_endpoint(deployed: ModelRepository, qwen: Path) -> None:
    version = deployed.current()
    assert version is not None and not deployed.versions()[-1]["failed"]
    from serving import TritonClient

    client = TritonClient(deployed.triton_url, MODEL, timeout_s=60)
    text = client.generate_text(deployed.smoke.prompt, sampling_parameters(max_tokens=8, temperature=0.0),
                                version=version)
    assert text == greedy_text(qwen, deployed.smoke.prompt, 8)[0] and text
    assert "".join(client.stream_text(deployed.smoke.prompt, sampling_parameters(max_tokens=8, temperature=0.0),
                                      version=version)) == text


def test_proxy_plain_and_streamed_completions_are_the_greedy_text(proxy_url: str, deployed, qwen: Path) -> None:
    prompt = "def add(a, b):\n    "
    expected, prompt_tokens = greedy_text(qwen, prompt, 12)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    plain = requests.post(f"{proxy_url}/v1/completions", json=body, timeout=120)
    assert plain.status_code == 200, plain.text
    data = plain.json()
    assert data["model"] == f"{MODEL}@{deployed.current()}"
    assert data["choices"][0]["text"] == expected and expected
    assert data["usage"]["prompt_tokens"] == prompt_tokens
    assert data["usage"]["completion_tokens"] > 0

    streamed = requests.post(f"{proxy_url}/v1/completions", json={**body, "stream": True}, stream=True, timeout=120)
    assert streamed.status_code == 200, streamed.text
    events = [line[6:] for line in streamed.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks
    assert sum(1 for c in chunks if c["choices"][0]["text"]) > 1  # pieces as they come, not one blob
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == data["choices"][0]["finish_reason"]


def test_proxy_fim_request_sends_the_family_fim_prompt(proxy_url: str, qwen: Path) -> None:
    prefix, suffix = "def parse(line):\n    fields = line.split(',')\n    ", "\n    return record\n"
    expected, prompt_tokens = greedy_text(qwen, build_fim_prompt(FAMILY, prefix, suffix), 16)
    resp = requests.post(f"{proxy_url}/v1/completions", json={
        "model": MODEL, "prompt": prefix, "suffix": suffix, "max_tokens": 16, "temperature": 0}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == expected and expected
    assert resp.json()["usage"]["prompt_tokens"] == prompt_tokens


def test_logprobs_are_refused_with_the_reason(proxy_url: str) -> None:
    resp = requests.post(f"{proxy_url}/v1/completions", json={
        "model": MODEL, "prompt": "x = ", "max_tokens": 4, "logprobs": 1}, timeout=60)
    assert resp.status_code == 400
    assert "vLLM backend" in resp.json()["error"]["message"]
