"""The production HTTP edge (serving.http): slow clients, big bodies and idle connections."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from serving.http import HttpLimits, HttpServer


def _echo_length(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % len(body)]


@pytest.fixture
def server():
    srv = HttpServer(_echo_length, "127.0.0.1", 0,
                     HttpLimits(idle_timeout_s=2, threads=2, max_body_bytes=1000)).start()
    yield srv
    srv.stop()


def _dribbler(port: int) -> socket.socket:
    """A client that sent headers promising a body and then goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    return sock


def test_slow_clients_do_not_hold_the_worker_threads(server: HttpServer) -> None:
    slow = [_dribbler(server.port) for _ in range(20)]  # 10x the worker threads
    try:
        with urllib.request.urlopen(server.url + "/", data=b"abc", timeout=5) as resp:
            assert resp.read() == b"3"
    finally:
        for sock in slow:
            sock.close()


def test_body_over_the_limit_is_413_before_the_app(server: HttpServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/", data=b"x" * 5000, timeout=5)
    assert err.value.code == 413


def test_idle_connection_is_closed_after_the_timeout(server: HttpServer) -> None:
    sock = _dribbler(server.port)
    sock.settimeout(30)
    started = time.monotonic()
    try:
        assert sock.recv(100) == b""  # blocks until the server closes the connection
    finally:
        sock.close()
    assert time.monotonic() - started < 20


def test_stop_closes_the_listener() -> None:
    srv = HttpServer(_echo_length, "127.0.0.1", 0).start()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).recv(1)


def test_a_client_dribbling_forever_is_closed_at_the_request_deadline() -> None:
    """Never idle (a byte every 0.3 s), so only the whole-request deadline can close it; a
    request that arrives in time on the same listener is answered."""
    srv = HttpServer(_echo_length, "127.0.0.1", 0,
                     HttpLimits(idle_timeout_s=30, request_timeout_s=2, threads=2)).start()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    try:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        sock.settimeout(0.3)
        started, closed = time.monotonic(), False
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b"a")
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue  # nothing from the server yet: dribble on
            except OSError:  # reset by the server
                closed = True
                break
        elapsed = time.monotonic() - started
        assert closed, "a connection still sending its request after 20 s was kept open"
        assert 2 <= elapsed < 10, elapsed
        with urllib.request.urlopen(srv.url + "/", data=b"abcd", timeout=5) as resp:
            assert resp.read() == b"4"
    finally:
        sock.close()
        srv.stop()
