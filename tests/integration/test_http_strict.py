"""The downstream HTTP/1.1 side, black-box: a real gateway process, real upstreams, raw sockets.

DESIGN.md, "The parser is strict, and we are stricter" and "Limits": every request a gateway must
refuse is answered with a JSON `{"error_msg": ...}`, the connection is closed, and nothing reaches
an upstream. Requests it must serve go through intact: keep-alive, pipelining, 100-continue,
bodyless responses, chunked in both directions, close-delimited responses, and large bodies
streamed with flat memory.

Every socket read has a deadline and every loop is bounded; ports are chosen at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.procs import descendants
from tests.support.upstream import UpstreamServer

# Limits of the strict gateway: small, so tests cross them cheaply.
MAX_REQUEST_LINE = 1024
MAX_HEADER_SIZE = 4096
MAX_HEADER_LINES = 20
MAX_BODY = 64 * 1024
HEADER_TIMEOUT = 1
KEEPALIVE = 10  # long: a close seen within a few seconds is the refusal's, not the idle timer's
SETTLE = 0.1  # time for a request that wrongly reached an upstream to be recorded there


# --- a raw client --------------------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    version: bytes
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False
    trailer: bytes = b""
    extra: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self):
        return json.loads(self.body)


class Closed(Exception):
    """The connection ended before a whole response arrived."""


class Raw:
    """One client connection speaking raw bytes, with a deadline on every read."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.reset = False

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more; False on EOF, reset or deadline."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _need(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Closed(f"wanted {n} bytes, have {self.buf[:200]!r}")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise Closed(f"no line in {self.buf[:200]!r}")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_response(self, method: str = "GET", timeout: float | None = None) -> Resp:
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise Closed(f"no response head in {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            headers.append((k.decode("latin-1").lower(), v.strip().decode("latin-1")))
        r = Resp(int(status), version, headers, b"")
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if r.status < 200 or r.status in (204, 304) or method == "HEAD":
            return r
        if te is not None:
            assert te.lower() == "chunked", te
            r.chunked = True
            parts = []
            for _ in range(1_000_000):
                size = int(self._line(deadline).split(b";")[0], 16)
                if size == 0:
                    break
                parts.append(self._need(size, deadline))
                assert self._need(2, deadline) == b"\r\n"
            while (line := self._line(deadline)) != b"":
                r.trailer += line + b"\r\n"
            r.body = b"".join(parts)
        elif cl is not None:
            r.body = self._need(int(cl), deadline)
        else:  # read until close
            while self._fill(deadline):
                pass
            assert self.eof, "a close-delimited body did not end"
            r.body, self.buf = self.buf, b""
        return r

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """True when the server closed (EOF or reset) within `timeout` and sent nothing more."""
        deadline = time.monotonic() + timeout
        while self._fill(deadline):
            pass
        assert self.buf == b"", f"unexpected bytes after the response: {self.buf[:200]!r}"
        return self.eof

    def still_open(self, wait: float = 0.3) -> bool:
        """True when nothing arrives and the connection is not closed within `wait`."""
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        return not self.eof and self.buf == b""


# --- fixtures ------------------------------------------------------------------------------------


def _upstream(up: UpstreamServer) -> dict:
    return {
        "type": "roundrobin",
        "nodes": {up.addr: 1},
        "timeout": {"connect": 2, "send": 5, "read": 5},
    }


class Env:
    def __init__(
        self, gw: GatewayProcess, main: UpstreamServer, pub: UpstreamServer, adm: UpstreamServer
    ):
        self.gw = gw
        self.port = gw.port
        self.main, self.pub, self.adm = main, pub, adm

    def upstream_count(self) -> int:
        return len(self.main.requests) + len(self.pub.requests) + len(self.adm.requests)

    def all_requests(self) -> list[dict]:
        return [*self.main.requests, *self.pub.requests, *self.adm.requests]

    def mark(self) -> tuple[int, int, int]:
        return len(self.main.requests), len(self.pub.requests), len(self.adm.requests)

    def since(self, mark: tuple[int, int, int]) -> list[dict]:
        """Requests the upstreams received after `mark`, in arrival order per upstream."""
        ups = (self.main, self.pub, self.adm)
        return [r for up, n in zip(ups, mark, strict=True) for r in up.requests[n:]]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with (
        UpstreamServer("main") as main,
        UpstreamServer("pub") as pub,
        UpstreamServer("adm") as adm,
    ):
        config = {
            "ando": {
                "limits": {
                    "header_timeout": HEADER_TIMEOUT,
                    "keepalive_timeout": KEEPALIVE,
                    "max_request_line": MAX_REQUEST_LINE,
                    "max_header_size": MAX_HEADER_SIZE,
                    "max_header_lines": MAX_HEADER_LINES,
                    "max_body_size": MAX_BODY,
                }
            },
            "routes": [
                {"id": "public", "uri": "/public/*", "upstream": _upstream(pub)},
                {"id": "admin", "uris": ["/admin", "/admin/*"], "upstream": _upstream(adm)},
                {
                    "id": "vhost",
                    "uri": "/vhost",
                    "host": "only.example",
                    "upstream": _upstream(adm),
                },
                # Every method but PATCH: a PATCH gets the router's own 404.
                {
                    "id": "rest",
                    "uri": "/*",
                    "methods": ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
                    "upstream": _upstream(main),
                },
            ],
        }
        with GatewayProcess(config, tmp_path_factory.mktemp("strict")) as gw:
            yield Env(gw, main, pub, adm)
        # No request, however hostile, may cost a traceback in the gateway.
        assert "Traceback" not in gw.stderr(), gw.stderr()[-5000:]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A gateway with no body limit and a 1 s idle keep-alive timeout."""
    with UpstreamServer("big") as up:
        config = {
            "ando": {"limits": {"keepalive_timeout": 1}},
            "routes": [{"id": "all", "uri": "/*", "upstream": _upstream(up)}],
        }
        with GatewayProcess(config, tmp_path_factory.mktemp("big"), access_log=False) as gw:
            yield gw, up
        assert "Traceback" not in gw.stderr(), gw.stderr()[-5000:]


def assert_error(r: Resp, status: int) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert list(body) == ["error_msg"], body
    assert body["error_msg"].startswith(f"{status} "), body
    assert r.header("connection") == "close"


def refuse(env: Env, data: bytes, status: int) -> Resp:
    """Send `data`; expect one JSON error `status`, then a closed connection, and no upstream
    request."""
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(data)
        r = c.read_response()
        assert_error(r, status)
        assert c.wait_closed(3), "connection left open after a refusal"
    time.sleep(SETTLE)
    assert env.upstream_count() == before, env.all_requests()[before:]
    return r


def refuse_or_abort(env: Env, data: bytes, status: int = 400) -> None:
    """A broken body after an accepted head: either a JSON error and a close, or an abort; in
    either case no complete request reaches an upstream."""
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(data)
        try:
            r = c.read_response()
        except Closed:
            assert c.eof and c.buf == b""
        else:
            assert_error(r, status)
            assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert env.upstream_count() == before, env.all_requests()[before:]


def ok(env_port: int, data: bytes, *, method: str = "GET") -> Resp:
    with Raw(env_port) as c:
        c.send(data)
        return c.read_response(method)


H = b"Host: a.test\r\n"


# --- malformed request lines and heads -----------------------------------------------------------

MALFORMED = {
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "text garbage": b"hello there\r\n\r\n",
    "bad method chars": b"G@T / HTTP/1.1\r\n" + H + b"\r\n",
    "lower-case method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "unknown method": b"FROB / HTTP/1.1\r\n" + H + b"\r\n",
    "missing version": b"GET / \r\n" + H + b"\r\n",
    "http/0.9": b"GET /\r\n\r\n",
    "http/1.2": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "bad version": b"GET / HTTP/x.y\r\n" + H + b"\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a.test\n\n",
    "no colon": b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\n" + H + b"X-A : 1\r\n\r\n",
    "space in name": b"GET / HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n",
    "underscore name": b"GET / HTTP/1.1\r\n" + H + b"X_Forwarded_For: 1.2.3.4\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  folded\r\n\r\n",
    "obs-fold tab": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\tfolded\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "NUL in name": b"GET / HTTP/1.1\r\n" + H + b"X-\x00A: b\r\n\r\n",
    "control in value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n",
    "CR in value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n",
    "control in name": b"GET / HTTP/1.1\r\n" + H + b"X-\x01: b\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
    "control in target": b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n",
    "missing host": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    "two identical hosts": b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
    "host with space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host with @": b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
    "host with /": b"GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
    "host with backslash": b"GET / HTTP/1.1\r\nHost: a.test\\x\r\n\r\n",
    "host empty": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "host bad port": b"GET / HTTP/1.1\r\nHost: a.test:8x\r\n\r\n",
    "host two ports": b"GET / HTTP/1.1\r\nHost: a.test:80:81\r\n\r\n",
    "host non-ascii": b"GET / HTTP/1.1\r\nHost: \xc3\xa9.test\r\n\r\n",
    "host bad ipv6": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "host on 1.0 invalid": b"GET / HTTP/1.0\r\nHost: a/b\r\n\r\n",
    "fragment in target": b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n",
    "backslash in target": b"GET /public\\..\\admin HTTP/1.1\r\n" + H + b"\r\n",
    "encoded slash": b"GET /public/..%2Fadmin HTTP/1.1\r\n" + H + b"\r\n",
    "encoded slash lower": b"GET /a%2fb HTTP/1.1\r\n" + H + b"\r\n",
    "encoded backslash": b"GET /a%5Cb HTTP/1.1\r\n" + H + b"\r\n",
    "encoded NUL": b"GET /a%00b HTTP/1.1\r\n" + H + b"\r\n",
    "bad escape": b"GET /a%zzb HTTP/1.1\r\n" + H + b"\r\n",
    "dot-dot-semicolon": b"GET /public/..;/admin HTTP/1.1\r\n" + H + b"\r\n",
    "encoded dot-dot-semicolon": b"GET /public/%2e%2e;/admin HTTP/1.1\r\n" + H + b"\r\n",
    "climb above root": b"GET /../admin HTTP/1.1\r\n" + H + b"\r\n",
    "relative target": b"GET admin HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk with GET": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form userinfo": b"GET http://u@a.test/admin HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form ftp": b"GET ftp://a.test/admin HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form empty host": b"GET http:///admin HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form bad path": b"GET http://a.test/public/..%2fadmin HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form bad authority": b"GET http://a.test:x/ HTTP/1.1\r\n" + H + b"\r\n",
    "CONNECT": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_is_refused_with_400(env, data):
    expected = 405 if data.startswith(b"CONNECT") else 400
    refuse(env, data, expected)


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/2.0", b"GET / HTTP/3.0"], ids=["http/2.0", "http/3.0"]
)
def test_http2_and_3_request_lines_are_refused(env, line):
    # llhttp parses "HTTP/2.0" as a version; either 505 or 400 is a refusal, never a proxy.
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(line + b"\r\n" + H + b"\r\n")
        r = c.read_response()
        assert r.status in (400, 505)
        assert_error(r, r.status)
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert env.upstream_count() == before


def test_http2_preface_is_refused(env):
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        r = c.read_response()
        assert r.status in (400, 505)
        assert_error(r, r.status)
        assert c.wait_closed(3)
    assert env.upstream_count() == before


def test_error_body_never_echoes_the_request(env):
    r = refuse(env, b"GET /a%zz<script> HTTP/1.1\r\n" + H + b"\r\n", 400)
    assert b"script" not in r.body


def test_accepted_edge_cases_reach_the_upstream(env):
    """What strictness must not refuse: OWS and obs-text in values, HTTP/1.0 without Host, an
    IPv6 Host, a port, leading zeros in Content-Length, a single leading empty line."""
    cases = [
        b"GET /ok1 HTTP/1.1\r\nHost: a.test\r\nX-A:\t b \t\r\n\r\n",
        b"GET /ok2 HTTP/1.1\r\nHost: a.test\r\nX-A: caf\xc3\xa9\r\n\r\n",
        b"GET /ok3 HTTP/1.0\r\n\r\n",
        b"GET /ok4 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET /ok5 HTTP/1.1\r\nHost: A.Test:80\r\n\r\n",
        b"POST /ok6 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 003\r\n\r\nabc",
        b"\r\nGET /ok7 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET  /ok8 HTTP/1.1\r\nHost: a.test\r\n\r\n",  # RFC 9112 3: MAY split on whitespace
        # Trailing OWS is not part of a value (RFC 9110 5.5).
        b"POST /ok9 HTTP/1.1\r\nHost: a.test \r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n",
        b"POST /ok10 HTTP/1.1\r\nHost: a.test\t\r\nContent-Length: 3 \r\n\r\nabc",
        b"POST /ok11 HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue \r\nContent-Length: 0\r\n\r\n",
    ]
    for data in cases:
        r = ok(env.port, data)
        assert r.status == 200, (data, r.status, r.body)
        echo = r.json()
        assert echo["server"] == "main" and echo["path"].startswith("/ok"), data
    # The asterisk form is parsed (no route matches "*": the router's 404, not a refusal).
    r = ok(env.port, b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert r.status == 404 and r.json() == {"error_msg": "404 Route Not Found"}


def test_paths_normalize_before_routing(env):
    """`/public/../admin` is `/admin`: it must hit the admin route's upstream, never the public
    one, and the upstream sees the normalized path."""
    cases = {
        b"/public/../admin": "/admin",
        b"/public/%2e%2e/admin": "/admin",
        b"/public/%2E%2E/admin/x": "/admin/x",
        b"/public/./../admin/": "/admin/",
        b"/public//../admin": "/admin",
        b"//admin": "/admin",
        b"/public/x/../../admin?q=1": "/admin",
        b"/%61dmin": "/admin",
    }
    for target, path in cases.items():
        npub, nadm = len(env.pub.requests), len(env.adm.requests)
        r = ok(env.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
        assert r.status == 200, (target, r.body)
        assert r.json()["server"] == "adm", target
        assert r.json()["path"] == path, target
        assert len(env.pub.requests) == npub, target
        assert len(env.adm.requests) == nadm + 1, target
    r = ok(env.port, b"GET /admin/../public/x HTTP/1.1\r\n" + H + b"\r\n")
    assert r.json()["server"] == "pub" and r.json()["path"] == "/public/x"


def test_absolute_form_target(env):
    """RFC 9112 3.2.2: the target's authority replaces the Host header, for routing and for the
    upstream; the path is normalized like any other."""
    r = ok(env.port, b"GET http://a.test/public/../admin?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert r.status == 200
    assert r.json()["server"] == "adm" and r.json()["url"] == "/admin?x=1"
    # The authority routes, not the Host header.
    r = ok(env.port, b"GET http://only.example/vhost HTTP/1.1\r\nHost: other.test\r\n\r\n")
    assert r.json()["server"] == "adm"
    assert dict(r.json()["headers"])["Host"] == "only.example"
    r = ok(env.port, b"GET http://other.test/vhost HTTP/1.1\r\nHost: only.example\r\n\r\n")
    assert r.json()["server"] == "main"
    assert dict(r.json()["headers"])["Host"] == "other.test"
    r = ok(env.port, b"GET HTTP://ONLY.EXAMPLE:80 HTTP/1.1\r\nHost: x.test\r\n\r\n")
    assert r.status == 200 and r.json()["path"] == "/"


def test_host_routing_is_case_and_trailing_dot_insensitive(env):
    for host in (b"only.example", b"ONLY.Example", b"only.example:9", b"only.example."):
        r = ok(env.port, b"GET /vhost HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert r.json()["server"] == "adm", host


# --- framing: Transfer-Encoding, Content-Length, smuggling ----------------------------------------

FRAMING = {
    "TE on HTTP/1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE on HTTP/1.0 with CL": (
        b"POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "TE gzip, chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "TE identity": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 501),
    "TE chunked, identity": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        None,
    ),
    "TE xchunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "CL two values": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "CL list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    "CL negative": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nabcd", 400),
    "CL plus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    "CL hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    "CL letters": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400),
    "CL empty": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    "CL space inside": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1 2\r\n\r\nab", 400),
    "CL overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999999\r\n\r\n",
        400,
    ),
    # Request smuggling: CL.TE and TE.CL in every order, and obfuscated Transfer-Encodings.
    "CL.TE": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n",
        400,
    ),
    "TE.CL": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        b"23\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n\r\n0\r\n\r\n",
        400,
    ),
    "TE space before colon": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n",
        400,
    ),
    "TE obs-fold": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n",
        400,
    ),
    "TE vertical tab": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "TE twice": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        None,
    ),
    "TE chunked then identity": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        b"0\r\n\r\n",
        None,
    ),
    "TE identity then chunked": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        501,
    ),
    "TE bare LF before": (
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 4\r\nX: 1\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
    "TE with CL and a tab": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
    ),
}


@pytest.mark.parametrize("data,status", FRAMING.values(), ids=FRAMING.keys())
def test_ambiguous_framing_is_refused(env, data, status):
    if status is None:  # 400 or 501: both refuse; what matters is that nothing is proxied
        before = env.upstream_count()
        with Raw(env.port) as c:
            c.send(data)
            r = c.read_response()
            assert r.status in (400, 501)
            assert_error(r, r.status)
            assert c.wait_closed(3)
        time.sleep(SETTLE)
        assert env.upstream_count() == before
    else:
        refuse(env, data, status)
    assert not any(r["path"] == "/smuggled" for r in env.all_requests())


BAD_CHUNKS = {
    "non-hex size": b"zz\r\nabc\r\n0\r\n\r\n",
    "negative size": b"-1\r\nabc\r\n0\r\n\r\n",
    "0x prefix": b"0x3\r\nabc\r\n0\r\n\r\n",
    "size overflow": b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "space in size": b"1 2\r\nabc\r\n0\r\n\r\n",
    "data longer than size": b"3\r\nabcdef\r\n0\r\n\r\n",
    "LF-only chunk lines": b"3\nabc\n0\n\n",
    "missing CRLF after data": b"3\r\nabcGET /smuggled HTTP/1.1\r\n\r\n",
    "bad extension": b"3;\x01\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunked_body_is_refused_or_aborted(env, body):
    refuse_or_abort(
        env, b"POST /chunky HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body
    )
    assert not any(r["path"] == "/smuggled" for r in env.all_requests())


def test_bad_chunk_after_some_good_chunks(env):
    """The head and a first chunk were forwarded, then the body breaks: the upstream gets no
    complete request and the client gets an error (or an abort), never a hang."""
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(
            b"POST /chunky HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.3)  # let the gateway connect and forward the head
        c.send(b"zz\r\n")
        try:
            r = c.read_response()
            assert_error(r, 400)
        except Closed:
            pass
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert env.upstream_count() == before


def test_content_length_body_holding_a_request_is_one_request(env):
    inner = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
    r = ok(
        env.port,
        b"POST /one HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(inner) + inner,
    )
    assert r.status == 200 and r.json()["body_len"] == len(inner)
    assert r.json()["body_sha256"] == hashlib.sha256(inner).hexdigest()
    assert not any(x["path"] == "/smuggled" for x in env.all_requests())


def test_chunked_request_body_forwarded_intact(env):
    parts = [b"a" * 1, b"\x00\xff\r\n" * 100, os.urandom(10_000), b"0\r\n\r\n", os.urandom(3)]
    body = b"".join(parts)
    wire = (
        b"".join(b"%x;ext=v\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    with Raw(env.port) as c:
        c.send(b"POST /up HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(wire), 777):  # in odd-sized pieces, as a slow client would
            c.send(wire[i : i + 777])
        r = c.read_response()
    assert r.status == 200
    echo = r.json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert dict(echo["headers"]).get("Transfer-Encoding") == "chunked"


def test_trailer_fields_are_dropped_and_change_nothing(env):
    """Trailers come after the request went upstream: a Host there is not a second Host (no
    refusal mid-body), and no trailer reaches the upstream. (llhttp itself refuses a
    Content-Length or Transfer-Encoding trailer: a 400.)"""
    trailers = b"Host: evil.example\r\nX-Trailer: t\r\n\r\n"
    with Raw(env.port) as c:
        c.send(b"POST /trailers HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
        c.send(b"3\r\nabc\r\n0\r\n" + trailers)
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 3 and r.trailer == b""
        c.send(b"GET /after HTTP/1.1\r\n" + H + b"\r\n")  # the connection goes on
        assert c.read_response().status == 200
    seen = [x for x in env.all_requests() if x["path"] == "/trailers"]
    assert len(seen) == 1 and "X-Trailer" not in dict(seen[0]["headers"])


# --- limits ----------------------------------------------------------------------------------------


def test_request_line_too_long_is_414(env):
    refuse(env, b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n" + H + b"\r\n", 414)
    # Arriving in pieces (no end of line yet) is refused as soon as it crosses the limit.
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(b"GET /")
        for _ in range(MAX_REQUEST_LINE // 256 + 2):
            try:
                c.send(b"b" * 256)
            except (BrokenPipeError, ConnectionResetError):
                break
            if not c.still_open(0.02):
                break
        r = c.read_response()
        assert_error(r, 414)
    assert env.upstream_count() == before


def test_request_line_at_the_limit_is_served(env):
    target = b"/" + b"a" * (MAX_REQUEST_LINE - 1)
    r = ok(env.port, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert r.status == 200


def test_header_block_too_large_is_431(env):
    big = b"X-Big-%d: " + b"v" * (MAX_HEADER_SIZE // 2) + b"\r\n"
    refuse(env, b"GET / HTTP/1.1\r\n" + H + big % 1 + big % 2 + b"\r\n", 431)
    refuse(env, b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * MAX_HEADER_SIZE + b"\r\n\r\n", 431)


def test_endless_header_line_is_431(env):
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(b"GET / HTTP/1.1\r\n" + H + b"X-Endless: ")
        for _ in range(100):
            try:
                c.send(b"v" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                break
            if c.still_open(0.0) is False:
                break
        r = c.read_response()
        assert_error(r, 431)
    assert env.upstream_count() == before


def test_header_block_just_under_the_limit_is_served(env):
    value = b"v" * (MAX_HEADER_SIZE - 200)
    r = ok(env.port, b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + value + b"\r\n\r\n")
    assert r.status == 200


def test_too_many_header_lines_is_431(env):
    lines = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(MAX_HEADER_LINES))
    refuse(env, b"GET / HTTP/1.1\r\n" + H + lines + b"\r\n", 431)
    fine = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(MAX_HEADER_LINES - 1))
    assert ok(env.port, b"GET / HTTP/1.1\r\n" + H + fine + b"\r\n").status == 200


def test_header_timeout_is_408_and_closes(env):
    before = env.upstream_count()
    with Raw(env.port) as c:
        t0 = time.monotonic()
        c.send(b"GET /slow HTTP/1.1\r\nHost: a.te")
        r = c.read_response(timeout=HEADER_TIMEOUT + 3)
        elapsed = time.monotonic() - t0
        assert_error(r, 408)
        assert HEADER_TIMEOUT * 0.8 <= elapsed <= HEADER_TIMEOUT + 1.5, elapsed
        assert c.wait_closed(2)
    assert env.upstream_count() == before


def test_header_timeout_is_not_extended_by_a_slow_drip(env):
    head = b"GET /drip HTTP/1.1\r\nHost: a.test\r\nX-Drip: " + b"d" * 100
    with Raw(env.port) as c:
        t0 = time.monotonic()
        for i in range(len(head)):
            try:
                c.send(head[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            if not c.still_open(0.05):
                break
            if time.monotonic() - t0 > HEADER_TIMEOUT + 3:
                break
        r = c.read_response(timeout=1)
        assert_error(r, 408)
        assert time.monotonic() - t0 <= HEADER_TIMEOUT + 1.5


def test_header_timeout_applies_after_a_keepalive_request(env):
    """A connection that served a request (idle timer: 10 s) then sends half a head gets its 408
    after the header timeout, not after the idle one."""
    with Raw(env.port) as c:
        c.send(b"GET /first HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        c.send(b"GET /second HTTP/1.1\r\nHo")
        r = c.read_response(timeout=HEADER_TIMEOUT + 3)
        assert_error(r, 408)
        assert time.monotonic() - t0 <= HEADER_TIMEOUT + 1.5


def test_silent_connection_is_closed_after_header_timeout(env):
    with Raw(env.port) as c:
        t0 = time.monotonic()
        assert c.wait_closed(HEADER_TIMEOUT + 3)
        assert time.monotonic() - t0 >= HEADER_TIMEOUT * 0.8


def test_body_over_limit_by_content_length_is_413_at_once(env):
    # Only the head is sent: the answer must not wait for a body.
    r = refuse(
        env, b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413
    )
    assert r.json() == {"error_msg": "413 request body too large"}


def test_body_at_limit_is_served(env):
    body = os.urandom(MAX_BODY)
    r = request(env.port, "POST", "/limit", body=body)
    assert r.status == 200 and r.json()["body_len"] == MAX_BODY


def test_chunked_body_over_limit_is_413_when_it_crosses(env):
    before = env.upstream_count()
    with Raw(env.port) as c:
        c.send(b"POST /big HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (16384, b"c" * 16384)
        for _ in range(MAX_BODY // 16384):
            c.send(piece)
        time.sleep(0.2)
        assert c.still_open(0.1), "refused before the limit was crossed"
        c.send(piece)  # crosses the limit
        r = c.read_response()
        assert_error(r, 413)
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert env.upstream_count() == before


def test_idle_keepalive_connection_is_closed_after_keepalive_timeout(big):
    gw, _ = big
    with Raw(gw.port) as c:
        c.send(b"GET /idle HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.wait_closed(4)
        assert 0.8 <= time.monotonic() - t0 <= 3, time.monotonic() - t0


# --- keep-alive and pipelining ----------------------------------------------------------------------


def test_several_requests_on_one_connection(env):
    with Raw(env.port) as c:
        for i in range(5):
            c.send(b"GET /ka/%d HTTP/1.1\r\n" % i + H + b"\r\n")
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == f"/ka/{i}"
            assert r.header("connection") is None
        c.send(b"POST /ka/post HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc")
        assert c.read_response().json()["body_len"] == 3
        assert c.still_open()


def test_three_pipelined_gets_are_answered_in_order(env):
    with Raw(env.port) as c:
        c.send(b"".join(b"GET /pipe/%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(3)))
        paths = [c.read_response().json()["path"] for _ in range(3)]
        assert paths == ["/pipe/0", "/pipe/1", "/pipe/2"]
        assert c.still_open()


def test_pipelined_slow_first_request_keeps_order(env):
    with Raw(env.port) as c:
        c.send(
            b"GET /delay?ms=300 HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /fast/1 HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /status/204 HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /fast/2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        )
        assert c.read_response().json()["path"] == "/delay"
        assert c.read_response().json()["path"] == "/fast/1"
        assert c.read_response().status == 204
        last = c.read_response()
        assert last.json()["path"] == "/fast/2" and last.header("connection") == "close"
        assert c.wait_closed(3)


def test_pipelined_requests_with_bodies(env):
    bodies = [os.urandom(n) for n in (10, 0, 5000, 70)]
    wire = b""
    for i, b in enumerate(bodies):
        if i == 3:
            wire += b"POST /pb/%d HTTP/1.1\r\n" % i + H + b"Transfer-Encoding: chunked\r\n\r\n"
            wire += b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b)
        else:
            wire += b"POST /pb/%d HTTP/1.1\r\n" % i + H + b"Content-Length: %d\r\n\r\n" % len(b) + b
    with Raw(env.port) as c:
        c.send(wire)
        for i, b in enumerate(bodies):
            echo = c.read_response().json()
            assert echo["path"] == f"/pb/{i}"
            assert echo["body_len"] == len(b)
            assert echo["body_sha256"] == hashlib.sha256(b).hexdigest()


def test_pipelined_requests_with_large_bodies(env):
    """Bodies bigger than what the gateway buffers for a queued request: it must stop reading,
    not drop or reorder anything."""
    bodies = [os.urandom(60_000) for _ in range(4)]
    wire = b"".join(
        b"PUT /plb/%d HTTP/1.1\r\n" % i + H + b"Content-Length: %d\r\n\r\n" % len(b) + b
        for i, b in enumerate(bodies)
    )
    with Raw(env.port, timeout=10) as c:
        c.send(b"GET /delay?ms=200 HTTP/1.1\r\n" + H + b"\r\n" + wire)
        assert c.read_response().json()["path"] == "/delay"
        for i, b in enumerate(bodies):
            echo = c.read_response().json()
            assert (echo["path"], echo["body_sha256"]) == (
                f"/plb/{i}",
                hashlib.sha256(b).hexdigest(),
            )


def test_pipelined_bad_request_after_good_ones(env):
    """The good requests before it are answered; the bad one gets its 400; then the connection
    closes and nothing after it is read."""
    mark = env.mark()
    with Raw(env.port) as c:
        c.send(
            b"GET /delay?ms=200 HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /good HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
            b"GET /after HTTP/1.1\r\n" + H + b"\r\n"
        )
        assert c.read_response().json()["path"] == "/delay"
        assert c.read_response().json()["path"] == "/good"
        assert_error(c.read_response(), 400)
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert [r["path"] for r in env.since(mark)] == ["/delay", "/good"]


@pytest.mark.parametrize(
    "first",
    [
        b"GET /status/200 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
        b"PATCH /no-route HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
        # Answered before its body was read: the connection closes rather than parse the body.
        b"PATCH /no-route HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    ],
    ids=["proxied", "router-404", "router-404-with-body"],
)
def test_nothing_after_a_closing_response_is_served(env, first):
    """Requests pipelined after a response that closes the connection are never dispatched,
    even when that response is the gateway's own, made while the same read is being parsed."""
    mark = env.mark()
    with Raw(env.port) as c:
        c.send(first + b"GET /after-close HTTP/1.1\r\n" + H + b"\r\n")
        r = c.read_response()
        assert r.status in (200, 404)
        assert r.header("connection") == "close"
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert "/after-close" not in [r["path"] for r in env.since(mark)]


def test_router_404_keeps_the_connection(env):
    with Raw(env.port) as c:
        c.send(b"PATCH /no-route HTTP/1.1\r\n" + H + b"\r\n")
        r = c.read_response()
        assert r.status == 404 and r.json() == {"error_msg": "404 Route Not Found"}
        c.send(b"GET /after-404 HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().json()["path"] == "/after-404"


def test_client_eof_abandons_the_request_in_flight(env):
    """A FIN from the client while its request waits on the upstream ends that request (nginx:
    "client prematurely closed connection"), promptly, and the gateway goes on serving."""
    with Raw(env.port) as c:
        c.send(b"GET /delay?ms=1500 HTTP/1.1\r\n" + H + b"\r\n")
        time.sleep(0.2)
        t0 = time.monotonic()
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(1)
        assert time.monotonic() - t0 < 1
    assert ok(env.port, b"GET /after-eof HTTP/1.1\r\n" + H + b"\r\n").status == 200


def test_http10_without_keepalive_closes_after_the_response(env):
    with Raw(env.port) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["version"] == "1.1"
        assert r.header("connection") == "close"
        assert c.wait_closed(3)


def test_http10_with_keepalive_stays_open(env):
    with Raw(env.port) as c:
        for i in range(3):
            c.send(b"GET /old-ka/%d HTTP/1.0\r\nConnection: keep-alive\r\n" % i + H + b"\r\n")
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == f"/old-ka/{i}"
            assert r.header("connection").lower() == "keep-alive"
        assert c.still_open()


def test_connection_close_on_http11_closes(env):
    with Raw(env.port) as c:
        c.send(b"GET /bye HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.wait_closed(3)


# --- Expect: 100-continue -----------------------------------------------------------------------


def test_expect_100_continue(env):
    body = os.urandom(1000)
    with Raw(env.port) as c:
        c.send(
            b"POST /expect HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = c.read_response(timeout=3)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert "Expect" not in dict(r.json()["headers"])
        # And the connection goes on.
        c.send(b"GET /after-expect HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().json()["path"] == "/after-expect"


def test_expect_100_continue_with_chunked_body(env):
    with Raw(env.port) as c:
        c.send(
            b"POST /expect-chunked HTTP/1.1\r\n" + H + b"Expect: 100-Continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert c.read_response(timeout=3).status == 100
        c.send(b"4\r\nabcd\r\n0\r\n\r\n")
        assert c.read_response().json()["body_len"] == 4


def test_expect_on_http10_gets_no_interim_response(env):
    """RFC 9110 15.2: no 1xx to an HTTP/1.0 client; it sends its body anyway."""
    with Raw(env.port) as c:
        c.send(b"POST /e10 HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert c.still_open(0.5)
        c.send(b"hi")
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == 2


def test_unknown_expectation_is_417(env):
    refuse(env, b"POST / HTTP/1.1\r\n" + H + b"Expect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417)


# --- responses without a body, chunked and close-delimited responses -----------------------------


def test_head_gets_headers_and_no_body(env):
    with Raw(env.port) as c:
        c.send(b"HEAD /head HTTP/1.1\r\n" + H + b"\r\n")
        r = c.read_response("HEAD")
        assert r.status == 200 and int(r.header("content-length")) > 0
        # Nothing follows the head: the next response starts right after it.
        c.send(b"GET /after-head HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().json()["path"] == "/after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(env, status):
    with Raw(env.port) as c:
        c.send(b"GET /status/%d HTTP/1.1\r\n" % status + H + b"\r\n")
        r = c.read_response()
        assert r.status == status and r.body == b""
        assert r.header("transfer-encoding") is None
        c.send(b"GET /after-%d HTTP/1.1\r\n" % status + H + b"\r\n")
        r2 = c.read_response()
        assert r2.json()["path"] == f"/after-{status}"


def test_chunked_response_to_http11_client(env):
    with Raw(env.port) as c:
        c.send(b"GET /chunked?n=30&size=1000 HTTP/1.1\r\n" + H + b"\r\n")
        r = c.read_response()
        assert r.status == 200 and r.chunked
        assert r.body == b"".join(bytes([97 + i % 26]) * 1000 for i in range(30))
        c.send(b"GET /after-chunked HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().json()["path"] == "/after-chunked"


def test_chunked_response_to_http10_client(env):
    with Raw(env.port) as c:
        c.send(b"GET /chunked?n=3&size=10 HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and not r.chunked
        assert r.body == b"a" * 10 + b"b" * 10 + b"c" * 10
        assert c.wait_closed(3)


def test_close_delimited_response_to_http10_client(env):
    with Raw(env.port) as c:
        c.send(b"GET /close-delimited HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"until-close-body"
        assert r.header("transfer-encoding") is None
        assert c.eof


def test_close_delimited_response_to_http11_client_is_chunked(env):
    with Raw(env.port) as c:
        c.send(b"GET /close-delimited HTTP/1.1\r\n" + H + b"\r\n")
        r = c.read_response()
        assert r.status == 200 and r.chunked and r.body == b"until-close-body"
        c.send(b"GET /after-close-delimited HTTP/1.1\r\n" + H + b"\r\n")
        assert c.read_response().json()["path"] == "/after-close-delimited"


# --- streaming with flat memory -------------------------------------------------------------------

STREAM_MB = 200


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _gateway_rss_kb(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    pids = [gw.proc.pid, *descendants(gw.proc.pid)]
    return sum(_rss_kb(p) for p in pids)


def test_streaming_200mb_both_ways_with_flat_memory(big):
    gw, _ = big
    total = STREAM_MB * 1024 * 1024
    # Warm up (imports, pools, buffers), then take the baseline.
    request(gw.port, "POST", "/warm", body=os.urandom(1 << 20))
    base = _gateway_rss_kb(gw)
    peak = base
    t0 = time.monotonic()

    # Upload: generated on the fly, never held whole.
    sha = hashlib.sha256()
    piece = os.urandom(1 << 20)
    with Raw(gw.port, timeout=30) as c:
        c.send(b"PUT /upload HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % total)
        for i in range(STREAM_MB):
            chunk = piece[i:] + piece[:i]
            sha.update(chunk)
            c.send(chunk)
            if i % 16 == 0:
                peak = max(peak, _gateway_rss_kb(gw))
        r = c.read_response(timeout=30)
    assert r.status == 200
    assert r.json()["body_len"] == total
    assert r.json()["body_sha256"] == sha.hexdigest()
    t_up = time.monotonic() - t0

    # Download: read and hash as it arrives.
    got = 0
    sha = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.sendall(b"GET /stream?bytes=%d HTTP/1.1\r\n" % total + H + b"\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            assert data
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length: %d" % total in head.lower()
        sha.update(rest)
        got = len(rest)
        reads = 0
        while got < total:
            data = s.recv(1 << 20)
            assert data, f"closed after {got} bytes"
            sha.update(data)
            got += len(data)
            reads += 1
            if reads % 256 == 0:
                peak = max(peak, _gateway_rss_kb(gw))
    assert got == total
    assert sha.hexdigest() == hashlib.sha256(b"x" * total).hexdigest()
    elapsed = time.monotonic() - t0
    growth_mb = (peak - base) / 1024
    print(f"upload {t_up:.1f}s, total {elapsed:.1f}s, RSS growth {growth_mb:.1f} MB")
    assert growth_mb < 50, f"gateway RSS grew by {growth_mb:.1f} MB"


# --- Upgrade: bytes after the request are held until the 101 --------------------------------------


class SwitchingUpstream:
    """A raw upstream on a thread: reads one request head per connection; on /ws answers 101 and
    then echoes every byte back; on anything else answers 200 and records what followed."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self.after: list[bytes] = []  # bytes read after a non-101 answer
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SwitchingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            try:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                if head.startswith(b"GET /ws "):
                    conn.sendall(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                        b"Upgrade: echo\r\n\r\n" + rest
                    )
                    for _ in range(1000):
                        data = conn.recv(65536)
                        if not data:
                            return
                        conn.sendall(data)
                else:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                    )
                    extra = rest
                    for _ in range(100):
                        try:
                            data = conn.recv(65536)
                        except TimeoutError:
                            break
                        if not data:
                            break
                        extra += data
                    self.after.append(extra)
            except OSError:
                return


@pytest.fixture(scope="module")
def switching(tmp_path_factory):
    with SwitchingUpstream() as up:
        upstream = {
            "type": "roundrobin",
            "nodes": {f"127.0.0.1:{up.port}": 1},
            "timeout": {"connect": 2, "send": 5, "read": 5},
        }
        config = {
            "routes": [{"id": "ws", "uri": "/*", "enable_websocket": True, "upstream": upstream}]
        }
        with GatewayProcess(config, tmp_path_factory.mktemp("ws"), access_log=False) as gw:
            yield gw, up
        assert "Traceback" not in gw.stderr(), gw.stderr()[-5000:]


UPGRADE = b"Connection: Upgrade\r\nUpgrade: echo\r\n"


def test_declined_upgrade_closes_and_never_parses_what_followed(switching):
    gw, up = switching
    n = len(up.heads)
    with Raw(gw.port) as c:
        c.send(
            b"GET /no-switch HTTP/1.1\r\n"
            + H
            + UPGRADE
            + b"\r\nGET /smuggled HTTP/1.1\r\n"
            + H
            + b"\r\n"
        )
        r = c.read_response()
        assert r.status == 200 and r.body == b"no"
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert [h.split(b" ")[1] for h in up.heads[n:]] == [b"/no-switch"]


def test_upgrade_holds_early_bytes_until_the_switch(switching):
    gw, up = switching
    with Raw(gw.port) as c:
        # The first tunnel bytes arrive in the same packet as the request.
        c.send(b"GET /ws HTTP/1.1\r\n" + H + UPGRADE + b"\r\nEARLY-BYTES;")
        time.sleep(0.05)
        c.send(b"SECOND;")
        r = c.read_response()
        assert r.status == 101 and r.header("upgrade") == "echo"
        want = b"EARLY-BYTES;SECOND;"
        deadline = time.monotonic() + 2
        while len(c.buf) < len(want) and c._fill(deadline):
            pass
        assert c.buf == want
        c.buf = b""
        inner = b"GET /not-http HTTP/1.1\r\n\r\n"  # inside the tunnel: just bytes
        c.send(inner)
        deadline = time.monotonic() + 2
        while len(c.buf) < len(inner) and c._fill(deadline):
            pass
        assert c.buf == inner
    assert not any(h.startswith(b"GET /not-http") for h in up.heads)


def test_upgrade_answered_by_the_gateway_closes(env):
    """An Upgrade request the router answers itself (404): what followed it is never parsed."""
    mark = env.mark()
    with Raw(env.port) as c:
        c.send(
            b"PATCH /no-route HTTP/1.1\r\n"
            + H
            + UPGRADE
            + b"\r\nGET /smuggled HTTP/1.1\r\n"
            + H
            + b"\r\n"
        )
        assert c.read_response().status == 404
        assert c.wait_closed(3)
    time.sleep(SETTLE)
    assert env.since(mark) == []
