"""The settings table: TOML + environment, secrets only from the environment, docs in sync."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot import config
from bot.cli import cli
from bot.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "repotune.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_then_environment_with_types(tmp_path):
    path = write(tmp_path, f"""
home = "{tmp_path}/h"
[policy]
debounce_seconds = 30
[[repos]]
name = "acme/web"
url = "file:///srv/web.git"
forge = "gitlab"
project_id = 15
branches = ["main", "release/*"]
""")
    env = {"REPOTUNE_POLICY_DEBOUNCE_SECONDS": "45", "REDIS_URL": "redis://r:6379/0",
           "REPOTUNE_TRAINING_GPUS": "2", "REPOTUNE_INSECURE_NO_WEBHOOK_SECRET": "true"}
    s = config.load(path, env=env)
    assert s.policy.debounce_seconds == 45 and s.redis_url == "redis://r:6379/0"
    assert s.training.gpus == 2 and s.insecure_no_webhook_secret is True
    assert s.home == (tmp_path / "h").resolve() and s.source == path.resolve()
    repo = s.repo_for("gitlab", "ACME/Web")
    assert repo is not None and repo.name == "acme/web"
    assert s.repo_for("gitlab", "other/name", project_id=15) is repo  # GitLab id wins
    assert repo.tracks("release/1.2") and repo.tracks("main") and not repo.tracks("feature/x")
    assert repo.corpus_name("release/1.2") == "acme/web@release%2F1.2"
    assert repo.corpus_spec(branch="release/1.2").branch == "release/1.2"
    spec = repo.corpus_spec(token="t")
    assert spec.name == "acme/web" and spec.branch == "main" and spec.token == "t"


def test_secrets_come_only_from_the_environment(tmp_path):
    path = write(tmp_path, '[github]\nwebhook_secret = "oops"\n')
    with pytest.raises(ConfigError, match="REPOTUNE_GITHUB_WEBHOOK_SECRET"):
        config.load(path, env={})
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    s = config.load(None, env={"REPOTUNE_GITHUB_WEBHOOK_SECRET_FILE": str(secret_file),
                               "REPOTUNE_GITLAB_TOKEN": "glpat-x"})
    assert s.github.webhook_secret == "from-file" and s.gitlab.token == "glpat-x"
    assert s.as_dict()["gitlab.token"] == "***"


@pytest.mark.parametrize("text, words", [
    ("[policy]\ndebounce_seconds = \"soon\"\n", "policy.debounce_seconds"),
    ("[policy]\ndebounce_secs = 1\n", "unknown setting 'policy.debounce_secs'"),
    ("[[repos]]\nname = \"x\"\n", "needs `name` and `url`"),
    ("[[repos]]\nname = \"x\"\nurl = \"u\"\nforge = \"bitbucket\"\n", "github, gitlab or local"),
    ("this is = not toml", "not valid TOML"),
])
def test_bad_configuration_names_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        config.load(write(tmp_path, text), env={})


def test_example_file_loads_back_to_the_defaults(tmp_path):
    result = CliRunner().invoke(cli, ["init", "--path", str(tmp_path / "repotune.toml")])
    assert result.exit_code == 0, result.output
    loaded = config.load(tmp_path / "repotune.toml", env={"REPOTUNE_HOME": str(tmp_path)})
    defaults = config.load(None, env={"REPOTUNE_HOME": str(tmp_path)})
    assert loaded.as_dict() == defaults.as_dict()
    again = CliRunner().invoke(cli, ["init", "--path", str(tmp_path / "repotune.toml")])
    assert again.exit_code == 1 and "--force" in again.output


def test_every_setting_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    missing = [row.key for row in config.SETTINGS if f"`{row.key}`" not in text]
    assert not missing, f"add these keys to docs/configuration.md (bot.config.settings_markdown()): {missing}"
    assert config.settings_markdown() in text, "regenerate the table in docs/configuration.md"


def test_config_command_masks_secrets(tmp_path):
    result = CliRunner(env={"REPOTUNE_GITHUB_TOKEN": "ghp_secret", "REPOTUNE_CONFIG": None}).invoke(
        cli, ["config", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "ghp_secret" not in result.output and '"github.token": "***"' in result.output


def test_every_run_status_is_documented():
    from bot.runs import RunStatus

    text = (DOCS.parent / "runs.md").read_text(encoding="utf-8")
    missing = [s.value for s in RunStatus if f"| `{s.value}` |" not in text]
    assert not missing, f"document these run states in docs/runs.md: {missing}"


def test_runs_and_status_commands(tmp_path, redis_url):
    import json

    from bot.runs import new_run, save_run

    run = new_run(repo="hello", trigger={"kind": "push"}, model="codegen")
    save_run(tmp_path, run)
    runner = CliRunner(env={"REDIS_URL": redis_url, "REPOTUNE_CONFIG": None})
    listed = runner.invoke(cli, ["runs", "--json", "--home", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [run.id]
    text = runner.invoke(cli, ["runs", "--home", str(tmp_path)])
    assert run.id in text.output and "queued" in text.output
    status = runner.invoke(cli, ["status", "--json", "--home", str(tmp_path)])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["redis"]["ok"] is True and data["runs"][0]["id"] == run.id
    bad = runner.invoke(cli, ["worker", "--queues", "nope", "--burst", "--home", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown queue" in bad.output


def test_training_and_evaluation_are_the_packages_own_configs(tmp_path):
    # One declaration per setting: [training] takes exactly FinetuneConfig's recipe fields and
    # [evaluation] is an EvalConfig, checked by EvalConfig itself.
    from trainer.evaluate import EvalConfig
    from trainer.finetune import FinetuneConfig

    s = config.load(write(tmp_path, "[training]\nweight_decay = 0.1\n[evaluation]\nkinds = [\"line\"]\n"), env={})
    assert s.training.recipe()["weight_decay"] == 0.1 and s.evaluation.kinds == ("line",)
    assert isinstance(s.evaluation, EvalConfig) and type(s.evaluation.eval_config()) is EvalConfig
    assert set(s.training.recipe()) == {f.name for f in dataclasses.fields(FinetuneConfig)} - {
        "base", "train_files", "heldout_files", "output_dir", "cache_dir"}
    with pytest.raises(ConfigError, match="unknown setting 'training.weight_decayy'"):
        config.load(write(tmp_path, "[training]\nweight_decayy = 0.1\n"), env={})
    with pytest.raises(ConfigError, match=r"\[evaluation\].*primary_metric='speed'"):
        config.load(write(tmp_path, "[evaluation]\nprimary_metric = \"speed\"\n"), env={})
    row = next(r for r in config.SETTINGS if r.key == "training.weight_decay")
    assert row.help == "AdamW weight decay."  # FinetuneConfig's docstring is the help text


def test_serving_settings_build_the_proxy_both_commands_run(tmp_path):
    # [serving] mirrors ProxyConfig: the defaults agree, the environment reaches the proxy, and
    # repotune serve and repotune up both build it with bot.proxy_settings.proxy_config.
    from bot.proxy_settings import proxy_config
    from bot.settings import PROXY_SETTINGS
    from serving import ProxyConfig

    plain = proxy_config(config.load(None, env={"REPOTUNE_HOME": str(tmp_path)}), triton_url="t:1")
    defaults = ProxyConfig(triton_url="t:1", model_repository=tmp_path / "triton")
    for name in (*PROXY_SETTINGS, "timeout_s", "token_ttl_s", "model_name", "api_keys"):
        assert getattr(plain, name) == getattr(defaults, name), name
    assert plain.events_dir == tmp_path / "telemetry" and plain.model_repository == tmp_path / "triton"
    env = {"REPOTUNE_HOME": str(tmp_path), "REPOTUNE_SERVING_TRITON_URL": "triton:8000",
           "REPOTUNE_SERVING_STRICT_CONTEXT": "true", "REPOTUNE_SERVING_MAX_CONCURRENT_STREAMS": "3",
           "REPOTUNE_SERVING_REQUEST_TIMEOUT_SECONDS": "2.5", "REPOTUNE_SERVING_FAMILY": "codegen",
           "REPOTUNE_SERVING_EVENTS_DIR": str(tmp_path / "ev"), "REPOTUNE_API_KEYS": "k1, k2"}
    cfg = proxy_config(config.load(None, env=env))
    assert (cfg.triton_url, cfg.strict_context, cfg.max_concurrent_streams, cfg.timeout_s, cfg.family,
            cfg.events_dir, cfg.api_keys) == ("triton:8000", True, 3, 2.5, "codegen", tmp_path / "ev",
                                              ("k1", "k2"))
    assert proxy_config(config.load(None, env=env), timeout_s=None, model_name="other").timeout_s == 2.5
    with pytest.raises(ConfigError, match="serving.family = 'gpt5'.*codegen"):
        proxy_config(config.load(None, env={**env, "REPOTUNE_SERVING_FAMILY": "gpt5"}))


def test_up_refuses_an_open_proxy_on_the_network_before_starting_anything(tmp_path):
    from bot import up

    settings = config.load(None, env={"REPOTUNE_HOME": str(tmp_path / "home"),
                                      "REPOTUNE_SERVING_PROXY_HOST": "0.0.0.0"})
    with pytest.raises(ConfigError, match="REPOTUNE_API_KEYS.*0.0.0.0|0.0.0.0.*REPOTUNE_API_KEYS"):
        up.start(settings)
    assert not (tmp_path / "home").exists()  # refused before Redis, Triton or a worker started
    result = CliRunner(env={"REPOTUNE_CONFIG": None, "REPOTUNE_SERVING_PROXY_HOST": "0.0.0.0",
                            "REPOTUNE_API_KEYS": None, "REPOTUNE_API_KEYS_FILE": None}).invoke(
        cli, ["up", "--home", str(tmp_path / "home")])
    assert result.exit_code == 1 and "REPOTUNE_API_KEYS" in result.output, result.output


def test_the_environment_is_read_at_each_load_even_after_os_environ_is_rebound(tmp_path) -> None:
    """``datasets.map(num_proc=…)`` rebinds ``os.environ`` to a copy; settings loaded afterwards
    must still see the environment of now (a stale one once let malformed API keys through)."""
    import copy
    import os

    original = os.environ
    os.environ = copy.deepcopy(original)  # noqa: B003 - what datasets does
    try:
        os.environ["REPOTUNE_SERVING_PROXY_PORT"] = "6123"
        assert config.load(None).serving.proxy_port == 6123
    finally:
        os.environ = original  # noqa: B003
