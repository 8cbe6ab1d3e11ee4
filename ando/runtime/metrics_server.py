"""The Prometheus endpoint (`ando.observability.prometheus`, default 127.0.0.1:9091), in the master.

`GET /metrics` (and APISIX's `/apisix/prometheus/metrics`, so a scrape config ports unchanged)
answers with the node's metrics: the master asks every worker for its totals, waits a bounded
time for the answers, adds them up and renders them (`ando/observability/exposition.py`). A
worker that does not answer in time is counted with its last report, so a busy worker delays a
scrape by at most `ASK_TIMEOUT` and never fails it.

Why the master: it is the one process that outlives workers and hears from all of them, so one
scrape sees each request exactly once, whichever worker served it, and the counts of a replaced
worker stay in the node's totals.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from ando.config.addresses import parse_host_port
from ando.config.snapshot import SIDE_LISTEN_DEFAULTS, NodeSettings, side_listener
from ando.http.server import HttpConnection, Limits, Request, json_error
from ando.observability.exposition import CONTENT_TYPE
from ando.runtime.listeners import bind_sockets
from ando.runtime.sideserver import SideServer

DEFAULT_LISTEN = SIDE_LISTEN_DEFAULTS["prometheus"]
PATHS = ("/metrics", "/apisix/prometheus/metrics")
ASK_TIMEOUT = 1.0  # seconds a scrape waits for the workers' answers
LIMITS = Limits(
    header_timeout=10.0,
    max_header_size=16 * 1024,
    max_header_lines=64,
    max_request_line=2048,
    keepalive_timeout=10.0,
)
_CONTENT_TYPE = CONTENT_TYPE.encode()
_NO_STORE = [(b"Cache-Control", b"no-store")]

Collect = Callable[[], Awaitable[bytes]]


def prometheus_config(node: NodeSettings) -> tuple[bool, str]:
    """(enabled, listen) as configured, with the schema's defaults."""
    return side_listener(node.observability, "prometheus")


def max_series(node: NodeSettings) -> int:
    return int(node.observability.get("prometheus", {}).get("max_series", 10_000))


class MetricsServer(SideServer):
    limits = LIMITS
    max_connections = 32
    backlog = 64

    def __init__(self, host: str, port: int, sockets: list[socket.socket]) -> None:
        super().__init__(host, port, sockets)
        self.collect: Collect | None = None  # set by the master
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def bind_from(cls, node: NodeSettings) -> MetricsServer | None:
        """None when disabled. Raises ValueError for an address no socket can take and
        listeners.BindError when the port is taken."""
        enabled, listen = prometheus_config(node)
        if not enabled:
            return None
        host, port = parse_host_port(listen)
        return cls(host, port, bind_sockets(host, port, backlog=cls.backlog))

    def on_request(self, conn: HttpConnection, req: Request) -> None:
        if self.refused(conn, req, PATHS):
            return
        if self.collect is None:
            conn.send_simple(req, 503, json_error(503, "503 Service Unavailable"), close=True)
            return
        task = asyncio.get_running_loop().create_task(self._answer(conn, req, self.collect))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, conn: HttpConnection, req: Request, collect: Collect) -> None:
        try:
            body = await collect()
        except Exception as e:  # a bug must fail this scrape, not the master
            if not req.lost:
                msg = f"500 Internal Server Error: {type(e).__name__}"
                conn.send_simple(req, 500, json_error(500, msg), close=True)
            return
        if not req.lost:
            conn.send_simple(req, 200, body, _NO_STORE, content_type=_CONTENT_TYPE, close=True)
