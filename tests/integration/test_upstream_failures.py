"""The upstream side through a running gateway: retries, timeouts, broken upstreams, keep-alive
pooling, the request head the upstream sees, response framing and flow control.

Semantics follow nginx/APISIX: connect refused or reset before a response is retried on the next
node (up to `retries`, default nodes - 1, within `retry_timeout`); a timeout ends in 504, any other
failure in 502, and so does a retry that `retry_timeout` refused; a request that went out is never replayed when it is POST/PATCH (non-idempotent);
an invalid response head is not retried.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import Response, request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, closed_port

FAST = {"connect": 1, "send": 1, "read": 1}


def route(upstream: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = {"id": "r", "uri": "/*", "upstream": upstream}
    r.update(kw)
    return {"routes": [r]}


def log_lines(gw: GatewayProcess, n: int, timeout: float = 5.0) -> list[dict]:
    """The first `n` access log lines (waiting, bounded, for the batch to be flushed)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln for ln in gw.access_log_lines() if "status" in ln]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def assert_json_error(resp: Response, status: int) -> None:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.header("Content-Type") == "application/json"
    body = resp.json()
    assert set(body) == {"error_msg"} and body["error_msg"].startswith(str(status)), body


def distinct_closed_ports(n: int) -> set[int]:
    ports: set[int] = set()
    for _ in range(100):
        ports.add(closed_port())
        if len(ports) == n:
            return ports
    raise AssertionError("could not find distinct free ports")


def wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Blackhole:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
    neither succeeds nor fails until the client gives up (a connect timeout, on loopback)."""

    def __enter__(self) -> Blackhole:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
        except TimeoutError:
            pass
        else:
            self.__exit__()
            pytest.skip("cannot make a blackhole listener on this kernel")
        finally:
            probe.close()
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()


class ResetServer:
    """Reads a request head (and whatever body arrives with it), then resets the connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with c:
                c.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                self.requests.append(data)
                c.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )

    def __enter__(self) -> ResetServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# --- retries ----------------------------------------------------------------------------------


def test_refused_node_is_retried_on_the_next(tmp_path):
    with UpstreamServer("a") as a:
        dead = f"127.0.0.1:{closed_port()}"
        # weight 2 first: smooth WRR picks the dead node for the first request
        with GatewayProcess(route({"nodes": {dead: 2, a.addr: 1}}), tmp_path) as gw:
            for _ in range(3):
                r = request(gw.port, "GET", "/x")
                assert r.status == 200 and r.json()["server"] == "a"
            lines = log_lines(gw, 3)
    assert [ln["status"] for ln in lines] == [200, 200, 200]
    assert {ln["upstream_addr"] for ln in lines} == {a.addr}
    assert {ln["upstream_status"] for ln in lines} == {200}
    assert len(a.requests) == 3


def test_post_never_sent_is_retried(tmp_path):
    """A refused connect sent nothing: even a POST (and its whole body) moves to the next node."""
    body = bytes(range(256)) * 1024  # 256 KiB: more than the replay buffer
    with UpstreamServer("a") as a:
        nodes = [
            {"host": "127.0.0.1", "port": closed_port(), "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": a.port, "weight": 1, "priority": 0},
        ]
        with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
            r = request(gw.port, "POST", "/p", body=body)
            assert r.status == 200 and r.json()["server"] == "a"
            assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            r = request(gw.port, "PATCH", "/p", body=b"")
            assert r.status == 200 and r.json()["method"] == "PATCH"


def test_all_nodes_refuse_is_502_json(tmp_path):
    nodes = {f"127.0.0.1:{port}": 1 for port in distinct_closed_ports(2)}
    with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
        r = request(gw.port, "GET", "/x")
        assert_json_error(r, 502)
        # the client connection survives a gateway error
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            assert request(gw.port, "GET", "/x", conn=c).status == 502
            assert request(gw.port, "GET", "/y", conn=c).status == 502
        finally:
            c.close()
        lines = log_lines(gw, 3)
    assert [ln["status"] for ln in lines] == [502] * 3


def test_retries_zero_means_one_try(tmp_path):
    with UpstreamServer("a") as a:
        dead = f"127.0.0.1:{closed_port()}"
        cfg = route({"nodes": {dead: 2, a.addr: 1}, "retries": 0})
        with GatewayProcess(cfg, tmp_path) as gw:
            assert_json_error(request(gw.port, "GET", "/x"), 502)
            assert a.requests == []
            # the next pick is the live node
            assert request(gw.port, "GET", "/x").status == 200


def test_connect_timeout_is_504(tmp_path):
    with Blackhole() as hole:
        cfg = route({"nodes": {hole.addr: 1}, "timeout": FAST})
        with GatewayProcess(cfg, tmp_path) as gw:
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/x")
            elapsed = time.monotonic() - t0
    assert_json_error(r, 504)
    assert 0.8 < elapsed < 3, elapsed


def test_connect_timeout_then_next_node(tmp_path):
    with Blackhole() as hole, UpstreamServer("a") as a:
        cfg = route({"nodes": {hole.addr: 2, a.addr: 1}, "timeout": FAST})
        with GatewayProcess(cfg, tmp_path) as gw:
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/x")
            elapsed = time.monotonic() - t0
    assert r.status == 200 and r.json()["server"] == "a"
    assert 0.8 < elapsed < 3, elapsed


def test_read_timeout_is_504_within_bounds(tmp_path):
    with (
        UpstreamServer("a") as a,
        GatewayProcess(route({"nodes": {a.addr: 1}, "timeout": FAST}), tmp_path) as gw,
    ):
        t0 = time.monotonic()
        r = request(gw.port, "GET", "/hang")
        elapsed = time.monotonic() - t0
        lines = log_lines(gw, 1)
    assert_json_error(r, 504)
    assert 0.9 < elapsed < 2.5, elapsed
    assert lines[0]["status"] == 504


def test_route_timeout_overrides_upstream_timeout(tmp_path):
    with UpstreamServer("a") as a:
        up = {"nodes": {a.addr: 1}, "timeout": {"connect": 5, "send": 5, "read": 30}}
        with GatewayProcess(route(up, timeout=FAST), tmp_path) as gw:
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/hang")
            elapsed = time.monotonic() - t0
    assert_json_error(r, 504)
    assert elapsed < 2.5, elapsed


def test_read_timeout_retries_idempotent_on_next_node(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route({"nodes": {a.addr: 1, b.addr: 1}, "timeout": FAST})
        with GatewayProcess(cfg, tmp_path) as gw:
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/hang")
            elapsed = time.monotonic() - t0
    assert_json_error(r, 504)
    assert len(a.requests) == 1 and len(b.requests) == 1
    assert 1.8 < elapsed < 4, elapsed


def test_retry_timeout_bounds_the_retries(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b, UpstreamServer("c") as c:
        # three hanging nodes, 1 s read timeout each; retry_timeout 1.5 s allows a second try
        # (started at ~1 s) but not a third (it would start at ~2 s)
        cfg = route(
            {"nodes": {a.addr: 1, b.addr: 1, c.addr: 1}, "timeout": FAST, "retry_timeout": 1.5}
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            t0 = time.monotonic()
            r = request(gw.port, "GET", "/hang")
            elapsed = time.monotonic() - t0
    # 502, not the last attempt's 504: the retry that retry_timeout refused ends the request,
    # as APISIX's balancer answers once its proxy_retry_deadline has passed
    assert_json_error(r, 502)
    assert sum(len(u.requests) for u in (a, b, c)) == 2
    assert 1.8 < elapsed < 3.0, elapsed


def test_reset_mid_request_post_not_retried_get_is(tmp_path):
    with ResetServer() as rst, UpstreamServer("a") as a:
        # the resetting node has the higher priority: every request tries it first
        nodes = [
            {"host": "127.0.0.1", "port": rst.port, "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": a.port, "weight": 1, "priority": 0},
        ]
        with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
            # POST: the request went out, then the upstream reset: not replayed
            r = request(gw.port, "POST", "/x", body=b"payload" * 10)
            assert_json_error(r, 502)
            assert a.requests == []
            assert len(rst.requests) == 1
            # a bodiless POST went out too: not replayed either (nginx's non_idempotent rule)
            r = request(gw.port, "POST", "/x", body=b"")
            assert_json_error(r, 502)
            r = request(gw.port, "PATCH", "/x", body=b"p")
            assert_json_error(r, 502)
            assert a.requests == []
            # GET: retried on the other node
            r = request(gw.port, "GET", "/x")
            assert r.status == 200 and r.json()["server"] == "a"
            # PUT is idempotent: retried, its body replayed
            r = request(gw.port, "PUT", "/x", body=b"0123456789" * 100)
            assert r.status == 200 and r.json()["server"] == "a"
            assert r.json()["body_len"] == 1000
            assert r.json()["body_sha256"] == hashlib.sha256(b"0123456789" * 100).hexdigest()
            assert len(rst.requests) == 5
            lines = log_lines(gw, 5)
    assert [ln["status"] for ln in lines] == [502, 502, 502, 200, 200]
    assert [ln["upstream_addr"] for ln in lines[3:]] == [a.addr, a.addr]


def test_chunked_put_replayed_on_retry_with_one_terminator(tmp_path):
    with UpstreamServer("a") as a:
        dead = f"127.0.0.1:{closed_port()}"
        with GatewayProcess(route({"nodes": {dead: 2, a.addr: 1}}), tmp_path) as gw:
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
            try:
                c.request("PUT", "/x", body=iter([b"hello ", b"world"]), encode_chunked=True)
                r = c.getresponse()
                body = json.loads(r.read())
            finally:
                c.close()
            assert r.status == 200 and body["server"] == "a" and body["body_len"] == 11
            # the upstream connection is still healthy: it is reused for the next request
            assert request(gw.port, "GET", "/y").status == 200
            assert request(gw.port, "GET", "/z").status == 200
    assert a.connections == 1


def test_broken_response_is_502_not_retried(tmp_path):
    with (
        UpstreamServer("a") as a,
        UpstreamServer("b") as b,
        GatewayProcess(route({"nodes": {a.addr: 1, b.addr: 1}}), tmp_path) as gw,
    ):
        assert_json_error(request(gw.port, "GET", "/broken"), 502)
        assert len(a.requests) + len(b.requests) == 1


def test_a_response_head_past_the_limit_is_502_and_reading_stops(tmp_path):
    """An upstream that never ends a header line would grow the worker without bound (httptools
    gathers a whole line first): past 64 KiB of head the gateway answers 502, as nginx does past
    its proxy_buffer_size. A large head under the limit goes through."""
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        started = time.monotonic()
        assert_json_error(request(gw.port, "GET", "/huge-head?kb=4096"), 502)
        assert time.monotonic() - started < 5
        r = request(gw.port, "GET", "/huge-head?kb=48&end=1")
        assert r.status == 200 and r.header("X-Big") == "a" * 48 * 1024
        assert request(gw.port, "GET", "/ok").status == 200  # the gateway keeps serving


def test_an_upstream_trailer_is_dropped_not_given_to_the_next_response(tmp_path):
    """Trailer fields of a chunked response arrive after its head: they are not headers of the
    next response on that (pooled) upstream connection, which may be another client's."""
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(gw.port, "GET", "/chunked?n=2&size=3&trailer=1")
        assert r.status == 200 and r.body == b"aaabbb" and r.header("X-Trailer-Leak") is None
        for _ in range(3):
            r = request(gw.port, "GET", "/next")
            assert r.status == 200 and r.header("X-Trailer-Leak") is None
    assert a.connections == 1  # the same upstream connection served them all


def test_the_reason_phrase_is_the_responses_own(tmp_path):
    """A reason phrase that arrives in two reads is forwarded whole, and a response without one
    gets the standard phrase, never the one of the response before it on the connection."""
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            for path, status, reason, body in (
                ("/split-status", 404, "Not Found", b"no"),
                ("/no-reason", 200, "OK", b"ok"),
            ):
                conn.request("GET", path)
                r = conn.getresponse()
                assert (r.status, r.reason, r.read()) == (status, reason, body)
        finally:
            conn.close()
    assert a.connections == 1  # both on one upstream connection


def test_truncated_response_is_aborted(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(gw.port, "GET", "/truncate")
        assert r.status == 200
        assert not r.complete and r.body == b"0123456789"
        lines = log_lines(gw, 1)
        # the gateway keeps serving
        assert request(gw.port, "GET", "/ok").status == 200
    assert lines[0]["upstream_status"] == 200


def test_reset_without_answer_is_502_or_retried(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        assert_json_error(request(gw.port, "GET", "/reset"), 502)
    with (
        UpstreamServer("a") as a,
        UpstreamServer("b") as b,
        GatewayProcess(route({"nodes": {a.addr: 1, b.addr: 1}}), tmp_path) as gw,
    ):
        assert_json_error(request(gw.port, "GET", "/reset"), 502)
        assert len(a.requests) == 1 and len(b.requests) == 1  # retried once, then 502


# --- keep-alive pool --------------------------------------------------------------------------


def test_keepalive_reuses_one_upstream_connection(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        for i in range(10):
            r = request(gw.port, "GET", f"/k{i}")  # a new client connection each time
            assert r.status == 200
        r = request(gw.port, "POST", "/post", body=b"x" * 5000)
        assert r.json()["body_len"] == 5000
        assert request(gw.port, "HEAD", "/head").status == 200
        assert request(gw.port, "GET", "/chunked?n=4&size=10").body == (
            b"a" * 10 + b"b" * 10 + b"c" * 10 + b"d" * 10
        )
        assert request(gw.port, "GET", "/status/204").status == 204
        assert request(gw.port, "GET", "/last").status == 200
    assert a.connections == 1
    assert len(a.requests) == 15


def test_keepalive_pool_requests_limit(tmp_path):
    with UpstreamServer("a") as a:
        cfg = route(
            {"nodes": {a.addr: 1}, "keepalive_pool": {"size": 4, "idle_timeout": 60, "requests": 2}}
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            for i in range(6):
                assert request(gw.port, "GET", f"/k{i}").status == 200
    assert a.connections == 3


def test_keepalive_pool_idle_timeout(tmp_path):
    with UpstreamServer("a") as a:
        cfg = route(
            {
                "nodes": {a.addr: 1},
                "keepalive_pool": {"size": 4, "idle_timeout": 0.5, "requests": 100},
            }
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            assert request(gw.port, "GET", "/1").status == 200
            assert request(gw.port, "GET", "/2").status == 200
            assert a.connections == 1
            assert wait_until(lambda: not a.transports, 4)  # the pool closed it
            assert request(gw.port, "GET", "/3").status == 200
    assert a.connections == 2


def test_close_delimited_response_is_not_pooled(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            r = request(gw.port, "GET", "/close-delimited", conn=c)
            assert r.status == 200 and r.body == b"until-close-body" and r.complete
            # re-framed as chunked for an HTTP/1.1 client, whose connection stays open
            assert r.header("Transfer-Encoding") == "chunked"
            assert request(gw.port, "GET", "/next", conn=c).status == 200
        finally:
            c.close()
    assert a.connections == 2


def test_stale_pooled_connection_is_retried_on_a_new_one(tmp_path):
    """The upstream closed a pooled connection the gateway still held: the next GET must not
    fail for it (nginx retries a failed cached connection)."""
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        for i in range(20):
            assert request(gw.port, "GET", f"/a{i}").status == 200
            for t in list(a.transports):  # the upstream drops its idle connections
                a._loop.call_soon_threadsafe(t.close)
            # no wait: the next request races with the FIN
            r = request(gw.port, "GET", f"/b{i}")
            assert r.status == 200, (i, r.body)


# --- the request the upstream sees --------------------------------------------------------------


def headers_seen(up: UpstreamServer) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in up.requests[-1]["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


@pytest.mark.parametrize(
    ("pass_host", "upstream_host", "expected"),
    [
        ("pass", None, "client.example:8080"),
        ("node", None, "{node}"),
        ("rewrite", "rewritten.example", "rewritten.example"),
        ("rewrite", "rewritten.example:81", "rewritten.example:81"),
    ],
)
def test_pass_host(tmp_path, pass_host, upstream_host, expected):
    with UpstreamServer("a") as a:
        up: dict[str, Any] = {"nodes": {a.addr: 1}, "pass_host": pass_host}
        if upstream_host:
            up["upstream_host"] = upstream_host
        with GatewayProcess(route(up), tmp_path) as gw:
            r = request(gw.port, "GET", "/h", headers={"Host": "client.example:8080"})
            assert r.status == 200
    assert headers_seen(a)["host"] == [expected.format(node=a.addr)]


def test_forwarded_headers(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        request(
            gw.port,
            "GET",
            "/f?q=1",
            headers={
                "Host": "Site.Example:8080",
                "X-Forwarded-For": "203.0.113.7",
                "X-Real-IP": "6.6.6.6",
                "X-Forwarded-Proto": "gopher",
            },
        )
        h = headers_seen(a)
        assert h["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
        assert h["x-real-ip"] == ["127.0.0.1"]
        assert h["x-forwarded-proto"] == ["http"]
        assert h["x-forwarded-host"] == ["site.example"]
        assert h["x-forwarded-port"] == [str(gw.port)]
        assert a.requests[-1]["url"] == "/f?q=1"
        # without an incoming X-Forwarded-For: just the client
        request(gw.port, "GET", "/g")
        assert headers_seen(a)["x-forwarded-for"] == ["127.0.0.1"]
        # two incoming ones are joined in order
        request(
            gw.port,
            "GET",
            "/g",
            headers=[("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")],
        )
        assert headers_seen(a)["x-forwarded-for"] == ["1.1.1.1, 2.2.2.2, 127.0.0.1"]


def test_forwarded_host_follows_each_request_on_one_connection(tmp_path):
    # The X-Forwarded-* lines are memoized per client connection: a Host that changes between
    # two requests on the same keep-alive connection must still reach the upstream as sent.
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            sockets = set()
            for host in ("one.example", "two.example", "one.example"):
                conn.request("GET", "/x", headers={"Host": host})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
                assert headers_seen(a)["x-forwarded-host"] == [host]
                sockets.add(id(conn.sock))
            assert len(sockets) == 1  # one keep-alive connection throughout
        finally:
            conn.close()


def test_hop_by_hop_request_headers_not_forwarded(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(
            gw.port,
            "GET",
            "/hop",
            headers=[
                ("X-Early", "dropped: named in Connection below"),
                ("Connection", "keep-alive, X-Early, X-Secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "X-T"),
                ("X-Secret", "s"),
                ("X-Kept", "yes"),
                ("Connection", "X-Second"),  # a second Connection header names more
                ("X-Second", "dropped too"),
            ],
        )
        assert r.status == 200
    h = headers_seen(a)
    hop = ("x-early", "x-secret", "x-second", "keep-alive", "proxy-connection", "te", "trailer")
    for name in hop:
        assert name not in h, name
    assert h["x-kept"] == ["yes"]
    assert h.get("connection", ["keep-alive"]) != ["keep-alive, X-Early, X-Secret"]


def test_hop_by_hop_response_headers_not_forwarded(tmp_path):
    with UpstreamServer("a") as a:
        a.extra_headers = [
            ("Connection", "X-Internal, keep-alive"),
            ("X-Internal", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-T"),
            ("X-Public", "ok"),
        ]
        with GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
            r = request(gw.port, "GET", "/resp")
    assert r.status == 200 and r.json()["server"] == "a"
    names = {k.lower() for k, _ in r.headers}
    for name in ("x-internal", "keep-alive", "proxy-connection", "trailer"):
        assert name not in names, name
    assert r.header("X-Public") == "ok"
    assert r.header("Connection") in (None, "keep-alive")


def _all(r: Response, name: str) -> list[str]:
    return [v for k, v in r.headers if k.lower() == name]


def _is_now(date: str) -> bool:
    return abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 60


OLD_DATE = "Mon, 01 Jan 2001 00:00:00 GMT"


def test_upstream_date_and_server_are_replaced_by_the_gateways(tmp_path):
    """As nginx (proxy_hide_header's defaults) and APISIX (its Server on every response): the
    backend's software stays private, and a response the upstream sent without a Date gets one
    (RFC 9110 6.6.1). Also when Connection names other headers (the second pass)."""
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(gw.port, "GET", "/no-date")  # the test upstream sends neither header
        assert r.status == 200
        assert _all(r, "server") == ["ando"]
        assert len(_all(r, "date")) == 1 and _is_now(r.header("Date"))
        for extra in ([], [("Connection", "X-Internal"), ("X-Internal", "1")]):
            a.extra_headers = [("Server", "backend/1.2.3"), ("Date", OLD_DATE), *extra]
            r = request(gw.port, "GET", "/named")
            assert r.status == 200 and r.json()["server"] == "a"
            assert _all(r, "server") == ["ando"], r.headers
            assert len(_all(r, "date")) == 1 and _is_now(r.header("Date")), r.headers
            assert r.header("X-Internal") is None


def test_plugins_see_and_may_change_the_gateways_date_and_server(tmp_path):
    """A header filter sees the Date and Server the client will get (not the backend's), and
    what it sets there is sent once; a plugin's own answer carries them too."""
    cfg = {
        "routes": [
            {
                "id": "set",
                "uri": "/set",
                "upstream": {"nodes": {"UP": 1}},
                "plugins": {"response-rewrite": {"headers": {"set": {"Server": "edge"}}}},
            },
            {
                "id": "other",
                "uri": "/other",
                "upstream": {"nodes": {"UP": 1}},
                "plugins": {"response-rewrite": {"headers": {"set": {"X-Other": "1"}}}},
            },
            {
                "id": "seen",
                "uri": "/seen",
                "upstream": {"nodes": {"UP": 1}},
                "plugins": {
                    "serverless-post-function": {
                        "phase": "header_filter",
                        "functions": [
                            "return function(conf, ctx) ando.response.set_header("
                            "'X-Seen-Server', ando.response.get_header('Server')) end"
                        ],
                    }
                },
            },
            {
                "id": "mock",
                "uri": "/mock",
                "plugins": {"mocking": {"response_example": "hi"}},
            },
            {
                "id": "mock-own",
                "uri": "/mock-own",
                "plugins": {
                    "mocking": {"response_example": "hi", "response_headers": {"Server": "mock"}}
                },
            },
        ]
    }
    with UpstreamServer("a") as a:
        a.extra_headers = [("Server", "backend/1.2.3"), ("Date", OLD_DATE)]
        text = json.dumps(cfg).replace("UP", a.addr)
        with GatewayProcess(json.loads(text), tmp_path) as gw:
            r = request(gw.port, "GET", "/set")
            assert r.status == 200 and _all(r, "server") == ["edge"], r.headers
            assert len(_all(r, "date")) == 1 and _is_now(r.header("Date"))
            r = request(gw.port, "GET", "/other")
            assert r.status == 200 and r.header("X-Other") == "1", r.headers
            assert _all(r, "server") == ["ando"] and len(_all(r, "date")) == 1
            assert _is_now(r.header("Date"))
            r = request(gw.port, "GET", "/seen")
            assert r.status == 200 and r.header("X-Seen-Server") == "ando", r.headers
            assert _all(r, "server") == ["ando"] and _is_now(r.header("Date"))
            r = request(gw.port, "GET", "/mock")
            assert r.status == 200 and _all(r, "server") == ["ando"], r.headers
            assert len(_all(r, "date")) == 1 and _is_now(r.header("Date"))
            r = request(gw.port, "GET", "/mock-own")
            assert r.status == 200 and _all(r, "server") == ["mock"], r.headers


# --- bodies, framing, flow control ---------------------------------------------------------------


def test_request_bodies_stream_intact(tmp_path):
    big = bytes(range(256)) * 4096 * 8  # 8 MiB: the upstream write buffer fills and drains
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(gw.port, "POST", "/big", body=big)
        assert r.json()["body_len"] == len(big)
        assert r.json()["body_sha256"] == hashlib.sha256(big).hexdigest()
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            parts = [big[i : i + 100_000] for i in range(0, len(big), 100_000)]
            c.request("POST", "/chunked-in", body=iter(parts), encode_chunked=True)
            body = json.loads(c.getresponse().read())
        finally:
            c.close()
        assert body["body_len"] == len(big)
        assert body["body_sha256"] == hashlib.sha256(big).hexdigest()
        r = request(gw.port, "POST", "/expect", body=b"abc", headers={"Expect": "100-continue"})
        assert r.status == 200 and r.json()["body_len"] == 3


def test_slow_client_body_is_not_an_upstream_send_timeout(tmp_path):
    """`timeout.send` bounds the upstream taking our writes, not the client's pauses mid-body
    (nginx: client_body_timeout, 60 s): a 2 s pause with a 1 s send timeout still succeeds."""
    with UpstreamServer("a") as a:
        cfg = route({"nodes": {a.addr: 1}}, timeout={"connect": 1, "send": 1, "read": 5})
        with (
            GatewayProcess(cfg, tmp_path) as gw,
            socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s,
        ):
            s.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
            time.sleep(2.0)
            s.sendall(b"56789")
            raw = b""
            deadline = time.monotonic() + 5
            while b"}" not in raw and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert a.requests[0]["body_len"] == 10


def test_response_framing(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        r = request(gw.port, "GET", "/chunked?n=50&size=1000")
        assert r.complete and len(r.body) == 50_000
        r = request(gw.port, "GET", "/stream?bytes=3000000")
        assert r.complete and len(r.body) == 3_000_000
        assert r.header("Content-Length") == "3000000"
        r = request(gw.port, "HEAD", "/stream?bytes=1000")
        assert r.status == 200 and r.body == b"" and r.header("Content-Length") == "1000"
        r = request(gw.port, "GET", "/status/304")
        assert r.status == 304 and r.body == b""
        r = request(gw.port, "GET", "/status/418")
        assert r.status == 418 and r.body == b"status 418"
        # an HTTP/1.0 client gets a close-delimited body for a chunked upstream response
        raw = _raw(gw.port, b"GET /chunked?n=2&size=3 HTTP/1.0\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"chunked" not in head.lower()
        assert body == b"aaabbb"
        assert request(gw.port, "GET", "/after").status == 200
    assert a.connections == 1  # every response above left the upstream connection reusable


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_pipelined_requests_answered_in_order(tmp_path):
    with UpstreamServer("a") as a, GatewayProcess(route({"nodes": {a.addr: 1}}), tmp_path) as gw:
        reqs = (
            b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3))
            + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        raw = _raw(gw.port, reqs)
    paths = [json.loads(b)["path"] for b in _split_bodies(raw)]
    assert paths == ["/p0", "/p1", "/p2", "/last"]


def _split_bodies(raw: bytes) -> Iterator[bytes]:
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        yield rest[:length]
        raw = rest[length:]


def test_slow_reader_gets_the_whole_large_response(tmp_path):
    """Backpressure: the gateway pauses the upstream while the client is slow, then resumes. The
    upstream read timeout does not run while the gateway waits on the client (nginx: that is
    send_timeout's job), so a pause longer than `timeout.read` does not cut the response."""
    total = 24 * 1024 * 1024
    with UpstreamServer("a") as a:
        cfg = route({"nodes": {a.addr: 1}}, timeout={"connect": 1, "send": 1, "read": 1})
        with GatewayProcess(cfg, tmp_path) as gw:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", gw.port))
                s.sendall(b"GET /stream?bytes=%d HTTP/1.1\r\nHost: x\r\n\r\n" % total)
                time.sleep(2.5)  # not reading: every buffer on the way fills up
                got = 0
                head = b""
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    if not head:
                        head, _, chunk = chunk.partition(b"\r\n\r\n")
                    got += len(chunk)
                    if got >= total:
                        break
            finally:
                s.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert got == total


def _reset_close(s: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees the connection fail at once."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def test_client_reset_releases_the_upstream(tmp_path):
    with UpstreamServer("a") as a:
        cfg = route({"nodes": {a.addr: 1}}, timeout={"connect": 2, "send": 30, "read": 30})
        with GatewayProcess(cfg, tmp_path) as gw:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: len(a.requests) == 1)
            _reset_close(s)
            # the upstream connection is dropped at once, not after the 30 s read timeout
            assert wait_until(lambda: not a.transports, 3), "upstream connection still open"
            lines = log_lines(gw, 1)
            assert lines and lines[0]["status"] == 499
            assert request(gw.port, "GET", "/after").status == 200


def test_client_close_releases_the_upstream(tmp_path):
    with UpstreamServer("a") as a:
        cfg = route({"nodes": {a.addr: 1}}, timeout={"connect": 2, "send": 6, "read": 6})
        with GatewayProcess(cfg, tmp_path) as gw:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: len(a.requests) == 1)
            s.close()  # a FIN: the client is gone (nginx: "client prematurely closed connection")
            assert wait_until(lambda: not a.transports, 3), "upstream connection still open"
            lines = log_lines(gw, 1)
            assert lines and lines[0]["status"] == 499


def test_least_conn_counts_survive_failures(tmp_path):
    """A request that ended badly (truncated response, client gone) must not stay counted as in
    flight on its node, or least_conn would avoid that node forever."""
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route({"type": "least_conn", "nodes": {a.addr: 1, b.addr: 1}})
        with GatewayProcess(cfg, tmp_path) as gw:
            for _ in range(2):
                r = request(gw.port, "GET", "/truncate")
                assert not r.complete
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: any(q["path"] == "/hang" for q in a.requests + b.requests))
            _reset_close(s)
            assert len(log_lines(gw, 3)) == 3  # both truncated requests and the abandoned one
            seq = [request(gw.port, "GET", "/q").json()["server"] for _ in range(8)]
    assert sorted(seq) == ["a"] * 4 + ["b"] * 4, seq


def test_concurrent_clients_never_get_each_others_responses(tmp_path):
    """Many clients over pooled upstream connections (and pipelined keep-alive on the client
    side): every response belongs to its request, whatever the interleaving."""
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route(
            {
                "nodes": {a.addr: 1, b.addr: 1},
                "keepalive_pool": {"size": 4, "idle_timeout": 60, "requests": 7},
            }
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            errors: list[str] = []

            def client(n: int) -> None:
                c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
                try:
                    for i in range(40):
                        path = f"/c{n}/{i}"
                        if i % 5 == 0:
                            r = request(gw.port, "GET", f"/delay?ms=3&tag={n}-{i}", conn=c)
                            ok = r.status == 200 and r.json()["query"] == f"ms=3&tag={n}-{i}"
                        elif i % 5 == 1:
                            body = f"{n}-{i}".encode() * 100
                            r = request(gw.port, "PUT", path, body=body, conn=c)
                            ok = r.status == 200 and r.json()["body_len"] == len(body)
                            ok = ok and r.json()["path"] == path
                        else:
                            r = request(gw.port, "GET", path, conn=c)
                            ok = r.status == 200 and r.json()["path"] == path
                        if not ok:
                            errors.append(f"{path}: {r.status} {r.body[:200]!r}")
                except Exception as e:  # reported below
                    errors.append(f"client {n}: {e!r}")
                finally:
                    c.close()

            threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors[:5]
            assert not gw.stderr().count("Traceback")
    assert len(a.requests) + len(b.requests) == 12 * 40
