"""docs/editors.md: every configuration block parses, names routes the proxy serves, and the
Continue templates render to RepoTune's own FIM prompts."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from families import build_fim_prompt, get_family
from serving import ProxyConfig, create_proxy_app

DOC = Path(__file__).resolve().parents[1] / "docs" / "editors.md"
BLOCK = re.compile(r"```(json|yaml|toml)\n(.*?)```", re.S)
def _blocks(kind: str) -> list:
    parse = {"json": json.loads, "yaml": yaml.safe_load, "toml": tomllib.loads}[kind]
    return [parse(text) for lang, text in BLOCK.findall(DOC.read_text(encoding="utf-8")) if lang == kind]


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory):
    """The proxy's URL map, bound for matching paths (creating the app contacts no server)."""
    app = create_proxy_app(ProxyConfig(triton_url="127.0.0.1:9", model_repository=tmp_path_factory.mktemp("repo")))
    return app.url_map.bind("localhost")


def _served(routes, method: str, path: str) -> bool:
    from werkzeug.exceptions import HTTPException

    try:
        routes.match(path, method=method)
    except HTTPException:
        return False
    return True


def test_continue_blocks(routes) -> None:
    blocks = _blocks("yaml")
    assert len(blocks) == 2
    limit = ProxyConfig(triton_url="", model_repository="").max_tokens_limit
    for block in blocks:
        model = block["models"][0]
        family = get_family(model["model"].removeprefix("repotune-"))
        assert model["provider"] == "openai" and model["useLegacyCompletionsEndpoint"] is True
        assert "autocomplete" in model["roles"]
        api = urlparse(model["apiBase"])
        assert _served(routes, "POST", api.path + "/completions"), api.path
        options = model["defaultCompletionOptions"]
        assert 0 < options["maxTokens"] <= limit
        assert options["contextLength"] == family.context_length
        template = model["promptTemplates"]["autocomplete"]
        prefix, suffix = "def f(a):\n    return ", "\n\nprint(f(1))\n"
        rendered = template.replace("{{{prefix}}}", prefix).replace("{{{suffix}}}", suffix)
        assert rendered == build_fim_prompt(family, prefix, suffix), family.name


def test_blocks_name_served_routes(routes) -> None:
    needed: list[tuple[str, str]] = []
    for block in _blocks("json"):
        if "fauxpilot.server" in block:
            needed.append(("POST", urlparse(block["fauxpilot.server"]).path + f"/{block['fauxpilot.engine']}/completions"))
        elif "github.copilot.advanced" in block:
            engine = block["github.copilot.advanced"]["debug.overrideEngine"]
            needed += [("GET", "/copilot_internal/v2/token"), ("POST", f"/v1/engines/{engine}/completions")]
        elif "llama-vscode.endpoint" in block:
            needed.append(("POST", urlparse(block["llama-vscode.endpoint"]).path + "/infill"))
        else:
            pytest.fail(f"docs/editors.md has a JSON block no test knows: {block}")
    for block in _blocks("toml"):
        assert block["server"]["token"] and urlparse(block["server"]["endpoint"]).scheme == "http"
        needed += [("GET", "/v1/health"), ("GET", "/v1beta/server_setting"), ("POST", "/v1/completions"),
                   ("POST", "/v1/events")]
    assert len(needed) >= 8
    missing = [(m, p) for m, p in needed if not _served(routes, m, p)]
    assert not missing, f"documented but not served: {sorted(set(missing))}"
