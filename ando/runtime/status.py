"""The status endpoints (`ando.observability.status`, default 127.0.0.1:7085), served by the master.

- `GET /status`: 200 `{"status":"ok"}` while the process lives (liveness).
- `GET /status/ready`: 200 only while a valid config is loaded, at least one worker is serving it
  and the node is not stopping; 503 otherwise (readiness). Both answer `HEAD` too.
- Any other path is 404, another method on these paths 405, a malformed request 400; every
  answer closes its connection.

Why the master and not the workers: readiness is a fact about the node, and only the master knows
it. It holds the config generation (and refuses an invalid file, at start and on reload), it hears
each worker report READY once its listeners are bound, and it is the one that turns SIGTERM into a
drain. A worker could only speak for itself, and it closes its listening sockets the moment a
drain begins, which is exactly when a load balancer's probe must get a 503 rather than a refused
connection. The master keeps answering through the whole grace period, until its last worker is
gone, so `/status` stays 200 and `/status/ready` 503 while requests in flight finish.

Why it cannot slow the master: the handler answers from fields of the master in memory, never
awaits, and writes one small response; the number of open connections is capped, a request head
must arrive within a few seconds, and the strict parser is the data plane's own
(`ando.http.server.HttpConnection`), so a malformed request is refused with 400 and closed exactly
as it would be on a gateway port.

The socket is bound in the master before any worker exists, like the data-plane listeners are
checked, so a taken port is a start-up error (exit 1) rather than a gateway without probes. Like
`ando.listen`, its address is fixed for the life of the process: a reload that changes it is
applied to everything else and reported as needing a restart.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ando.config.addresses import parse_host_port
from ando.config.snapshot import SIDE_LISTEN_DEFAULTS, NodeSettings, side_listener
from ando.http.server import HttpConnection, Limits, Request
from ando.runtime.listeners import address, bind_sockets
from ando.runtime.sideserver import SideServer

DEFAULT_LISTEN = SIDE_LISTEN_DEFAULTS["status"]  # the schema's default (a test pins it)
MAX_CONNECTIONS = 64  # probes open one connection each: more than this is a flood, not probes
BACKLOG = 64
# Probes send a request line and a few headers at once; a client that dawdles is not a probe.
LIMITS = Limits(
    header_timeout=5.0,
    max_header_size=8 * 1024,
    max_header_lines=32,
    max_request_line=1024,
    keepalive_timeout=5.0,
)
_PATHS = ("/status", "/status/ready")
_NO_STORE = [(b"Cache-Control", b"no-store")]

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class StatusSettings:
    host: str
    port: int

    @property
    def address(self) -> str:
        return address(self.host, self.port)


def status_config(node: NodeSettings) -> tuple[bool, str]:
    """(enabled, listen) as configured. Defaults are applied here because the schema's defaults
    only fill in objects the file actually has."""
    return side_listener(node.observability, "status")


def status_settings(node: NodeSettings) -> StatusSettings | None:
    """Where the status server listens, or None when `enabled: false`. Raises ValueError for an
    address the schema's pattern lets through but no socket can take (`10.0.0.300:7085`)."""
    enabled, listen = status_config(node)
    if not enabled:
        return None
    host, port = parse_host_port(listen)
    return StatusSettings(host, port)


class StatusServer(SideServer):
    """The master's HTTP server for /status and /status/ready, on sockets bound by `bind`."""

    limits = LIMITS
    max_connections = MAX_CONNECTIONS
    backlog = BACKLOG

    def __init__(self, settings: StatusSettings, sockets: list[socket.socket]) -> None:
        super().__init__(settings.host, settings.port, sockets)
        self.settings = settings
        # Set by the master once it exists; until then (and if it never is) the node is not ready.
        self.readiness: Readiness = _not_yet

    @classmethod
    def bind(cls, settings: StatusSettings) -> StatusServer:
        """Bind now, before serving: raises listeners.BindError with the reason in words."""
        return cls(settings, bind_sockets(settings.host, settings.port, backlog=BACKLOG))

    def on_request(self, conn: HttpConnection, req: Request) -> None:
        """Answer at once, from memory, and close: nothing here awaits or can fail slowly."""
        if self.refused(conn, req, _PATHS):
            return
        if req.path == "/status":
            self._send(conn, req, 200, {"status": "ok"})
            return
        ready, facts = self.readiness()
        self._send(conn, req, 200 if ready else 503, facts)

    def _send(self, conn: HttpConnection, req: Request, status: int, body: dict[str, Any]) -> None:
        conn.send_simple(req, status, orjson.dumps(body), _NO_STORE, close=True)


def _not_yet() -> tuple[bool, dict[str, Any]]:
    return False, {"status": "unavailable", "reason": "starting"}
