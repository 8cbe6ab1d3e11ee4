"""Upstream health checks (`checks`) through the real `ando run`: an active check takes a stopped
node out of rotation and brings it back when it answers again; a passive check takes out a node
whose answers are unhealthy; a reload keeps what the checks learned; each change is an event and
shows in ando_upstream_status."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import request
from tests.support.gateway import GatewayProcess, wait_for
from tests.support.upstream import UpstreamServer


class SickServer:
    """An upstream that answers every request with 503, keeping the connection alive."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.served = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SickServer:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    self.served += 1
                    conn.sendall(b"HTTP/1.1 503 Sick\r\nContent-Length: 4\r\n\r\nsick")


def upstream_status(gw: GatewayProcess) -> dict[tuple[str, str, str], float]:
    r = request(gw.metrics_port, "GET", "/metrics", timeout=10)
    out = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            if s.name == "ando_upstream_status":
                out[(s.labels["name"], s.labels["ip"], s.labels["port"])] = s.value
    return out


def served_by(gw: GatewayProcess, n: int) -> list[tuple[int, str]]:
    out = []
    for _ in range(n):
        r = request(gw.port, "GET", "/r", headers={"Host": "t"})
        server = r.json().get("server", "") if r.status == 200 else ""
        out.append((r.status, server))
    return out


@pytest.fixture
def node_a() -> Iterator[UpstreamServer]:
    with UpstreamServer("a") as up:
        yield up


def test_active_checks_take_a_stopped_node_out_and_bring_it_back(tmp_path: Path, node_a):
    b = UpstreamServer("b").__enter__()
    b_port = b.port
    checks = {
        "active": {
            "http_path": "/status/200",
            "timeout": 1,
            "healthy": {"interval": 1, "successes": 1},
            "unhealthy": {"interval": 1, "tcp_failures": 1},
        }
    }
    config: dict[str, Any] = {
        "upstreams": [
            {"id": "u", "nodes": {node_a.addr: 1, f"127.0.0.1:{b_port}": 1}, "checks": checks}
        ],
        "routes": [{"id": "r", "uri": "/r", "upstream_id": "u"}],
    }
    try:
        with GatewayProcess(config, tmp_path, workers=1) as gw:
            assert {s for _, s in served_by(gw, 6)} == {"a", "b"}
            b.__exit__(None, None, None)
            down = gw.wait_events("upstream_node_unhealthy", lambda e: True, 10)
            assert down and down[0]["node"] == f"127.0.0.1:{b_port}"
            assert down[0]["upstream"] == "/upstreams/u" and down[0]["check"] == "active"
            status = upstream_status(gw)
            assert status[("/upstreams/u", "127.0.0.1", str(b_port))] == 0
            assert status[("/upstreams/u", "127.0.0.1", str(node_a.port))] == 1
            failed_before = len(gw.events("upstream_failed"))
            assert served_by(gw, 12) == [(200, "a")] * 12
            assert len(gw.events("upstream_failed")) == failed_before  # B was not even tried
            b = UpstreamServer("b", port=b_port).__enter__()
            assert gw.wait_events("upstream_node_healthy", lambda e: True, 10)
            wait_for(lambda: "b" in {s for _, s in served_by(gw, 4)}, "b to serve again")
            assert upstream_status(gw)[("/upstreams/u", "127.0.0.1", str(b_port))] == 1
    finally:
        b.__exit__(None, None, None)


def test_passive_checks_take_out_a_node_that_answers_badly_and_a_reload_remembers(
    tmp_path: Path, node_a
):
    with SickServer() as sick:
        checks = {
            # Probes every 60 s; the sick node's 503 is in neither of their lists: no count.
            "active": {
                "http_path": "/status/200",
                "healthy": {"interval": 60},
                "unhealthy": {"interval": 60, "http_statuses": [599]},
            },
            "passive": {"unhealthy": {"http_statuses": [503], "http_failures": 3}},
        }
        up = {"nodes": {node_a.addr: 1, sick.addr: 1}, "checks": checks}
        config: dict[str, Any] = {"routes": [{"id": "r", "uri": "/r", "upstream": up}]}
        with GatewayProcess(config, tmp_path, workers=1) as gw:
            results = served_by(gw, 12)
            statuses = [s for s, _ in results]
            assert statuses.count(503) == 3, statuses  # the third 503 took it out
            assert results[-4:] == [(200, "a")] * 4
            event = gw.wait_events("upstream_node_unhealthy", lambda e: True, 5)[0]
            assert event["check"] == "passive" and event["node"] == sick.addr
            assert event["upstream"] == "/routes/r" and event["reason"] == "3 http_failures"
            assert upstream_status(gw)[("/routes/r", "127.0.0.1", str(sick.port))] == 0
            # A reload that leaves this upstream alone keeps its health: no 503 again.
            config["routes"].append(
                {"id": "other", "uri": "/other", "upstream": {"nodes": {node_a.addr: 1}}}
            )
            gw.write_config(config)
            assert gw.wait_events("reload", lambda e: e.get("result") == "ok", 10)
            served = sick.served
            assert served_by(gw, 10) == [(200, "a")] * 10
            assert sick.served == served


def test_one_probe_of_each_kind_against_real_sockets(node_a):
    """What a single active probe concludes: answered, refused, silent, or a bad status."""
    import asyncio

    from ando.proxy.balancer import Node
    from ando.proxy.health import HTTP_FAILURE, SUCCESS, TCP_FAILURE, TIMEOUT, HealthChecker

    silent = socket.socket()  # accepts (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    up = Node("127.0.0.1", node_a.port, 1, 0)

    def probe(node: Node, **active: Any) -> str:
        checker = HealthChecker("/t", {"active": {"timeout": 0.5, **active}}, (node,), print)
        return asyncio.run(checker.probe(node))

    try:
        assert probe(up, http_path="/status/200") == SUCCESS
        assert probe(up, http_path="/status/500") == HTTP_FAILURE
        assert probe(up, type="tcp") == SUCCESS
        assert probe(Node("127.0.0.1", closed_port, 1, 0), type="tcp") == TCP_FAILURE
        assert probe(Node("127.0.0.1", silent.getsockname()[1], 1, 0)) == TIMEOUT
        assert probe(up, http_path="/status/200", port=closed_port) == TCP_FAILURE
    finally:
        silent.close()


def test_https_probes_verify_the_certificate_unless_told_not_to(tmp_path: Path):
    """An HTTPS node (a TLS gateway answering /ping) with a self-signed certificate: a probe that
    verifies it fails the handshake (a failed connection); one told not to verify succeeds."""
    import asyncio

    from ando.proxy.balancer import Node
    from ando.proxy.health import SUCCESS, TCP_FAILURE, HealthChecker
    from tests.support.certs import make_cert
    from tests.support.upstream import free_port

    cert, key = make_cert("node.example.com")
    tls_port = free_port()
    mock = {"mocking": {"response_example": "pong", "with_mock_header": False}}
    config = {
        "ando": {"listen": [{"addr": f"127.0.0.1:{tls_port}", "tls": True}]},
        "ssls": [{"id": "s", "cert": cert, "key": key, "snis": ["node.example.com"]}],
        "routes": [{"id": "ping", "uri": "/ping", "plugins": mock}],
    }
    gw = GatewayProcess(config, tmp_path)
    gw.port = tls_port  # wait for the TLS listener (the only one)
    node = Node("127.0.0.1", tls_port, 1, 0)

    def probe(verify: bool) -> str:
        active = {"type": "https", "http_path": "/ping", "host": "node.example.com",
                  "https_verify_certificate": verify, "timeout": 2}  # fmt: skip
        checker = HealthChecker("/t", {"active": active}, (node,), print)
        return asyncio.run(checker.probe(node))

    with gw:
        assert probe(verify=False) == SUCCESS
        assert probe(verify=True) == TCP_FAILURE
