"""``[[models]]`` in repotune.toml: parsing, validation (each error names its key), the implicit
model of a configuration without them, and a model's view of the settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot import config, models
from bot.errors import BotError, ConfigError

REPOS = """
[[repos]]
name = "web"
url = "https://example.invalid/acme/web.git"

[[repos]]
name = "api"
url = "https://example.invalid/acme/api.git"
"""

TWO_MODELS = REPOS + """
[training]
num_epochs = 1.0
base_model = "/srv/base"

[[models]]
name = "web-lora"
repos = ["web"]
lora_r = 8
lora_target_modules = ["q_proj", "v_proj"]
training = { num_epochs = 3, learning_rate = 0.0001 }
evaluation = { num_tasks = 50 }

[[models]]
name = "all_full"
repos = ["web", "api"]
method = "full"
base_model = "/srv/other-base"
family = "codegen"
"""


def _load(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "repotune.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path, env={})


def test_two_models_parse_with_defaults_and_coerced_overrides(tmp_path: Path) -> None:
    settings = _load(tmp_path, TWO_MODELS)
    web, full = models.model_specs(settings)
    assert (web.name, web.method, web.repos, web.lora_r, web.lora_alpha) == ("web-lora", "lora", ["web"], 8, 32)
    assert web.lora_target_modules == ["q_proj", "v_proj"]
    assert web.training == {"num_epochs": 3.0, "learning_rate": 0.0001}
    assert isinstance(web.training["num_epochs"], float)  # coerced like [training] itself
    assert (full.method, full.base_model, full.family, full.repos) == ("full", "/srv/other-base", "codegen",
                                                                      ["web", "api"])
    assert [m.name for m in models.models_for_repo(settings, "api")] == ["all_full"]
    assert [m.name for m in models.models_for_repo(settings, "web")] == ["web-lora", "all_full"]
    assert settings.as_dict()["models"][0]["name"] == "web-lora"


def test_a_models_view_has_its_repos_name_and_overrides(tmp_path: Path) -> None:
    settings = _load(tmp_path, TWO_MODELS)
    web = models.settings_for(settings, "web-lora")
    assert [r.name for r in web.repos] == ["web"]
    assert web.serving.model_name == "web-lora"
    assert (web.training.num_epochs, web.training.learning_rate) == (3.0, 0.0001)
    assert web.training.base_model == "/srv/base"  # not set on the model: [training]'s
    assert web.evaluation.num_tasks == 50
    full = models.settings_for(settings, "all_full")
    assert full.training.base_model == "/srv/other-base" and full.training.family == "codegen"
    assert full.training.num_epochs == 1.0 and full.evaluation.num_tasks == settings.evaluation.num_tasks
    # the full settings are untouched, and a view is never re-scoped to another model
    assert settings.serving.model_name != "web-lora" and len(settings.repos) == 2
    with pytest.raises(BotError, match="view"):
        models.settings_for(web, "all_full")
    assert models.settings_for(web, None) is web


def test_without_models_one_implicit_model_learns_from_everything(tmp_path: Path) -> None:
    settings = _load(tmp_path, REPOS + '\n[serving]\nmodel_name = "codegen"\n')
    (spec,) = models.model_specs(settings)
    assert spec.implicit and spec.name == "codegen" and spec.repos == ["web", "api"]
    assert spec.method == "full"  # [training]'s method, today's behaviour
    assert models.get_model(settings, None) == spec
    assert models.models_for_repo(settings, "anything") == [spec]
    view = models.settings_for(settings, None)
    assert view.repos == settings.repos and view.training == settings.training
    assert view.serving == settings.serving and view.model == spec


def test_get_model_with_several_needs_a_name(tmp_path: Path) -> None:
    settings = _load(tmp_path, TWO_MODELS)
    with pytest.raises(BotError, match="several models are configured \\(web-lora, all_full\\)"):
        models.get_model(settings, None)
    with pytest.raises(BotError, match="no model named 'nope' \\(configured: web-lora, all_full\\)"):
        models.get_model(settings, "nope")


@pytest.mark.parametrize(("entry", "message"), [
    ('name = "a"\nrepos = ["web"]\n[[models]]\nname = "a"\nrepos = ["api"]', "models.name: a is configured more than once"),
    ('name = "has.dot"\nrepos = ["web"]', "not a valid Triton model name|valid Triton model name"),
    ('name = "a/b"\nrepos = ["web"]', "valid Triton model name"),
    ('repos = ["web"]', "models.name = None"),
    ('name = "a"\nrepos = ["web", "mobile"]', "models.a.repos names 'mobile', which no \\[\\[repos\\]\\]"),
    ('name = "a"', "models.a.repos is empty"),
    ('name = "a"\nrepos = ["web"]\nmethod = "qlora"', "models.a.method = 'qlora': use lora or full"),
    ('name = "a"\nrepos = ["web"]\ntraining = { epochs = 2 }', "models.a.training overrides unknown \\[training\\] key\\(s\\) epochs"),
    ('name = "a"\nrepos = ["web"]\nevaluation = { gate = 1 }', "models.a.evaluation overrides unknown \\[evaluation\\] key\\(s\\) gate"),
    ('name = "a"\nrepos = ["web"]\ntraining = { family = "codegen" }', "models.a.training sets family"),
    ('name = "a"\nrepos = ["web"]\nlora_r = "eight"', "models.a.lora_r = 'eight'"),
    ('name = "a"\nrepos = ["web"]\ncolour = "red"', "unknown key\\(s\\) \\['colour'\\] in \\[\\[models\\]\\] 'a'"),
    ('name = "a"\nrepos = ["web"]\nlora_dropout = 1.5', "models.a: lora_r and lora_alpha must be positive"),
])
def test_invalid_models_are_refused_naming_the_key(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, REPOS + "\n[[models]]\n" + entry + "\n")


def test_models_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="models must be an array of tables"):
        _load(tmp_path, 'models = ["a"]\n' + REPOS)


def test_the_settings_table_documents_every_model_key() -> None:
    keys = {row.key for row in config.SETTINGS if row.key.startswith("models.")}
    assert keys == {f"models.{k}" for k in ("name", "base_model", "family", "repos", "method", "lora_r",
                                            "lora_alpha", "lora_dropout", "lora_target_modules",
                                            "training", "evaluation")}
    assert all(row.env is None for row in config.SETTINGS if row.key.startswith("models."))
    example = config.example_toml()  # no half-written [[models]] in the example
    assert "[[models]]" not in example and not re.search(r"^#? ?models\.\w+ ?=", example, re.M), example
