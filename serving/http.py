"""The production HTTP edge: a WSGI app under waitress, with limits and timeouts.

Every public listener RepoTune opens (the completion proxy, the webhook in ``repotune up``)
goes through :class:`HttpServer`, never Flask's development server. Why waitress and not
gunicorn's sync workers: waitress reads each request completely on its event loop before a
worker thread sees it, so a client that dribbles one byte a second costs a socket, not a
thread, and the forge's webhook deliveries are answered while such clients wait; a
connection idle for ``idle_timeout_s`` is closed, one still sending its request
``request_timeout_s`` after its first byte is closed too (a client that dribbles a byte every
few seconds is never idle, so the idle timeout alone would keep it forever), and a body over
``max_body_bytes`` is answered 413 before the app parses a byte of it. It also runs in-process without forking,
so the process that started an embedded Triton is the one that stops it.

Lifecycle, one method each: :meth:`HttpServer.bind` (open the socket; the port is known
from here on) → :meth:`serve_forever` or :meth:`start` (in a thread) → :meth:`stop`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["HttpLimits", "HttpServer"]


@dataclass(frozen=True)
class HttpLimits:
    """Limits of one listener; the defaults suit editors and forges on a company network."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; larger is answered 413 before the app runs."""
    max_header_bytes: int = 64 * 1024
    """Largest request line plus headers; larger is answered 431."""
    idle_timeout_s: int = 30
    """A connection that sends or reads nothing for this long is closed (slow or stuck clients)."""
    request_timeout_s: int = 60
    """A request (line, headers and body) must arrive within this long of its first byte; a
    connection still sending one after that is closed (clients that dribble bytes forever)."""
    threads: int = 8
    """Worker threads running the app; slow clients never hold one (the event loop buffers them)."""
    connection_limit: int = 256
    """Open connections at most; more wait in the listen backlog."""


class HttpServer:
    """A WSGI ``app`` on ``host:port`` (port 0 picks a free one) under :class:`HttpLimits`."""

    def __init__(self, app: Any, host: str, port: int, limits: HttpLimits | None = None,
                 *, name: str = "http") -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.limits = limits or HttpLimits()
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`bind`)."""
        if self._server is None:
            raise RuntimeError(f"{self.name}: bind() first")
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> HttpServer:
        """Open the listening socket, so the port is known and connections queue from now on."""
        from waitress.server import create_server

        lim = self.limits
        self._server = create_server(
            self.app, host=self.host, port=self.requested_port, threads=lim.threads,
            channel_timeout=lim.idle_timeout_s,
            cleanup_interval=max(1, min(lim.idle_timeout_s, lim.request_timeout_s, 10)),
            max_request_body_size=lim.max_body_bytes, max_request_header_size=lim.max_header_bytes,
            connection_limit=lim.connection_limit, expose_tracebacks=False, ident="repotune",
            clear_untrusted_proxy_headers=True)
        _enforce_request_deadline(self._server, lim.request_timeout_s)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or an exception."""
        if self._server is None:
            self.bind()
        log.info("%s: listening on %s", self.name, self.url)
        try:
            self._server.run()
        except OSError:
            # stop() closes the socket map under the loop; that ends run() this way.
            if self._server is not None and self._server.socket is not None:
                raise

    def start(self) -> HttpServer:
        """Serve in a daemon thread; returns once the socket accepts connections."""
        if self._server is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, then stop the worker threads."""
        server, self._server = self._server, None
        if server is None:
            return
        for channel in list(server._map.values()):
            if channel is not server:
                channel.close()  # open connections would keep the event loop running
        server.close()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout_s)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


def _enforce_request_deadline(server: Any, timeout_s: float) -> None:
    """Close connections whose request has been arriving for more than ``timeout_s``.

    waitress only knows idleness: its periodic ``maintenance`` closes channels quiet for
    ``channel_timeout``. This listener's channels are made :class:`_DeadlineChannel` (which stamps
    when a request's first byte arrived) and its ``maintenance`` also closes every channel whose
    request is older than the deadline and still incomplete, the way waitress closes idle ones
    (``will_close``: the event loop closes it, no worker thread involved).
    """
    from waitress.channel import HTTPChannel

    class _DeadlineChannel(HTTPChannel):
        reading_since: float | None = None

        def received(self, data: bytes) -> bool:
            if data and self.request is None and self.reading_since is None:
                self.reading_since = time.monotonic()
            try:
                return super().received(data)
            finally:
                if self.request is None:  # the request completed (or nothing is being read)
                    self.reading_since = None

    idle_maintenance = server.maintenance

    def maintenance(now: float) -> None:
        idle_maintenance(now)
        cutoff = time.monotonic() - timeout_s
        for channel in list(server.active_channels.values()):
            started = getattr(channel, "reading_since", None)
            if started is not None and started < cutoff and not channel.will_close:
                log.info("closing a connection from %s: its request took over %ss to arrive",
                         channel.addr[0] if channel.addr else "?", timeout_s)
                channel.will_close = True

    server.channel_class = _DeadlineChannel
    server.maintenance = maintenance
