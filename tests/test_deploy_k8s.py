"""deploy/k8s: every manifest parses, and the references between them hold — Services select
Deployments and name their ports, volumes name existing claims, ConfigMaps and Secrets,
secret files are keys of the Secret, env names are read by the code, commands are real."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from bot import defaults
from tests.fixtures.deploy import (
    DEPLOY,
    THIRD_PARTY_ENV,
    check_repotune_command,
    check_rq_cron,
    image_source,
    load_k8s,
    webhook_bind,
)

K8S = DEPLOY / "k8s"
REPOTUNE_DEPLOYMENTS = ("webhook", "worker-cpu", "worker-gpu", "proxy", "scheduler")
NAMESPACED = {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "StatefulSet",
              "Service", "Ingress"}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    """(kind, name) → manifest, across every file (duplicates fail)."""
    out: dict[tuple[str, str], dict] = {}
    for path, doc in load_k8s():
        if doc.get("kind") == "Kustomization":
            continue
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path.name}: a document without {key}"
        ident = (doc["kind"], doc["metadata"]["name"])
        assert ident not in out, f"{path.name}: {ident} defined twice"
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"].get("namespace") == "repotune", f"{path.name}: {ident} namespace"
        out[ident] = doc
    return out


def _of(objects: dict, kind: str) -> dict[str, dict]:
    return {name: doc for (k, name), doc in objects.items() if k == kind}


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def _container(deployment: dict) -> dict:
    (container,) = _pod(deployment)["containers"]
    return container


def _argv(container: dict) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def _env(container: dict, objects: dict) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps, then env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_of(objects, "ConfigMap")[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for image in kustomization.get("images", []):
        image_source(image["name"])


def test_expected_objects(objects: dict) -> None:
    assert ("Namespace", "repotune") in objects
    assert {"repotune-config", "repotune-env"} <= set(_of(objects, "ConfigMap"))
    assert "repotune-secrets" in _of(objects, "Secret")
    assert {"redis", "triton", *REPOTUNE_DEPLOYMENTS} <= set(_of(objects, "Deployment"))
    assert {"redis", "triton", "webhook", "proxy"} <= set(_of(objects, "Service"))
    assert _of(objects, "PersistentVolumeClaim")["repotune-home"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_deployments_reference_what_exists(objects: dict) -> None:
    claims = set(_of(objects, "PersistentVolumeClaim"))
    configmaps = _of(objects, "ConfigMap")
    secrets = _of(objects, "Secret")
    for name, dep in _of(objects, "Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        pod = _pod(dep)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for vol in volumes.values():
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims, (name, vol)
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, (name, vol)
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets, (name, vol)
        for container in pod["containers"]:
            image_source(container["image"])
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mounts undeclared volume {mount['name']}"
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, (name, source)
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], (name, ref)


def test_services_and_ingress_reach_ports(objects: dict) -> None:
    deployments = _of(objects, "Deployment")
    services = _of(objects, "Service")
    for name, svc in services.items():
        selected = [d for d in deployments.values()
                    if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
        port_names = {p["name"]: p["containerPort"] for p in _container(selected[0]).get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert target in port_names or target in port_names.values(), (name, port)
    for ingress in _of(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, backend
                assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}


def test_ports_match_binds_and_urls(objects: dict) -> None:
    deployments = _of(objects, "Deployment")
    services = _of(objects, "Service")
    webhook = _container(deployments["webhook"])
    bind = webhook_bind(_argv(webhook))
    assert bind.host == "0.0.0.0", "reachable from the Service"
    assert {p["containerPort"] for p in webhook["ports"]} == {bind.port} == {defaults.WEBHOOK_PORT}
    proxy = _container(deployments["proxy"])
    proxy_env = _env(proxy, objects)
    port = int(proxy_env.get("REPOTUNE_SERVING_PROXY_PORT", defaults.PROXY_PORT))  # `repotune serve` binds it
    assert {p["containerPort"] for p in proxy["ports"]} == {port} == {defaults.PROXY_PORT}
    assert proxy_env["REPOTUNE_SERVING_PROXY_HOST"] == "0.0.0.0"
    triton = _container(deployments["triton"])
    bound = {flag.split("=")[0][2:-5]: int(flag.split("=")[1]) for flag in _argv(triton)
             if flag.startswith(("--http-port=", "--grpc-port=", "--metrics-port="))}
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == bound
    env = _of(objects, "ConfigMap")["repotune-env"]["data"]
    host, port = env["REPOTUNE_SERVING_TRITON_URL"].split(":")
    triton_svc = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}
    assert int(port) == triton_svc["http"], "serving.triton_url is Triton's HTTP address"
    redis_host, redis_port = env["REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    assert int(redis_port) in {p["port"] for p in services[redis_host]["spec"]["ports"]}
    redis_args = _argv(_container(deployments["redis"]))
    assert redis_args[redis_args.index("--port") + 1] == redis_port


def test_shared_home_secrets_and_gpus(objects: dict) -> None:
    deployments = _of(objects, "Deployment")
    secret_keys = set(_of(objects, "Secret")["repotune-secrets"]["stringData"])
    for name in REPOTUNE_DEPLOYMENTS:
        dep = deployments[name]
        container = _container(dep)
        env = _env(container, objects)
        volumes = {v["name"]: v for v in _pod(dep)["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        home = mounts[env["REPOTUNE_HOME"]]
        assert home["persistentVolumeClaim"]["claimName"] == "repotune-home", name
        config_dir, _, config_file = env["REPOTUNE_CONFIG"].rpartition("/")
        assert mounts[config_dir]["configMap"]["name"] == "repotune-config", name
        assert config_file in _of(objects, "ConfigMap")["repotune-config"]["data"], name
        for key, value in env.items():
            if key.endswith("_FILE"):
                folder, _, file = value.rpartition("/")
                assert "secret" in mounts[folder], f"{name}: {key} is not under the Secret's mount"
                assert file in secret_keys, f"{name}: {key} names {file}, not a key of the Secret"
        assert _pod(dep)["securityContext"]["runAsNonRoot"] is True, name
    triton = deployments["triton"]
    mounts = {m["mountPath"]: m["name"] for m in _container(triton)["volumeMounts"]}
    home = _of(objects, "ConfigMap")["repotune-env"]["data"]["REPOTUNE_HOME"]
    assert {v["name"]: v for v in _pod(triton)["volumes"]}[mounts[home]]["persistentVolumeClaim"][
        "claimName"] == "repotune-home", "Triton must mount REPOTUNE_HOME at the same path"
    args = _argv(_container(triton))
    assert f"--model-repository={home}/triton" in args
    assert "--model-control-mode=explicit" in args
    model = _of(objects, "ConfigMap")["repotune-env"]["data"]["REPOTUNE_SERVING_MODEL_NAME"]
    assert f"--load-model={model}" in args
    for name in ("triton", "worker-gpu"):
        pod = _pod(deployments[name])
        assert pod["nodeSelector"].get("nvidia.com/gpu.present") == "true", name
        assert int(_container(deployments[name])["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
    gpu_worker = _container(deployments["worker-gpu"])
    assert _env(gpu_worker, objects)["REPOTUNE_TRAINING_GPUS"] == str(
        gpu_worker["resources"]["limits"]["nvidia.com/gpu"]), "DeepSpeed ranks = GPUs the pod gets"
    for name in ("webhook", "worker-cpu", "proxy", "redis", "scheduler"):
        limits = _container(deployments[name]).get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in limits, f"{name} should not hold GPUs"


def test_secret_holds_placeholders_only(objects: dict) -> None:
    data = _of(objects, "Secret")["repotune-secrets"]
    assert "data" not in data, "base64 data in a committed Secret looks like a real secret"
    for key, value in data["stringData"].items():
        assert value == "" or value.startswith("CHANGE-ME"), f"{key} holds something other than a placeholder"


def test_env_names_are_read_by_the_code(objects: dict, code_env_names: set[str]) -> None:
    for name, dep in _of(objects, "Deployment").items():
        for container in _pod(dep)["containers"]:
            for key in _env(container, objects):
                assert key in code_env_names or key in THIRD_PARTY_ENV, (
                    f"Deployment {name} sets {key}, which no RepoTune code reads")


def test_commands_are_real(objects: dict) -> None:
    deployments = _of(objects, "Deployment")
    queues: dict[str, list[str]] = defaultdict(list)
    for name in ("worker-cpu", "worker-gpu"):
        argv = _argv(_container(deployments[name]))
        check_repotune_command(argv)
        for queue in argv[argv.index("--queues") + 1].split(","):
            queues[queue].append(name)
    assert set(queues) == set(defaults.QUEUES), "every queue needs a worker and no unknown queues"
    assert queues["gpu"] == ["worker-gpu"]
    assert webhook_bind(_argv(_container(deployments["webhook"]))).threads >= 1  # parsed by the real command
    check_repotune_command(_argv(_container(deployments["proxy"])))
    scheduler = _container(deployments["scheduler"])
    (tick,) = check_rq_cron(_argv(scheduler), _env(scheduler, objects)["REDIS_URL"])
    assert tick.func_name == "bot.jobs.tick_job" and tick.queue_name == "control"
    assert deployments["scheduler"]["spec"]["replicas"] == 1, "one scheduler: ticks need not be doubled"


def test_config_map_is_the_example_and_loads(objects: dict, tmp_path: Path) -> None:
    """The ConfigMap's repotune.toml is deploy/repotune.example.toml, and the pods' environment
    plus that file load into valid settings (secret files made real)."""
    from bot.config import load

    toml = _of(objects, "ConfigMap")["repotune-config"]["data"]["repotune.toml"]
    assert toml == (DEPLOY / "repotune.example.toml").read_text(encoding="utf-8")
    (tmp_path / "repotune.toml").write_text(toml)
    env = dict(_of(objects, "ConfigMap")["repotune-env"]["data"])
    for key, value in list(env.items()):
        if key.endswith("_FILE"):
            secret = tmp_path / Path(value).name
            secret.write_text("token-" + secret.name if secret.name.startswith("gitlab") else "")
            env[key] = str(secret)
    env.update(REPOTUNE_CONFIG=str(tmp_path / "repotune.toml"), REPOTUNE_HOME=str(tmp_path / "home"))
    settings = load(env=env)
    assert settings.gitlab.webhook_token == "token-gitlab_webhook_token"
    assert settings.github.token is None
    assert settings.serving.model_name == "codegen"
    assert settings.status_page_url == "https://repotune.example.internal"
    assert {r.forge for r in settings.repos} == {"github", "gitlab"}


def _secret_file(deployment: dict, variable: str, objects: dict) -> tuple[str, str]:
    """(secret name, key) of the file a ``*_FILE`` variable of this Deployment names."""
    container = _container(deployment)
    value = _env(container, objects)[variable]
    folder, _, key = value.rpartition("/")
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    return volumes[mount["name"]]["secret"]["secretName"], key


def test_secret_files_are_wired(objects: dict, tmp_path: Path) -> None:
    """The webhook reads its status token and the proxy its API keys from the mounted Secret,
    the settings really pick the token up from that variable, and secret.yaml's
    `kubectl create secret` comment creates every key."""
    from bot.config import load

    deployments = _of(objects, "Deployment")
    assert _secret_file(deployments["webhook"], "REPOTUNE_STATUS_TOKEN_FILE", objects) == (
        "repotune-secrets", "status_token")
    assert _secret_file(deployments["proxy"], "REPOTUNE_API_KEYS_FILE", objects) == (
        "repotune-secrets", "proxy_api_keys")
    token = tmp_path / "status_token"
    token.write_text("s3cret-status-token")
    assert load(env={"REPOTUNE_STATUS_TOKEN_FILE": str(token),
                     "REPOTUNE_HOME": str(tmp_path / "home")}).webhook.status_token == "s3cret-status-token"
    comment = "\n".join(line for line in (K8S / "secret.yaml").read_text(encoding="utf-8").splitlines()
                        if line.startswith("#"))
    assert "kubectl -n repotune create secret generic repotune-secrets" in comment
    for key in _of(objects, "Secret")["repotune-secrets"]["stringData"]:
        assert f"{key}=" in comment, f"secret.yaml's kubectl command does not create {key}"


def test_status_views_stay_private(objects: dict) -> None:
    """The ingress routes only /webhooks/ to the webhook Service (the status views and /metrics
    stay on the cluster network), and the webhook pod does not ask annotation-driven Prometheus
    to scrape a /metrics that needs a token it would not send."""
    to_webhook = [path for ingress in _of(objects, "Ingress").values()
                  for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]
                  if path["backend"]["service"]["name"] == "webhook"]
    assert [(p["path"], p["pathType"]) for p in to_webhook] == [("/webhooks/", "Prefix")]
    webhook = _of(objects, "Deployment")["webhook"]
    assert "REPOTUNE_STATUS_TOKEN_FILE" in _env(_container(webhook), objects)
    annotations = webhook["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations.get("prometheus.io/scrape") != "true", (
        "the webhook's /metrics needs the status token; scrape it with a job that sends it "
        "(docs/operations.md, Monitoring), not through prometheus.io annotations")
