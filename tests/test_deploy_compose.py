"""deploy/docker-compose.yml, .env.example and the Dockerfiles agree with each other and with
the code: images are built or well known, volumes and secrets are declared, ports line up
with what the commands bind, env names are ones RepoTune reads, commands are real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bot import defaults
from tests.fixtures.deploy import (
    DEPLOY,
    ROOT,
    THIRD_PARTY_ENV,
    check_repotune_command,
    check_rq_cron,
    command_argv,
    dockerfile_env,
    dockerfile_from_images,
    dockerfile_instructions,
    image_source,
    interpolate,
    load_dotenv,
    webhook_bind,
)

COMPOSE = DEPLOY / "docker-compose.yml"
REPOTUNE_SERVICES = ("webhook", "worker-cpu", "worker-gpu", "proxy", "scheduler")


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    return load_dotenv(DEPLOY / ".env.example")


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose(raw_compose: dict, dotenv: dict[str, str]) -> dict:
    """The compose file as `docker compose config` would see it with .env.example as .env."""
    return interpolate(raw_compose, dotenv)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict) -> dict[str, str]:
    """container path → source (named volume or host path) of short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = parts[0]
    return out


def test_services_and_images(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "triton", *REPOTUNE_SERVICES} <= set(services)
    for name, svc in services.items():
        source = image_source(svc["image"])
        if "build" in svc:
            build = svc["build"]
            context = (COMPOSE.parent / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: build.dockerfile {dockerfile} missing"
            assert source == f"ours:{dockerfile.name}", (
                f"{name}: image {svc['image']} is built from {dockerfile.name}, but that image name "
                f"belongs to {source}")
        else:
            assert source == "upstream", f"{name}: {svc['image']} is ours but has no build section"
    assert services["worker-gpu"]["image"].startswith("repotune-cuda:")
    assert services["webhook"]["image"].startswith("repotune:")


def test_dockerfiles(compose: dict) -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.cuda", "Dockerfile.triton"):
        path = DEPLOY / dockerfile
        for image in dockerfile_from_images(path):
            assert image_source(image) == "upstream", f"{dockerfile}: FROM {image}"
        for word, rest in dockerfile_instructions(path):
            if word == "COPY" and "--from=" not in rest:
                *sources, _dst = rest.split()
                for src in sources:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} (not in the build context)"
    assert dockerfile_from_images(DEPLOY / "Dockerfile") == ["python:3.11-slim"]
    assert dockerfile_from_images(DEPLOY / "Dockerfile.triton")[0].startswith("nvcr.io/nvidia/tritonserver:")
    assert dockerfile_from_images(DEPLOY / "Dockerfile.triton")[0].endswith("-py3")
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        assert "ARG TORCH_VERSION=2.13.0" in text and '"torch==${TORCH_VERSION}"' in text, dockerfile
        # Every package the wheel needs is copied (setuptools finds these four).
        for package in ("bot", "trainer", "converter", "serving"):
            assert f"COPY {package} ./{package}" in text, f"{dockerfile} misses {package}/"
    # The images' REPOTUNE_HOME is where compose mounts the shared volume.
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        home = dockerfile_env(DEPLOY / dockerfile)["REPOTUNE_HOME"]
        assert _mounts(compose["services"]["webhook"])[home] == "repotune-home"


def test_volumes_and_secrets_declared(raw_compose: dict, compose: dict, dotenv: dict[str, str]) -> None:
    declared_volumes = set(raw_compose.get("volumes") or {})
    declared_secrets = set(raw_compose.get("secrets") or {})
    for name, svc in compose["services"].items():
        for source in _mounts(svc).values():
            if source.startswith((".", "/")):
                host = (COMPOSE.parent / source).resolve()
                example = host.with_name(host.stem + ".example" + host.suffix)
                assert host.exists() or example.exists(), (
                    f"{name}: bind mount {source} has neither the file nor {example.name}")
            else:
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared"
        for secret in svc.get("secrets", []):
            assert secret in declared_secrets, f"{name}: secret {secret!r} is not declared"
        # A *_FILE variable points at a secret this very service mounts.
        for key, value in _env(svc).items():
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in svc.get("secrets", []), (name, key, value)
    for secret, spec in compose["secrets"].items():
        assert spec["file"] == f"{dotenv['SECRETS_DIR']}/{secret}", (secret, spec)


def test_shared_home_and_model_repository(compose: dict) -> None:
    services = compose["services"]
    homes = set()
    for name in REPOTUNE_SERVICES:
        home = _env(services[name])["REPOTUNE_HOME"]
        homes.add(home)
        assert _mounts(services[name]).get(home) == "repotune-home", f"{name} lacks the shared volume at {home}"
    (home,) = homes
    triton = services["triton"]
    assert _mounts(triton).get(home) == "repotune-home", "Triton must mount REPOTUNE_HOME at the same path"
    script = " ".join(command_argv(triton["command"]))
    assert f"--model-repository={home}/triton " in script + " "
    assert "--model-control-mode=explicit" in script
    model = _env(services["proxy"])["REPOTUNE_SERVING_MODEL_NAME"]
    assert f"--load-model={model} " in script + " "


def test_ports_match_binds(compose: dict, dotenv: dict[str, str]) -> None:
    services = compose["services"]
    expected_external = {"webhook": dotenv["WEBHOOK_EXTERNAL_PORT"], "proxy": dotenv["API_EXTERNAL_PORT"]}
    webhook = webhook_bind(command_argv(services["webhook"]["command"]))
    assert webhook.host == "0.0.0.0", "reachable through the published port"
    assert webhook.port == defaults.WEBHOOK_PORT
    bound = {"webhook": webhook.port,
             # `repotune serve` binds serving.proxy_host/port, set through the environment.
             "proxy": int(_env(services["proxy"]).get("REPOTUNE_SERVING_PROXY_PORT", defaults.PROXY_PORT))}
    assert _env(services["proxy"])["REPOTUNE_SERVING_PROXY_HOST"] == "0.0.0.0", "reachable from other containers"
    for name in ("webhook", "proxy"):
        port = bound[name]
        (mapping,) = services[name]["ports"]
        host, container = mapping.rsplit(":", 1)
        assert int(container) == port, f"{name}: publishes {container}, its command binds {port}"
        assert host == expected_external[name]
    assert int(dotenv["API_EXTERNAL_PORT"]) == defaults.PROXY_PORT  # FauxPilot's :5000
    # Triton's ports are the ones its command binds, and the URL the code uses names one.
    script = " ".join(command_argv(services["triton"]["command"]))
    bound = {k: v for k, v in re.findall(r"--(http|grpc|metrics)-port=(\d+)", script)}
    assert set(services["triton"]["expose"]) == set(bound.values())
    url = _env(services["proxy"])["REPOTUNE_SERVING_TRITON_URL"]
    host, port = url.removeprefix("http://").split(":")
    assert host == "triton" and port == bound["http"], "serving.triton_url is Triton's HTTP address"
    # Redis: the URL names the service and the port redis-server listens on.
    redis_cmd = command_argv(services["redis"]["command"])
    redis_port = redis_cmd[redis_cmd.index("--port") + 1]
    assert _env(services["webhook"])["REDIS_URL"] == f"redis://redis:{redis_port}/0"
    assert services["redis"]["expose"] == [redis_port]


def test_gpu_reservations(compose: dict) -> None:
    for name in ("triton", "worker-gpu"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    for name in ("webhook", "worker-cpu", "proxy", "redis", "scheduler"):
        assert "deploy" not in compose["services"][name], f"{name} should not hold GPUs"


def test_env_names_are_read_by_the_code(raw_compose: dict, compose: dict, dotenv: dict[str, str],
                                         code_env_names: set[str]) -> None:
    for name, svc in compose["services"].items():
        for key in _env(svc):
            assert key in code_env_names or key in THIRD_PARTY_ENV, (
                f"compose service {name} sets {key}, which no RepoTune code reads")
    for dockerfile in ("Dockerfile", "Dockerfile.cuda", "Dockerfile.triton"):
        for key in dockerfile_env(DEPLOY / dockerfile):
            assert key in code_env_names or key in THIRD_PARTY_ENV, f"{dockerfile}: ENV {key}"
    # .env.example only feeds compose's interpolation: every key is used there, and every
    # variable compose interpolates has an entry (or a default).
    used: set[str] = set()
    interpolate(raw_compose, dotenv, used)
    assert set(dotenv) == used, (
        f".env.example keys unused by compose: {sorted(set(dotenv) - used)}; "
        f"interpolated but undocumented: {sorted(used - set(dotenv))}")


def test_commands_are_real(compose: dict, dotenv: dict[str, str]) -> None:
    services = compose["services"]
    queues_served: set[str] = set()
    for name in ("worker-cpu", "worker-gpu"):
        argv = command_argv(services[name]["command"])
        check_repotune_command(argv)
        queues = argv[argv.index("--queues") + 1].split(",")
        assert set(queues) <= set(defaults.QUEUES), f"{name}: unknown queue in {queues}"
        queues_served |= set(queues)
    assert queues_served == set(defaults.QUEUES), "every queue needs a worker"
    assert command_argv(services["worker-gpu"]["command"])[-1] == "gpu"
    # `repotune webhook` parses with the real command (webhook_bind checks it) and runs threads.
    assert webhook_bind(command_argv(services["webhook"]["command"])).threads == int(dotenv["WEBHOOK_THREADS"])
    check_repotune_command(command_argv(services["proxy"]["command"]))
    (tick,) = check_rq_cron(command_argv(services["scheduler"]["command"]), _env(services["scheduler"])["REDIS_URL"])
    assert tick.func_name == "bot.jobs.tick_job" and tick.queue_name == "control"
    assert "ports" not in services["scheduler"] and "ports" not in services["worker-cpu"]


def test_settings_load_from_the_compose_environment(compose: dict, tmp_path: Path) -> None:
    """The worker's environment (secret files made real) loads into the settings it means."""
    from bot.config import load

    env = _env(compose["services"]["worker-gpu"])
    for key, value in list(env.items()):
        if key.endswith("_FILE"):
            secret = tmp_path / Path(value).name
            secret.write_text("s3cret-" + secret.name if "github" in secret.name else "")
            env[key] = str(secret)
    env["REPOTUNE_CONFIG"] = str(DEPLOY / "repotune.example.toml")
    env["REPOTUNE_HOME"] = str(tmp_path / "home")
    settings = load(env=env)
    assert settings.serving.triton_url == "triton:8000"
    assert settings.serving.backend == "fastertransformer"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.github.webhook_secret == "s3cret-github_webhook_secret"
    assert settings.gitlab.token is None  # an empty secret file means "not used"
    assert settings.training.gpus == 1
    assert [r.name for r in settings.repos] == ["web", "platform/api"]


def test_secret_files_are_wired(compose: dict, tmp_path: Path) -> None:
    """The webhook reads its status token and the proxy its API keys from mounted secrets, the
    settings really pick them up from those variables, and .env.example says how to create
    every secret file compose mounts."""
    from bot.config import load

    services = compose["services"]
    for service, variable, secret in (("webhook", "REPOTUNE_STATUS_TOKEN_FILE", "status_token"),
                                      ("proxy", "REPOTUNE_API_KEYS_FILE", "proxy_api_keys")):
        assert _env(services[service]).get(variable) == f"/run/secrets/{secret}", (service, variable)
        assert secret in services[service]["secrets"], f"{service} does not mount the {secret} secret"
    env = _env(services["webhook"])
    for key, value in list(env.items()):
        if key.endswith("_FILE"):
            secret = tmp_path / Path(value).name
            secret.write_text("s3cret-" + secret.name)
            env[key] = str(secret)
    env.update(REPOTUNE_CONFIG=str(DEPLOY / "repotune.example.toml"), REPOTUNE_HOME=str(tmp_path / "home"))
    assert load(env=env).webhook.status_token == "s3cret-status_token"
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    for secret in compose["secrets"]:
        assert f"deploy/secrets/{secret}" in example, f".env.example does not say how to create {secret}"
