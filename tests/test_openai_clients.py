"""The editors' client libraries against the proxy on the real Triton: the openai Python SDK and
the openai npm package, plain and streamed, left-to-right and FIM (the FIM prompt sent as
``prompt``, as Continue and Twinny send it). Streamed text must equal plain text, and both must
equal a greedy request sent straight to Triton."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import converter
from families import build_fim_prompt, stop_tokens
from serving import ModelRepository, ProxyConfig, TritonClient, create_proxy_app
from serving.http import HttpServer
from serving.repository import load_tokenizer
from trainer import sample_code
from trainer.tiny import TinyModelConfig, init_tiny

MODEL = "clients"
KEY = "sk-repotune-test"
NODE_CLIENT = Path(__file__).resolve().parent / "node" / "openai_client.mjs"
PLAIN_PROMPT = "def load_account(client, account_id):\n    "
FIM_PROMPT = build_fim_prompt("starcoder2", "def load_account(client, account_id):\n    record = ",
                              "\n    return record\n")
MAX_TOKENS = 8  # what tests/node/openai_client.mjs asks for


@pytest.fixture(scope="module")
def deployed(triton_server, triton_repo_root: Path, tmp_path_factory) -> ModelRepository:
    """A tiny StarCoder2 (weight seed 1, see tests/test_fim_serving.py) serving as ``clients``."""
    root = tmp_path_factory.mktemp("clients")
    texts = [p.read_text() for p in sorted(sample_code.generate(root / "src", files=40, seed=5))]
    src = init_tiny(texts, root / "model", TinyModelConfig(seed=1), family="starcoder2")
    art = converter.convert(src, root / "artifact", to="python", model_name=MODEL, verify=False).artifact
    repo = ModelRepository(triton_repo_root, MODEL, triton_server.url)
    repo.activate(repo.publish(art))
    return repo


@pytest.fixture(scope="module")
def proxy(deployed: ModelRepository, triton_server, triton_repo_root: Path):
    """The proxy app under the production HTTP edge (waitress) on a free port, with a key;
    two tokens per stream chunk, so a stream of MAX_TOKENS arrives in several pieces."""
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=triton_repo_root,
                                       model_name=MODEL, timeout_s=30, api_keys=(KEY,), stream_chunk_tokens=2))
    server = HttpServer(app, "127.0.0.1", 0, name="proxy").start()
    try:
        yield server.url
    finally:
        server.stop()


def _direct(deployed: ModelRepository, prompt: str, stops: tuple[str, ...] = ()) -> str:
    """Greedy text straight from Triton (no proxy), stopping where the proxy would."""
    tok = load_tokenizer(deployed.version_dir(deployed.current()))
    stop_ids = [tok(s, add_special_tokens=False)["input_ids"] for s in stops]
    gen = TritonClient(deployed.triton_url, MODEL).generate(
        tok(prompt)["input_ids"], MAX_TOKENS, top_k=1, end_id=tok.eos_token_id, stop_words=stop_ids)[0]
    return tok.decode(gen.tokens, skip_special_tokens=True)


@pytest.mark.parametrize(("prompt", "stops"), [(PLAIN_PROMPT, ()), (FIM_PROMPT, stop_tokens("starcoder2"))],
                         ids=["plain", "fim"])
def test_openai_python_sdk_plain_and_stream(proxy: str, deployed, prompt: str, stops) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=KEY, max_retries=0)
    extra = {"stop": list(stops)} if stops else {}
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, **extra)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True, **extra))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    text = plain.choices[0].text
    assert text.strip(), "the tiny model answered nothing: the comparison below would prove little"
    assert streamed == text == _direct(deployed, prompt, stops)
    assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert not any(s in text for s in stops)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{proxy}/v1", api_key="wrong", max_retries=0).completions.create(
            model=MODEL, prompt=prompt, max_tokens=2)


@pytest.mark.parametrize("prompt", [PLAIN_PROMPT, FIM_PROMPT], ids=["plain", "fim"])
def test_openai_npm_package_plain_and_stream(proxy: str, deployed, prompt: str, node_client) -> None:
    node_client("openai")
    done = subprocess.run(["node", str(NODE_CLIENT), f"{proxy}/v1", KEY, MODEL, prompt],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["plain"].strip() and result["chunks"] >= 2
    assert result["streamed"] == result["plain"] == _direct(deployed, prompt)
