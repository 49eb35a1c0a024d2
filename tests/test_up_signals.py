"""Stopping ``repotune up`` with SIGTERM (docker stop, systemd) or SIGINT (Ctrl-C) stops its tree.

Every child of ``up`` runs in its own session, so a signal to ``up`` reaches none of them: only
``up`` itself can stop Triton, redis-server, the webhook and the workers. This starts the real
command on a temporary home (the bootstrap hook, which would build the demo model, is switched
off as ``tests/test_bot_up.py`` does) and checks that no process of that home outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.base import free_port

_UP_WITHOUT_BOOTSTRAP = textwrap.dedent("""
    from bot.commands import service
    from bot.cli import cli
    service.BOOTSTRAP = None  # no demo forge or base model: only the process tree matters here
    cli(["up"], prog_name="repotune")
""")


def _processes_of(home: Path) -> dict[int, str]:
    """PID → command line of every process started for ``home``: tritonserver and redis-server
    name it in their arguments, the ``repotune`` children carry ``REPOTUNE_HOME`` in their environment."""
    found = {}
    mark = str(home).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue  # exited, waiting to be reaped by its parent
        if mark in argv or b"REPOTUNE_HOME=" + mark + b"\0" in environ:
            found[int(proc.name)] = argv.replace(b"\0", b" ").decode(errors="replace")
    return found


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _wait_up(proc: subprocess.Popen, urls: list[str], home: Path, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while not all(_answers(u) for u in urls):
        if proc.poll() is not None:
            raise AssertionError(f"up exited {proc.returncode}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-1500:] for p in (home / "logs").glob("*.log"))
            raise AssertionError(f"up did not answer on {urls} in {deadline_s}s\n{logs}")
        time.sleep(0.2)  # polling readiness of two listeners, bounded by the deadline


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_up_stops_triton_redis_and_every_child(sig: signal.Signals, tmp_path: Path) -> None:
    home = tmp_path / "home"
    webhook, proxy = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_") and k != "REDIS_URL"}
    env.update(REPOTUNE_HOME=str(home), REPOTUNE_WEBHOOK_PORT=str(webhook),
               REPOTUNE_SERVING_PROXY_PORT=str(proxy), REPOTUNE_INSECURE_NO_WEBHOOK_SECRET="1",
               REPOTUNE_API_KEYS="k-up")
    proc = subprocess.Popen([sys.executable, "-c", _UP_WITHOUT_BOOTSTRAP], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_up(proc, [f"http://127.0.0.1:{webhook}/healthz", f"http://127.0.0.1:{proxy}/healthz"], home)
        children = _processes_of(home)
        commands = " | ".join(children.values())
        assert "tritonserver" in commands and "redis-server" in commands, commands
        queues = {c.split("--queues ")[1].split()[0] for c in children.values() if "--queues " in c}
        assert queues == {"ingest", "gpu", "deploy", "control"} and " webhook " in commands, commands
        request = urllib.request.Request(f"http://127.0.0.1:{proxy}/v1/models")
        with pytest.raises(urllib.error.HTTPError) as unauthorised:  # up's proxy honours serving.api_keys
            urllib.request.urlopen(request, timeout=5)
        assert unauthorised.value.code == 401
    finally:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "Stopping" in out, out
    deadline = time.monotonic() + 10
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)  # each child was signalled and waited for; let /proc catch up
    assert _processes_of(home) == {}, f"outlived `repotune up`: {_processes_of(home)}"


def test_a_signal_while_up_is_starting_stops_what_it_started(tmp_path: Path) -> None:
    # Before this was handled, SIGTERM during startup killed `up` with the default action and
    # left redis-server and tritonserver running in their own sessions.
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_") and k != "REDIS_URL"}
    env.update(REPOTUNE_HOME=str(home), REPOTUNE_WEBHOOK_PORT=str(free_port()),
               REPOTUNE_SERVING_PROXY_PORT=str(free_port()), REPOTUNE_INSECURE_NO_WEBHOOK_SECRET="1")
    proc = subprocess.Popen([sys.executable, "-c", _UP_WITHOUT_BOOTSTRAP], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "tritonserver" not in " ".join(_processes_of(home).values()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)  # catch `up` between starting Triton and printing its URLs
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    deadline = time.monotonic() + 10
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_of(home) == {}, f"outlived `repotune up`: {_processes_of(home)}"
