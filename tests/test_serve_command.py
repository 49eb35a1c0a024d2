"""`repotune serve` as the deploy manifests run it, and as an operator stops it.

The compose and Kubernetes files configure the proxy only through the environment
(``REPOTUNE_SERVING_*``, ``REPOTUNE_API_KEYS_FILE``). These tests start the real command with
exactly that environment, changing only what cannot exist here (the Triton host name, the
secret files, the port), and check that it talks to that Triton instead of starting its own,
binds the address the manifest names, and requires the keys the manifest mounts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fixtures.deploy import DEPLOY, interpolate, load_dotenv, load_k8s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _compose_proxy_env() -> dict[str, str]:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    compose = interpolate(raw, load_dotenv(DEPLOY / ".env.example"))
    env = compose["services"]["proxy"]["environment"]
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _k8s_proxy_env() -> dict[str, str]:
    docs = {(d["kind"], d.get("metadata", {}).get("name")): d for _, d in load_k8s()}
    container = docs[("Deployment", "proxy")]["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(docs[("ConfigMap", source["configMapRef"]["name"])]["data"])
    env.update({item["name"]: str(item["value"]) for item in container.get("env", [])})
    return env


MANIFESTS = {"compose": _compose_proxy_env, "k8s": _k8s_proxy_env}


def _runnable(manifest_env: dict[str, str], tmp: Path, triton_url: str, port: int,
              keys: str | None) -> dict[str, str]:
    """The manifest's environment with what cannot exist on this machine made local."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_")}
    env.update(manifest_env)
    env.pop("REPOTUNE_CONFIG", None)  # /etc/repotune/repotune.toml is a mount in the manifests
    env["REPOTUNE_HOME"] = str(tmp / "home")
    env["REPOTUNE_SERVING_TRITON_URL"] = triton_url  # the manifests name the `triton` service
    env["REPOTUNE_SERVING_PROXY_PORT"] = str(port)
    for key, value in manifest_env.items():
        if key.endswith("_FILE") and value.startswith("/run/secrets/"):
            local = tmp / "secrets" / Path(value).name
            local.parent.mkdir(exist_ok=True)
            local.write_text(keys if key == "REPOTUNE_API_KEYS_FILE" and keys else "")
            env[key] = str(local)
    if keys is None:
        env.pop("REPOTUNE_API_KEYS_FILE", None)
    return env


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait_listening(proc: subprocess.Popen, url: str, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)  # not listening yet: poll the socket, bounded by the deadline
    raise AssertionError(f"serve did not listen on {url} in {deadline_s}s")


def _listens_on_any_address(port: int) -> bool:
    """Whether a socket in LISTEN state is bound to 0.0.0.0:port (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        addr, state = fields[1], fields[3]
        if state == "0A" and addr == f"00000000:{port:04X}":
            return True
    return False


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_serve_runs_as_the_manifests_configure_it(manifest: str, triton_server, tmp_path: Path) -> None:
    manifest_env = MANIFESTS[manifest]()
    assert manifest_env["REPOTUNE_SERVING_PROXY_HOST"] == "0.0.0.0"
    assert "REPOTUNE_API_KEYS_FILE" in manifest_env, "the manifest must give the proxy its keys"
    port = _free_port()
    env = _runnable(manifest_env, tmp_path, triton_server.url, port, keys="k-one,k-two")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(proc, base + "/healthz")
        assert _listens_on_any_address(port), "the proxy must bind the manifest's 0.0.0.0"
        status, body = _get(base + "/v1/models", key="k-two")
        assert status == 200, body
        assert [m["id"] for m in json.loads(body)["data"]] == [manifest_env["REPOTUNE_SERVING_MODEL_NAME"]]
        assert _get(base + "/v1/models")[0] == 401
        assert _get(base + "/v1/models", key="k-three")[0] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "embedded Triton" not in err, "it must use the manifest's Triton, not start its own"
    assert not (tmp_path / "home" / "triton" / "triton.url").exists()


def test_serve_refuses_the_network_without_keys(tmp_path: Path) -> None:
    env = _runnable(MANIFESTS["compose"](), tmp_path, "127.0.0.1:9", _free_port(), keys=None)
    result = subprocess.run([sys.executable, "-m", "bot", "serve"], env=env, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "REPOTUNE_API_KEYS" in result.stderr and "0.0.0.0" in result.stderr


def _tritonservers_for(root: Path) -> list[int]:
    """PIDs of tritonserver processes serving ``root``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"tritonserver") and any(str(root).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_serve_stops_the_triton_it_started(sig: signal.Signals, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_")}
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--home", str(home), "--port", str(port)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_listening(proc, f"http://127.0.0.1:{port}/healthz", deadline_s=120)
        started = _tritonservers_for(home / "triton")
        assert started, "serve should have started an embedded Triton"
    finally:
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    deadline = time.monotonic() + 10
    while _tritonservers_for(home / "triton") and time.monotonic() < deadline:
        time.sleep(0.1)  # the server was signalled and waited for; give /proc a moment to reap
    assert _tritonservers_for(home / "triton") == [], "tritonserver outlived `repotune serve`"
