"""One proxy, two models, keys scoped to models: the real proxy over the real Triton.

Two tiny models are published under two names (``mm-alpha`` serving version 1, ``mm-beta``
serving version 2 with other weights, so their answers differ). The session's Triton repository
also holds the other test modules' models, so the proxy is pointed at a repository folder that
links exactly these two: what it serves is then what this module published, nothing more.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bot.cli import cli
from bot.errors import ConfigError
from bot.proxy_settings import api_keys
from serving import VERSION_HEADER, ModelRepository, ProxyConfig, create_proxy_app
from tests.fixtures.triton import serve_app

ALPHA, BETA = "mm-alpha", "mm-beta"
KEY_ALL, KEY_A, KEY_B = "key-every-model-0f3a", "key-alpha-only-9b1c", "key-beta-only-77de"
KEYS_SETTING = f"# team keys\n{KEY_ALL}\n{KEY_A}:{ALPHA}\n{KEY_B}: {BETA}\n"
PROMPT = "def parse(line):\n    "
TABBY = {"language": "python", "segments": {"prefix": PROMPT, "suffix": "\n"}}


@pytest.fixture(scope="module")
def published(triton_server, triton_repo_root: Path, python_artifact: Path, make_artifact):
    alpha = ModelRepository(triton_repo_root, ALPHA, triton_server.url)
    alpha.activate(alpha.publish(python_artifact))
    beta = ModelRepository(triton_repo_root, BETA, triton_server.url)
    beta.publish(make_artifact("good"))  # published, never served: beta serves version 2
    beta.activate(beta.publish(make_artifact("perturbed")))
    assert (alpha.current(), beta.current()) == (1, 2)
    return {ALPHA: alpha, BETA: beta}


def _view(root: Path, triton_repo_root: Path, *names: str) -> Path:
    """A model repository folder holding only ``names`` (links into the session's repository)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).symlink_to(triton_repo_root / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def proxy(published, triton_server, triton_repo_root: Path, tmp_path_factory):
    view = _view(tmp_path_factory.mktemp("two-models") / "repo", triton_repo_root, ALPHA, BETA)
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=view, model_name=ALPHA,
                                       timeout_s=30, api_keys=api_keys(KEYS_SETTING)))
    with serve_app(app) as url:
        yield url


def _post(url: str, path: str, key: str, body: dict) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _get(url: str, path: str, key: str) -> requests.Response:
    return requests.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _completion(name: str | None = None) -> dict:
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    return {**body, "model": name} if name else body


def test_body_model_and_engine_path_route_to_each_models_serving_version(proxy: str, published) -> None:
    texts = {}
    for name, repo in published.items():
        version = repo.current()
        by_body = _post(proxy, "/v1/completions", KEY_ALL, _completion(name))
        by_engine = _post(proxy, f"/v1/engines/{name}/completions", KEY_ALL, _completion())
        pinned = _post(proxy, f"/m/{name}/v1/completions", KEY_ALL, TABBY)  # Tabby names no model
        for resp in (by_body, by_engine, pinned):
            assert resp.status_code == 200, resp.text
            assert resp.headers[VERSION_HEADER] == str(version)
        assert by_body.json()["model"] == by_engine.json()["model"] == f"{name}@{version}"
        assert by_body.json()["choices"][0]["text"] == by_engine.json()["choices"][0]["text"]
        texts[name] = by_body.json()["choices"][0]["text"]
    assert texts[ALPHA] != texts[BETA]  # two models really answered, not one under two names
    # The engine in the path wins over the body's model (FauxPilot sends both).
    both = _post(proxy, f"/v1/engines/{BETA}/completions", KEY_ALL, _completion(ALPHA))
    assert both.json()["model"] == f"{BETA}@2"
    # No name: the default model. An unknown name with two models served: 404 in OpenAI's shape.
    assert _post(proxy, "/infill", KEY_ALL, {"input_prefix": PROMPT, "n_predict": 4}).headers[VERSION_HEADER] == "1"
    unknown = _post(proxy, "/v1/completions", KEY_ALL, _completion("codegen"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    metrics = requests.get(f"{proxy}/metrics", timeout=10).text
    assert f'repotune_proxy_model_requests_total{{model="{BETA}",status="200"}}' in metrics
    assert f'repotune_proxy_model_completion_tokens_total{{model="{ALPHA}"}}' in metrics


def test_openai_sdk_reaches_each_model_and_a_scoped_key_only_its_own(proxy: str, published) -> None:
    import openai

    every = openai.OpenAI(base_url=f"{proxy}/v1", api_key=KEY_ALL, max_retries=0)
    for name, repo in published.items():
        result = every.completions.create(model=name, prompt=PROMPT, max_tokens=6, temperature=0)
        assert result.model == f"{name}@{repo.current()}" and result.choices[0].text
    assert [m.id for m in every.models.list()] == [ALPHA, BETA]
    only_a = openai.OpenAI(base_url=f"{proxy}/v1", api_key=KEY_A, max_retries=0)
    assert only_a.completions.create(model=ALPHA, prompt=PROMPT, max_tokens=2).model == f"{ALPHA}@1"
    with pytest.raises(openai.NotFoundError):
        only_a.completions.create(model=BETA, prompt=PROMPT, max_tokens=2)
    assert [m.id for m in only_a.models.list()] == [ALPHA]


def test_a_scoped_key_cannot_reach_the_other_model_by_any_route(proxy: str, published) -> None:
    """Key A against model B through every protocol: the same 404 a model that does not exist gets."""
    attempts = [
        ("/v1/completions", _completion(BETA)),                      # OpenAI
        ("/completions", _completion(BETA)),                         # OpenAI, bare
        (f"/v1/engines/{BETA}/completions", _completion()),          # FauxPilot / Copilot
        ("/infill", {"input_prefix": PROMPT, "model": BETA}),        # llama.cpp, named in the body
        (f"/m/{BETA}/infill", {"input_prefix": PROMPT}),             # llama.cpp, base URL
        (f"/m/{BETA}/completion", {"prompt": PROMPT}),
        ("/v1/completions", {**TABBY, "model": BETA}),               # Tabby, named in the body
        (f"/m/{BETA}/v1/completions", TABBY),                        # Tabby, base URL
    ]
    ghost = _post(proxy, "/v1/completions", KEY_A, _completion("mm-ghost")).json()["error"]
    for path, body in attempts:
        resp = _post(proxy, path, KEY_A, body)
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "model_not_found", path
        # Nothing tells "exists but not yours" from "does not exist".
        assert error["message"].replace(BETA, "mm-ghost") == ghost["message"], (path, error["message"])
    # The same key reaches its own model on the same routes.
    assert _post(proxy, f"/m/{ALPHA}/infill", KEY_A, {"input_prefix": PROMPT, "n_predict": 2}).status_code == 200
    assert _post(proxy, f"/v1/engines/{ALPHA}/completions", KEY_A, _completion()).status_code == 200

    # Copilot: a token minted from key A carries A's scope; editing the scope breaks the signature.
    token = _get(proxy, "/copilot_internal/v2/token", KEY_A).json()["token"]
    assert KEY_A not in token
    assert _post(proxy, f"/v1/engines/{ALPHA}/completions", token, _completion()).status_code == 200
    assert _post(proxy, f"/v1/engines/{BETA}/completions", token, _completion()).status_code == 404
    prefix, key_id, expires, _scope, signature = token.split(".")
    widened = ".".join((prefix, key_id, expires, "*", signature))
    assert _post(proxy, f"/v1/engines/{BETA}/completions", widened, _completion()).status_code == 401
    every = _get(proxy, "/copilot_internal/v2/token", KEY_ALL).json()["token"]
    assert _post(proxy, f"/v1/engines/{BETA}/completions", every, _completion()).status_code == 200


def test_each_key_lists_only_its_models_with_their_versions(proxy: str, published) -> None:
    def listed(key: str, path: str = "/v1/models") -> list:
        resp = _get(proxy, path, key)
        assert resp.status_code == 200, resp.text
        return [(m["id"], m.get("version")) for m in resp.json()["data"]]

    assert listed(KEY_ALL) == [(ALPHA, 1), (BETA, 2)]
    assert listed(KEY_A) == [(ALPHA, 1)]
    assert listed(KEY_B) == [(BETA, 2)]
    assert listed(KEY_B, "/v1/engines") == [(BETA, None)]
    assert listed(KEY_ALL, f"/m/{BETA}/v1/models") == [(BETA, 2)]
    assert _get(proxy, "/v1/models", "not-a-key").status_code == 401
    # Tabby names no model: key B's only model is the one it gets, on health and completions.
    assert _get(proxy, "/v1/health", KEY_B).json()["model"] == f"{BETA}@2"
    assert _post(proxy, "/v1/completions", KEY_B, TABBY).headers[VERSION_HEADER] == "2"
    assert _get(proxy, "/v1/health", KEY_A).json()["model"] == f"{ALPHA}@1"


def test_one_model_still_accepts_any_name(published, triton_server, triton_repo_root: Path, tmp_path: Path) -> None:
    view = _view(tmp_path / "repo", triton_repo_root, BETA)
    app = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=view, model_name=BETA,
                                       api_keys=api_keys(f"{KEY_B}:{BETA}")))
    client = app.test_client()
    auth = {"Authorization": f"Bearer {KEY_B}"}
    for path, body in (("/v1/engines/codegen/completions", _completion()),
                       ("/v1/completions", _completion("copilot-codex"))):
        resp = client.post(path, json=body, headers=auth)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.get_json()["model"] == f"{BETA}@2"
    assert [m["id"] for m in client.get("/v1/models", headers=auth).get_json()["data"]] == [BETA]


def test_a_model_deployed_while_the_proxy_runs_is_served_without_a_restart(published, triton_server,
                                                                          triton_repo_root: Path,
                                                                          tmp_path: Path) -> None:
    """The served models are listed from the repository (cached at most ``NAMES_TTL_S``): a second
    model linked in after the first requests is listed and answers, with no new proxy."""
    from serving.models import NAMES_TTL_S

    view = _view(tmp_path / "repo", triton_repo_root, ALPHA)
    client = create_proxy_app(ProxyConfig(triton_url=triton_server.url, model_repository=view,
                                          model_name=ALPHA)).test_client()
    assert [m["id"] for m in client.get("/v1/models").get_json()["data"]] == [ALPHA]
    assert client.post("/v1/completions", json=_completion(BETA)).get_json()["model"] == f"{ALPHA}@1"
    _view(view.parent / "repo", triton_repo_root, BETA)  # deploy: beta's folder appears
    deadline = time.monotonic() + NAMES_TTL_S + 5
    while BETA not in [m["id"] for m in client.get("/v1/models").get_json()["data"]]:
        assert time.monotonic() < deadline, "a newly deployed model was not listed"
        time.sleep(0.05)
    resp = client.post("/v1/completions", json=_completion(BETA))
    assert resp.status_code == 200 and resp.get_json()["model"] == f"{BETA}@2", resp.get_data(as_text=True)


@pytest.mark.parametrize(("setting", "says"), [
    ("sk-good\nsk-hidden-1:", "entry 2 ends with ':' but names no model"),
    ("sk-hidden-1:mm-alpha,,mm-beta", "entry 1 has an empty model name"),
    ("sk-hidden-1:mm alpha", "entry 1 has a model name with characters other than"),
    (":mm-alpha", "entry 1 has no key before ':'"),
    ("sk-hidden-1 sk-two", "the key of entry 1 contains a space"),
    ("sk-hidden-1:mm-alpha;sk-hidden-1", "entry 2 repeats the key of entry 1"),
])
def test_malformed_key_entries_are_refused_at_startup_without_echoing_keys(setting: str, says: str,
                                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        api_keys(setting)
    assert "sk-hidden" not in str(info.value) and "REPOTUNE_API_KEYS" in str(info.value)
    secret = tmp_path / "proxy_api_keys"
    secret.write_text(setting)
    result = CliRunner(env={"REPOTUNE_CONFIG": None, "REPOTUNE_API_KEYS": None,
                            "REPOTUNE_API_KEYS_FILE": str(secret)}).invoke(
        cli, ["serve", "--home", str(tmp_path / "home"), "--get", "/v1/models"])
    assert result.exit_code == 1, result.output
    assert says in result.output and "sk-hidden" not in result.output
    assert not (tmp_path / "home" / "triton").exists()  # refused before anything started
