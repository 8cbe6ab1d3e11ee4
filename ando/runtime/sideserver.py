"""A small HTTP server the master runs beside the data plane: status probes, /metrics.

Why a shared base: both side servers must behave the same way where it matters to the node.
Their sockets are bound before any worker exists (a taken port is a start-up error), a forked
worker closes their descriptors at once (else it would keep the port, or a client's connection,
open after the master is gone), open connections are capped, and requests are parsed by the data
plane's strict `HttpConnection`, so a malformed request gets a 400 and a closed connection.
A subclass says only what to answer (`on_request`) and its limits.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from ando.http.server import HttpConnection, Limits, Request, json_error
from ando.runtime.listeners import address


class SideServer:
    """Serves `on_request` on sockets bound by the caller; closes each answered connection."""

    limits: Limits
    max_connections = 64
    backlog = 64

    def __init__(self, host: str, port: int, sockets: list[socket.socket]) -> None:
        self.host, self.port = host, port
        self._sockets = sockets
        self._fds = [sock.fileno() for sock in sockets]  # uvloop serves on these very fds
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: dict[_SideConnection, int] = {}  # connection -> its socket's fd
        self._closed = False

    @property
    def address(self) -> str:
        return address(self.host, self.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._servers.append(await loop.create_server(self._connection, sock=sock))

    def close(self) -> None:
        """Stop listening and drop open connections (the master is about to exit)."""
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        if not self._servers:  # never started: the sockets are still ours to close
            for sock in self._sockets:
                sock.close()
        for conn in list(self._connections):
            conn.abort()

    def inherited_fds(self) -> list[int]:
        """Descriptors a forked worker must close at once: a worker holding the listening socket
        would keep the port bound after the master is gone, and one holding an accepted
        connection would keep the client from seeing it close."""
        if self._closed:
            return []
        return [*self._fds, *self._connections.values()]

    def on_request(self, conn: HttpConnection, req: Request) -> None:
        """Each side server answers its own paths; the base knows none."""
        conn.send_simple(req, 404, json_error(404, "404 Not Found"), close=True)

    @staticmethod
    def refused(conn: HttpConnection, req: Request, paths: tuple[str, ...]) -> bool:
        """Answer 404 for a path not in `paths` and 405 for a method other than GET or HEAD;
        True when it did (the request is answered)."""
        if req.path not in paths:
            body = json_error(404, "404 Not Found")
            conn.send_simple(req, 404, body, [(b"Cache-Control", b"no-store")], close=True)
            return True
        if req.method not in ("GET", "HEAD"):
            body = json_error(405, "405 Method Not Allowed")
            headers = [(b"Allow", b"GET, HEAD"), (b"Cache-Control", b"no-store")]
            conn.send_simple(req, 405, body, headers, close=True)
            return True
        return False

    # --- connections ----------------------------------------------------------------------

    def _connection(self) -> _SideConnection:
        return _SideConnection(self, self.limits, on_close=self._forget)

    def _opened(self, conn: _SideConnection, transport: asyncio.BaseTransport) -> None:
        if self._closed or len(self._connections) >= self.max_connections:
            conn.abort()
            return
        sock = transport.get_extra_info("socket")
        self._connections[conn] = sock.fileno() if sock is not None else -1

    def _forget(self, conn: HttpConnection) -> None:
        self._connections.pop(conn, None)  # type: ignore[call-overload]


class _SideConnection(HttpConnection):
    """The data plane's strict HTTP/1 connection, counted and capped by its server."""

    __slots__ = ("side_server",)

    def __init__(
        self,
        side_server: SideServer,
        limits: Limits,
        *,
        on_close: Callable[[HttpConnection], None],
    ) -> None:
        super().__init__(side_server, limits, on_close=on_close)
        self.side_server = side_server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.side_server._opened(self, transport)
