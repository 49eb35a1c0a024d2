"""``repotune serve | deploy | rollback | models``: the completion service and its model versions."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from bot.commands._common import home_option, progress_bar, resolve_home
from bot.commands.service import _settings, config_option
from bot.errors import ConfigError

URL_FILE = "triton.url"
"""Written under ``<home>/triton/`` by ``repotune serve`` so deploy/rollback find the embedded Triton."""

triton_url_option = click.option(
    "--triton-url", default=None,
    help="host:port of a running Triton's HTTP endpoint. Default: the one `repotune serve` started.")
NO_VLLM_BACKEND = "backend 'vllm'"
"""In Triton's load error when no vllm backend is installed ("unable to find backend library for
backend 'vllm'"; tritonserver 2.51, the embedded CPU server)."""
model_option = click.option("--model", "model_name", default="codegen", show_default=True,
                            help="Triton model name (and the engine name editors send).")


def _repo_root(home: Path | None) -> Path:
    return resolve_home(home) / "triton"


def _find_triton(root: Path, triton_url: str | None) -> str:
    if triton_url:
        return triton_url
    url_file = root / URL_FILE
    if url_file.is_file():
        return url_file.read_text().strip()
    raise click.ClickException(
        f"no Triton to talk to: pass --triton-url HOST:PORT, or start one with `repotune serve` "
        f"(it records its address in {url_file})")


@click.command("serve")
@config_option
@home_option
@triton_url_option
@click.option("--model", "model_name", default=None,
              help="The default model (what requests naming no model get; every deployed model is served). "
                   "Default: serving.model_name.")
@click.option("--host", default=None, help="Address the proxy listens on. Default: serving.proxy_host.")
@click.option("--port", type=int, default=None, help="Port the proxy listens on. Default: serving.proxy_port.")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Per-request deadline (s). Default: serving.request_timeout_seconds.")
@click.option("--insecure-no-api-keys", is_flag=True, default=None,
              help="Listen on a non-loopback address without API keys (trusted networks only).")
@click.option("--get", "get_path", default=None,
              help="Run one GET request in-process (e.g. /v1/models), print the body and exit "
                   "(non-zero unless 200). For scripts and health checks.")
def serve_command(config_path, home, triton_url, model_name, host, port, timeout_s, insecure_no_api_keys,
                  get_path) -> None:
    """Serve OpenAI/FauxPilot-compatible completions (embedded Triton unless a Triton URL is set).

    Settings come from repotune.toml's ``[serving]`` and the environment (``REPOTUNE_SERVING_*``,
    ``REPOTUNE_API_KEYS``), built by :func:`bot.proxy_settings.proxy_config` exactly as
    ``repotune up`` builds its proxy; the options override them. API keys are never taken on the
    command line (``ps`` shows it)."""
    from bot.proxy_settings import api_keys, check_exposure, http_limits, proxy_config
    from serving import ModelRepository, TritonServer, create_proxy_app, tritonserver_binary
    from serving.http import HttpServer
    from serving.triton import stop_on_sigterm

    settings = _settings(config_path, home)
    sv = settings.serving
    triton_url = triton_url or sv.triton_url
    model_name = model_name or sv.model_name
    host = host or sv.proxy_host
    port = sv.proxy_port if port is None else port
    keys = api_keys(sv.api_keys)
    if not get_path:
        try:
            check_exposure(host, keys, bool(insecure_no_api_keys or sv.insecure_no_api_keys))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    root = settings.home / "triton"  # the home repotune.toml names too, as `repotune up` uses it
    root.mkdir(parents=True, exist_ok=True)
    stop_on_sigterm()
    server = None
    try:
        if not triton_url:
            tritonserver_binary()  # names the fix when the binary is missing
            log = settings.home / "logs" / "tritonserver.log"
            server = TritonServer(root, log_path=log).start()
            triton_url = server.url
            (root / URL_FILE).write_text(triton_url + "\n")
            click.echo(f"embedded Triton on {triton_url} (log: {log})", err=True)
        repo = ModelRepository(root, model_name, triton_url)
        version = repo.ensure_loaded()
        if version is None:
            click.echo(f"no version of {model_name!r} deployed yet: run `repotune deploy <checkpoint>`",
                       err=True)
        app = create_proxy_app(proxy_config(settings, triton_url=triton_url, model_name=model_name,
                                            timeout_s=timeout_s))
        others = app.config["repotune.models"].names()[1:]
        for other in others:  # every served model is loaded, not only the default (embedded Triton)
            ModelRepository(root, other, triton_url).ensure_loaded()
        if get_path:
            resp = app.test_client().get(get_path, headers=_first_key_header(keys))
            click.echo(resp.get_data(as_text=True))
            if resp.status_code != 200:
                raise click.ClickException(f"GET {get_path} answered {resp.status_code}")
            return
        http = HttpServer(app, host, port, http_limits(settings), name="proxy").bind()
        served = f", also serving {', '.join(others)}" if others else ""
        click.echo(f"completions on {http.url}/v1 (model {model_name!r}, version {version}{served}, "
                   f"{'API keys required' if keys else 'no API keys'})", err=True)
        http.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            (root / URL_FILE).unlink(missing_ok=True)
            server.stop()


def _first_key_header(keys) -> dict[str, str]:
    """``--get``'s credentials: the first key that may use every model, else the first key."""
    if not keys:
        return {}
    secrets = [(getattr(k, "secret", k), getattr(k, "models", None)) for k in keys]
    secret = next((s for s, models in secrets if models is None), secrets[0][0])
    return {"Authorization": f"Bearer {secret}"}


@click.command("deploy")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@home_option
@triton_url_option
@model_option
@click.option("--backend", type=click.Choice(["python", "fastertransformer", "vllm"]), default="python",
              show_default=True, help="python: HF checkpoint on CPU/GPU; fastertransformer: FT GPT-J on GPUs; "
                                      "vllm: Triton's vLLM backend on GPUs.")
@click.option("--gpus", default=1, show_default=True, help="Tensor-parallel ranks (FasterTransformer, vLLM).")
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]DIR",
              help="vllm: a LoRA adapter trained on CHECKPOINT, served by NAME. Repeat for several.")
@click.option("--model-mount", default=None,
              help="vllm: the path at which Triton sees the model repository. Default: its path here "
                   "(--home's triton/), right for a Triton on this machine.")
@click.option("--publish-only", is_flag=True, help="Publish the version without activating it.")
def deploy_command(checkpoint, home, triton_url, model_name, backend, gpus, adapters, model_mount,
                   publish_only) -> None:
    """Convert CHECKPOINT, publish it as the next version and hot-swap it in."""
    import converter
    from bot.commands.convert import parse_adapter
    from serving import ModelLoadFailed, ModelRepository

    if adapters and backend != "vllm":
        raise click.UsageError("--adapter needs --backend vllm")
    root = _repo_root(home)
    out = resolve_home(home) / "artifacts" / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    url = None if publish_only else _find_triton(root, triton_url)
    repo = ModelRepository(root, model_name, url)
    _check_same_backend(repo, backend)
    with progress_bar("deploy") as progress:
        result = converter.convert(checkpoint, out, to=backend, gpus=gpus, model_name=model_name,
                                   dtype="auto" if backend == "vllm" else "fp32", progress=progress,
                                   adapters=[parse_adapter(a) for a in adapters])
        artifact = result.artifact
        if backend == "vllm":
            from converter.vllm import VERSION_DIR

            artifact = artifact / VERSION_DIR  # the version folder is the publishable artifact
        version = repo.publish(artifact, progress=progress)
        if backend == "vllm":
            _pin_vllm(repo, version, model_mount)
        if not publish_only:
            try:
                repo.activate(version, progress=progress)
            except ModelLoadFailed as exc:
                if backend == "vllm" and NO_VLLM_BACKEND in str(exc):
                    raise click.ClickException(_no_vllm_message(url, model_name, version, exc)) from exc
                raise
    state = "published" if publish_only else "serving"
    click.echo(f"{model_name} version {version} {state}")


def _check_same_backend(repo, backend: str) -> None:
    """One Triton model has one backend: its config.pbtxt is shared by the warm previous version
    and the new one during a swap, so switching backends would reload the serving version too."""
    serving = next((v for v in repo.versions() if v["serving"]), None)
    if serving and serving["backend"] and serving["backend"] != backend:
        raise click.ClickException(
            f"{repo.model_name!r} serves version {serving['version']} on the {serving['backend']} backend; "
            f"a {backend} version cannot hot-swap with it (one Triton model has one backend). Deploy "
            f"under a new --model name, or keep --backend {serving['backend']}.")


def _pin_vllm(repo, version: int, model_mount: str | None) -> None:
    """Point the new version's model.json / multi_lora.json at its own folder, before its first load."""
    from converter.vllm import pin_version

    vdir = repo.version_dir(version)
    mount = (model_mount or str(repo.root)).rstrip("/")
    pin_version(vdir, f"{mount}/{repo.model_name}/{version}")


def _no_vllm_message(url: str | None, model_name: str, version: int, exc: Exception) -> str:
    return (f"the Triton at {url} has no vllm backend, so version {version} of {model_name!r} cannot "
            "load (it is marked failed; any version serving before keeps serving). The vLLM backend "
            "runs on a GPU Triton: the NGC image nvcr.io/nvidia/tritonserver:<xx.yy>-vllm-python-py3 "
            "(see docs/serving.md, \"vLLM backend (GPU)\"); pass its address with --triton-url and "
            "the path it mounts the model repository at with --model-mount. On this machine, deploy "
            f"with --backend python. Triton said: {exc}")


@click.command("rollback")
@config_option
@home_option
@triton_url_option
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="The model to roll back (a [[models]] name; optional with one model).")
@click.option("--to", "to_version", type=int, default=None,
              help="Version to serve. Default: the newest healthy version older than the current one.")
def rollback_command(config_path, home, triton_url, model_name, to_version) -> None:
    """Serve an earlier version of a model again (loaded and smoke-tested before the switch).

    Runs here and now the function the chat-ops `rollback` job runs on a worker
    (:func:`bot.jobs.rollback_job`), so both keep the same number of old versions.
    """
    from bot import jobs, models
    from bot.errors import BotError

    settings = _settings(config_path, home)
    settings.serving.triton_url = _find_triton(_repo_root(settings.home), triton_url)
    try:
        if model_name is not None and not settings.models:
            settings.serving.model_name = model_name  # one implicit model: --model names its Triton model
        name = models.get_model(settings, model_name).name
        version = jobs.rollback_job(to_version, name)
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name} version {version} serving")


@click.command("models")
@config_option
@home_option
@click.option("--model", "model_name", default=None, metavar="NAME",
              help="List the published versions of this model (a Triton model name) instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_command(config_path, home, model_name, as_json) -> None:
    """The configured models (repositories, method, serving version, last run), or with --model
    the published versions of one model and which one serves."""
    if model_name is None:
        _list_models(_settings(config_path, home), as_json)
        return
    from serving import ModelRepository

    versions = ModelRepository(_repo_root(home), model_name, None).versions()
    if as_json:
        click.echo(json.dumps(versions, indent=2))
        return
    if not versions:
        click.echo(f"no versions of {model_name!r} published; run `repotune deploy <checkpoint>`")
        return
    for v in versions:
        mark = "*" if v["serving"] else " "
        state = f"FAILED: {v['failed']}" if v["failed"] else (v["backend"] or "")
        click.echo(f"{mark} {v['version']:>4}  {v['published'] or '':20}  {state}  {v['source'] or ''}")


def _list_models(settings, as_json: bool) -> None:
    from bot import models, serving_version

    rows = []
    for spec in models.model_specs(settings):
        view = models.settings_for(settings, spec)
        last = serving_version.last_run(view)
        rows.append({"name": spec.name, "repos": [r.name for r in view.repos], "method": spec.method,
                     "serving_version": serving_version.active_version(view),
                     "last_run": last.id if last else None,
                     "last_run_status": last.status.value if last else None})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        last = f"{r['last_run']} ({r['last_run_status']})" if r["last_run"] else "—"
        click.echo(f"{r['name']}  {r['method']}  repos {', '.join(r['repos']) or 'none'}  "
                   f"serving {r['serving_version'] if r['serving_version'] is not None else '—'}  last run {last}")


COMMANDS = [serve_command, deploy_command, rollback_command, models_command]
