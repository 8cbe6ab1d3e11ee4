"""WebSocket through a running gateway: a real `websockets` server behind a route with
`enable_websocket: true`, a real client in front.

Also: the same upgrade on a route without enable_websocket is an ordinary request (no Upgrade
reaches the upstream), and bytes a client sends right after its upgrade request, before the 101,
are delivered to the upstream after the 101 and never parsed as HTTP (DESIGN.md).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402
from websockets.sync.server import serve  # noqa: E402

from tests.support.gateway import GatewayProcess  # noqa: E402
from tests.support.upstream import UpstreamServer  # noqa: E402


class WsServer:
    """An echo WebSocket server on a thread. `delay` holds the 101 back (seconds); every
    handshake request's headers are recorded in `handshakes`."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.handshakes: list[dict[str, str]] = []
        self.received: list[Any] = []
        self.closed = threading.Event()

    def _process_request(self, connection, request):
        self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})
        if self.delay:
            time.sleep(self.delay)
        return None

    def _handler(self, ws) -> None:
        try:
            for msg in ws:
                self.received.append(msg)
                if msg == "big-please":
                    ws.send(os.urandom(8) * (256 * 1024))  # 2 MiB, server to client
                else:
                    ws.send(msg)
        finally:
            self.closed.set()

    def __enter__(self) -> WsServer:
        self.server = serve(
            self._handler,
            "127.0.0.1",
            0,
            max_size=None,
            compression=None,
            process_request=self._process_request,
            ping_interval=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(10)


def ws_config(addr: str, *, websocket: bool = True, via_service: bool = False) -> dict[str, Any]:
    if via_service:
        return {
            "services": [
                {"id": "s", "enable_websocket": websocket, "upstream": {"nodes": {addr: 1}}}
            ],
            "routes": [{"id": "ws", "uri": "/ws*", "service_id": "s"}],
        }
    return {
        "routes": [
            {
                "id": "ws",
                "uri": "/ws*",
                "enable_websocket": websocket,
                "upstream": {"nodes": {addr: 1}},
            }
        ]
    }


@pytest.fixture
def echo(tmp_path) -> Iterator[tuple[WsServer, GatewayProcess]]:
    with WsServer() as srv, GatewayProcess(ws_config(srv.addr), tmp_path) as gw:
        yield srv, gw


def ws_connect(gw: GatewayProcess, path: str = "/ws"):
    return connect(
        f"ws://127.0.0.1:{gw.port}{path}",
        proxy=None,
        max_size=None,
        compression=None,
        open_timeout=5,
        close_timeout=5,
        ping_interval=None,
    )


def test_echo_round_trips(echo):
    srv, gw = echo
    with ws_connect(gw) as ws:
        for i in range(20):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=5) == f"hello {i}"
        ws.send(b"\x00\x01\xff" * 10)
        assert ws.recv(timeout=5) == b"\x00\x01\xff" * 10
    h = srv.handshakes[0]
    assert h["upgrade"].lower() == "websocket"
    assert "upgrade" in h["connection"].lower()
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert "sec-websocket-key" in h


def test_big_messages_both_ways(echo):
    _, gw = echo
    big = os.urandom(3 * 1024 * 1024)
    with ws_connect(gw) as ws:
        ws.send(big)
        assert ws.recv(timeout=20) == big
        ws.send("big-please")
        got = ws.recv(timeout=20)
        assert isinstance(got, bytes) and len(got) == 2 * 1024 * 1024
        ws.send("still alive")
        assert ws.recv(timeout=5) == "still alive"


def test_close_from_client(echo):
    srv, gw = echo
    with ws_connect(gw) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(code=1000, reason="bye")
        assert ws.close_code == 1000
    assert srv.closed.wait(5)
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while time.monotonic() < deadline and not lines:
        lines = [ln for ln in gw.access_log_lines() if ln.get("route_id") == "ws"]
        time.sleep(0.05)
    assert lines and lines[0]["status"] == 101


def test_close_from_server(tmp_path):
    def closer(ws) -> None:
        ws.recv()
        ws.close(code=4001, reason="go away")

    server = serve(closer, "127.0.0.1", 0, compression=None, ping_interval=None)
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with GatewayProcess(ws_config(f"127.0.0.1:{port}"), tmp_path) as gw, ws_connect(gw) as ws:
            ws.send("x")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4001
    finally:
        server.shutdown()
        t.join(10)


def test_websocket_enabled_by_the_service(tmp_path):
    with (
        WsServer() as srv,
        GatewayProcess(ws_config(srv.addr, via_service=True), tmp_path) as gw,
        ws_connect(gw) as ws,
    ):
        ws.send("via service")
        assert ws.recv(timeout=5) == "via service"


def test_many_concurrent_sessions(echo):
    _, gw = echo
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            with ws_connect(gw) as ws:
                for i in range(10):
                    ws.send(f"{n}-{i}")
                    assert ws.recv(timeout=5) == f"{n}-{i}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors


# --- raw sockets ---------------------------------------------------------------------------------


def upgrade_request(path: str = "/ws") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked, final frame (client to server)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"wanted {n} bytes, have {self.buf[:200]!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; have {self.buf[:200]!r}")
            self.buf += chunk

    def head(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(len(self.buf) + 1, deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._fill(10, deadline)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._fill(off + n, deadline)
        payload, self.buf = self.buf[off : off + n], self.buf[off + n :]
        return b0 & 0x0F, payload


def test_frame_sent_with_the_upgrade_request_is_delivered_after_101(echo):
    srv, gw = echo
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        # one write: the upgrade request and a frame, before any 101 could have been sent
        s.sendall(upgrade_request() + client_frame(b"early bird"))
        r = Reader(s)
        head = r.head()
        assert head.startswith(b"HTTP/1.1 101"), head
        assert r.frame() == (1, b"early bird")
        s.sendall(client_frame(b"later"))
        assert r.frame() == (1, b"later")
    assert srv.received[:2] == ["early bird", "later"]


def test_frame_sent_while_the_upstream_delays_its_101(tmp_path):
    with (
        WsServer(delay=0.5) as srv,
        GatewayProcess(ws_config(srv.addr), tmp_path) as gw,
        socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s,
    ):
        s.sendall(upgrade_request())
        time.sleep(0.1)  # the gateway has forwarded the request; the 101 is 0.4 s away
        s.sendall(client_frame(b"first"))
        s.sendall(client_frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))  # not a request!
        r = Reader(s)
        head = r.head()
        assert head.startswith(b"HTTP/1.1 101"), head
        assert r.frame() == (1, b"first")
        assert r.frame() == (1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert srv.received == ["first", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"]


def test_upgrade_on_a_route_without_websocket_is_not_tunneled(tmp_path):
    with (
        UpstreamServer("plain") as up,
        GatewayProcess(ws_config(up.addr, websocket=False), tmp_path) as gw,
        socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s,
    ):
        s.sendall(upgrade_request() + client_frame(b"not http"))
        r = Reader(s)
        head = r.head()
        # an ordinary response, and the connection ends after it (the bytes after the
        # upgrade request were never HTTP)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"connection: close" in head.lower()
        length = int(
            next(
                ln.split(b":")[1]
                for ln in head.split(b"\r\n")
                if ln.lower().startswith(b"content-length")
            )
        )
        r._fill(length, time.monotonic() + 5)
        assert b'"server": "plain"' in r.buf[:length]
        s.settimeout(3)
        rest = r.buf[length:]
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        assert rest == b""
    assert len(up.requests) == 1  # the frame was not parsed as a second request
    names = {k.lower() for k, _ in up.requests[0]["headers"]}
    assert "upgrade" not in names
    conn = [v.lower() for k, v in up.requests[0]["headers"] if k.lower() == "connection"]
    assert all("upgrade" not in v for v in conn)


def test_upstream_refusing_the_upgrade_is_a_normal_response(tmp_path):
    def refuse(connection, request):
        return connection.respond(403, "no websockets for you\n")

    server = serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse, ping_interval=None)
    port = server.socket.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with (
            GatewayProcess(ws_config(f"127.0.0.1:{port}"), tmp_path) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s,
        ):
            s.sendall(upgrade_request())
            r = Reader(s)
            head = r.head()
            assert head.startswith(b"HTTP/1.1 403"), head
            r._fill(len(b"no websockets for you\n"), time.monotonic() + 5)
            assert r.buf.startswith(b"no websockets for you\n")
    finally:
        server.shutdown()
        t.join(10)


def test_idle_tunnel_closes_after_the_read_timeout(tmp_path):
    """As nginx (proxy_read_timeout on upgraded connections): traffic either way keeps a tunnel
    open; a tunnel idle for `timeout.read` is closed."""
    with WsServer() as srv:
        cfg = ws_config(srv.addr)
        cfg["routes"][0]["timeout"] = {"connect": 1, "send": 1, "read": 1}
        with GatewayProcess(cfg, tmp_path) as gw, ws_connect(gw) as ws:
            for i in range(6):  # 2.4 s of traffic, a message every 0.4 s
                ws.send(f"ping {i}")
                assert ws.recv(timeout=5) == f"ping {i}"
                time.sleep(0.4)
            t0 = time.monotonic()
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                ws.recv(timeout=5)
            assert time.monotonic() - t0 < 2.5
