"""The downstream side: one asyncio Protocol per client connection, parsing with httptools.

The protocol is also the parser's callback target (as in uvicorn's httptools_impl), and it knows
nothing of routes or upstreams: when a request's head is complete it hands the request to the
`RequestHandler` it was built with, and from then on talks to the `Exchange` the handler attached
(body chunks in, response bytes out, flow control both ways).

llhttp accepts requests a gateway must refuse, and it has no size limits, so this module is where
Ando is stricter than the parser: HTTP/1.0 and 1.1 only, exactly one valid Host on 1.1, no
Transfer-Encoding on 1.0 and nothing but `chunked`, no `_` in header names, a bounded request
line, header block and header count, a header timeout and an idle keep-alive timeout. A refused
request is answered (400/405/408/413/414/417/431/501/505, a JSON error_msg) and the connection
closed after it; it never reaches an upstream. A body that breaks (or outgrows the limit) after
its head was handed over is refused the same way when no response has begun, and its exchange is
told the client is gone, so the upstream connection is aborted, never reused.

Pipelining: requests parsed while another is in flight wait in a queue, their bodies buffered,
and reading pauses so the queue stays small; responses go out strictly in order, a refusal
included (the requests before it are served, nothing after it is read).

After an Upgrade request, bytes are not HTTP: they are held for the exchange until the upstream
answers 101 (then the connection is a tunnel), and the connection closes if it declines.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, Protocol

import httptools
import orjson

from ando.http.path import BadTarget, split_target

# How many bytes of a queued (pipelined) request body we hold before we stop reading.
PIPELINE_BUFFER = 256 * 1024
# Pause reading while more than this much response data waits in our write buffer.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

# Bytes of a Host (RFC 3986 reg-name: unreserved, sub-delims, pct-encoded; IP literals apart),
# checked with bytes.translate (deleting the allowed bytes leaves nothing): no per-request regex.
_REG_NAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%"
_IP_LITERAL = b"0123456789abcdefABCDEF:."
# Bytes after an Upgrade request held (until the upstream switches) before we stop reading.
UPGRADE_HOLD = 64 * 1024
_REASONS = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    411: "Length Required",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
    505: "HTTP Version Not Supported",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_host_cache: dict[bytes, str] = {}


def parse_host(raw: bytes) -> str | None:
    """A Host value (or an absolute-form authority) as nginx's $host: lower-case, without the
    port and without one trailing dot. None when it is not a valid host[:port].

    Clients send the same few Host values over and over: valid ones are cached (bounded, so
    random hosts only churn the cache)."""
    host = _host_cache.get(raw)
    if host is not None:
        return host
    host = _parse_host(raw)
    if host is not None:
        if len(_host_cache) >= 1024:
            _host_cache.clear()
        _host_cache[raw] = host
    return host


def _parse_host(raw: bytes) -> str | None:
    if raw[:1] == b"[":
        end = raw.find(b"]")
        if end < 2 or raw[1:end].translate(None, _IP_LITERAL):
            return None
        host, port = raw[: end + 1], raw[end + 1 :]
    else:
        colon = raw.find(b":")
        host, port = (raw, b"") if colon < 0 else (raw[:colon], raw[colon:])
        if not host or host.translate(None, _REG_NAME):
            return None
        if host[-1:] == b"." and len(host) > 1:
            host = host[:-1]
    if port and not (2 <= len(port) <= 6 and port[1:].isdigit()):
        return None
    return host.decode("ascii").lower()


def _authority(target: bytes) -> bytes:
    """The authority of an absolute-form target that path.split_target accepted."""
    pre = target.partition(b"?")[0]
    rest = pre[pre.find(b"//") + 2 :]
    slash = rest.find(b"/")
    return rest if slash < 0 else rest[:slash]


class Limits:
    """Request limits, defaulting near nginx's (DESIGN.md, "Limits")."""

    __slots__ = (
        "header_timeout",
        "keepalive_timeout",
        "max_body_size",
        "max_header_lines",
        "max_header_size",
        "max_request_line",
    )

    def __init__(
        self,
        *,
        header_timeout: float = 60.0,
        max_header_size: int = 32 * 1024,
        max_header_lines: int = 100,
        max_request_line: int = 8 * 1024,
        max_body_size: int = 0,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.header_timeout = header_timeout
        self.max_header_size = max_header_size
        self.max_header_lines = max_header_lines
        self.max_request_line = max_request_line
        self.max_body_size = max_body_size  # 0: unlimited
        self.keepalive_timeout = keepalive_timeout


class Exchange(Protocol):
    """What a handler attaches to a request to receive the rest of it."""

    def on_body(self, data: bytes) -> None: ...
    def on_body_end(self) -> None: ...
    def on_client_pause(self) -> None: ...
    def on_client_resume(self) -> None: ...
    def on_client_lost(self) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...


class RequestHandler(Protocol):
    def on_request(self, conn: HttpConnection, request: Request) -> None: ...


class Request:
    """One parsed request head, plus its body while no handler has taken it yet."""

    __slots__ = (
        "body_done",
        "body_parts",
        "body_size",
        "chunked",
        "client_addr",
        "client_port",
        "content_length",
        "exchange",
        "expect_continue",
        "has_body",
        "headers",
        "host",
        "keep_alive",
        "lost",
        "method",
        "path",
        "query",
        "raw_host",
        "refusal",
        "scheme",
        "server_port",
        "start",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.path = ""
        self.query = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""  # lower-case, without port: nginx's $host
        self.raw_host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.has_body = False  # set once the head is parsed: chunked, or a non-zero length
        self.exchange: Exchange | None = None
        self.body_parts: list[bytes] | None = None  # buffered until an exchange takes over
        self.body_size = 0
        self.body_done = False
        self.lost = False  # the client is gone (or the request was refused): a late attach is told
        self.refusal: tuple[int, str] | None = None  # answered with this error when its turn comes
        self.client_addr = ""
        self.client_port = 0
        self.server_port = 0
        self.scheme = "http"
        self.start = 0.0

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, by lower-case name (a scan: heads are short; a name of
        another length is passed without lower-casing it)."""
        n = len(name)
        for k, v in self.headers:
            if len(k) == n and k.lower() == name:
                return v
        return None

    def attach(self, exchange: Exchange) -> None:
        """The handler takes over the body: replay what was buffered, then stream."""
        self.exchange = exchange
        if self.lost:
            # Refused or abandoned while the handler was still getting ready (e.g. connecting
            # upstream): nothing more will come, and nothing of it may be forwarded.
            self.body_parts = None
            exchange.on_client_lost()
            return
        parts, self.body_parts = self.body_parts, None
        if parts:
            for p in parts:
                exchange.on_body(p)
        if self.body_done:
            exchange.on_body_end()


# What the server itself reads in a request header, by the name's spelling: looked up once per
# spelling (a dict hit), not lower-cased per header. Bounded, since names come from clients.
_PLAIN, _HOST, _TRANSFER_ENCODING, _CONTENT_LENGTH, _EXPECT, _UNDERSCORE = range(6)
_KINDS = {
    b"host": _HOST,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-length": _CONTENT_LENGTH,
    b"expect": _EXPECT,
}
_HEADER_KINDS_MAX = 4096
_header_kinds: dict[bytes, int] = {}


def _header_kind(name: bytes) -> int:
    # find(): `in` on bytes first tries the needle as an int
    kind = _UNDERSCORE if name.find(b"_") >= 0 else _KINDS.get(name.lower(), _PLAIN)
    if len(_header_kinds) < _HEADER_KINDS_MAX:
        _header_kinds[name] = kind
    return kind


class _Refuse(Exception):
    """Raised inside a parser callback to stop parsing a request we will not serve."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


SERVER = b"ando"  # the Server header of every response (nginx and APISIX name themselves too)
# the second, its Date value, the gateway's header lines, the same as (name, value) pairs
_date_cache: list[Any] = [0, b"", b"", []]


def _date_now() -> list[Any]:
    cache = _date_cache
    now = int(time.time())
    if cache[0] != now:
        date = formatdate(now, usegmt=True).encode()
        lines = b"Date: " + date + b"\r\nServer: " + SERVER + b"\r\n"
        cache[:] = (now, date, lines, [(b"Date", date), (b"Server", SERVER)])
    return cache


def gateway_lines() -> bytes:
    """`Date` and `Server` header lines as the gateway sends them on every response, its own
    and proxied ones: an upstream's are replaced, as nginx and APISIX do (the backend's software
    stays private, and RFC 9110 6.6.1 has a proxy add the Date an upstream left out).
    Formatted at most once per second."""
    return _date_now()[2]


def gateway_headers() -> list[tuple[bytes, bytes]]:
    """The same two headers as (name, value) pairs, for a response whose headers plugins see
    (shared: copy before changing it)."""
    return _date_now()[3]


def json_error(status: int, message: str) -> bytes:
    """The gateway's error body, APISIX's: {"error_msg": "404 Route Not Found"} and a newline
    (core.response.exit writes one after a table body)."""
    return orjson.dumps({"error_msg": message}, option=orjson.OPT_APPEND_NEWLINE)


class HttpConnection(asyncio.Protocol):
    """One client connection. Per-connection state lives here; per-request state in Request."""

    __slots__ = (
        "_closing",
        "_current",
        "_deadline",
        "_dispatching",
        "_head_bytes",
        "_header_bytes",
        "_header_lines",
        "_parsing",
        "_pending",
        "_read_paused",
        "_refused",
        "_responded",
        "_timer",
        "_timer_at",
        "_upgrading",
        "_url_parts",
        "client_addr",
        "client_port",
        "handler",
        "handler_data",
        "limits",
        "loop",
        "on_close",
        "parser",
        "request_class",
        "requests_served",
        "scheme",
        "server_port",
        "transport",
        "tunnel",
        "writing_paused",
    )

    def __init__(
        self,
        handler: RequestHandler,
        limits: Limits,
        *,
        scheme: str = "http",
        on_close: Callable[[HttpConnection], None] | None = None,
        request_class: type[Request] = Request,
    ) -> None:
        self.handler = handler
        # What requests are parsed into: the handler may want its own fields on them (the
        # gateway's requests carry their route and variables), at the cost of no extra object.
        self.request_class = request_class
        self.limits = limits
        self.scheme = scheme
        self.on_close = on_close
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._parsing: Request | None = None  # the request the parser is filling
        self._current: Request | None = None  # the request whose response is being sent
        self._dispatching = False
        self._pending: deque[Request] = deque()  # pipelined requests waiting their turn
        self._url_parts: list[bytes] = []
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_lines = 0
        self._read_paused = False
        self.writing_paused = False  # the client is not reading: flow control pauses the upstream
        self._closing = False
        self._refused = False  # a request was refused: nothing after it is read or parsed
        self._responded = False  # bytes of the current request's response were written
        self._upgrading: Request | None = None  # an Upgrade request waiting for its 101
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when self._timer fires (its when(), without the call)
        self._deadline: float | None = None
        self.tunnel: Exchange | None = None
        # Opaque to this module: the handler's per-connection memo (e.g. header lines that only
        # depend on the client address).
        self.handler_data: object = None
        self.requests_served = 0
        self.client_addr = ""
        self.client_port = 0
        self.server_port = 0

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client_addr, self.client_port = peer[0], peer[1]
        else:  # a unix socket
            self.client_addr, self.client_port = "unix:", 0
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.server_port = sock[1]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self._arm(self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.on_tunnel_data(data)
            return
        if self._closing or self._refused:
            return
        if self._upgrading is not None:
            self._hold_upgrade_bytes(data)
            return
        parsing = self._parsing
        in_head = parsing is None or parsing.method == ""
        if in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except _Refuse as r:
            self._refuse(r.status, r.message)
            return
        except httptools.HttpParserUpgrade as e:
            self._upgrade(data[e.args[0] :])
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refuse):
                self._refuse(cause.status, cause.message)
            else:  # a bug in a callback (ours, or an exchange's): fail this connection, loudly
                import logging

                logging.getLogger("ando.http").error("parser callback failed", exc_info=cause)
                self._refuse(500, "Internal Server Error")
            return
        except httptools.HttpParserError:
            # A malformed head, or a malformed body after the head was accepted (and maybe
            # forwarded): _refuse answers when it still can, and aborts the exchange.
            self._refuse(400, "bad request")
            return
        # llhttp buffers a header line of any size before reporting it: bound the raw bytes of
        # the head too (on_url and on_header count exactly; this catches a line that never ends).
        # Only bytes read before the head completed count (a body in the same read does not).
        if (
            in_head
            and self._parsing is not None
            and self._parsing.method == ""
            and self._head_bytes > self.limits.max_request_line + self.limits.max_header_size
        ):
            self._refuse(431, "request header fields too large")

    def eof_received(self) -> bool | None:
        # The client closed its side. As nginx does ("client prematurely closed connection"), a
        # request in flight is abandoned (its exchange hears on_client_lost, the upstream is
        # released): a FIN cannot be told from a full close, and abandoned requests must not
        # hold upstream connections. Returning None closes the transport.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for req in (self._current, *self._pending, self._parsing, self._upgrading):
            if req is not None:
                req.lost = True
                if req.exchange is not None:
                    req.exchange.on_client_lost()
        if self.tunnel is not None:
            self.tunnel.on_client_lost()
        self._current = self._parsing = self._upgrading = None
        self._pending.clear()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        ex = self.tunnel or (self._current.exchange if self._current is not None else None)
        if ex is not None:
            ex.on_client_pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        ex = self.tunnel or (self._current.exchange if self._current is not None else None)
        if ex is not None:
            ex.on_client_resume()

    # --- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._closing:
            # Pipelined after a response that closes the connection: never dispatched.
            raise _Refuse(400, "request after the connection closed")
        req = self.request_class()
        req.client_addr = self.client_addr
        req.client_port = self.client_port
        req.server_port = self.server_port
        req.scheme = self.scheme
        req.start = time.monotonic()  # not loop.time(): that is cached per iteration, in ms
        self._parsing = req
        self._url_parts.clear()
        self._header_lines = 0
        self._header_bytes = 0
        if self._current is None:
            self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        parts = self._url_parts
        parts.append(url)
        if len(parts) == 1:
            if len(url) > self.limits.max_request_line:
                raise _Refuse(414, "request line too long")
        elif sum(len(p) for p in parts) > self.limits.max_request_line:
            raise _Refuse(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._parsing
        assert req is not None
        # Counted per header (measured: cheaper than one join of all names and values at the
        # end for any usual head), so a refusal comes at the first header over the limit.
        limits = self.limits
        self._header_lines += 1
        if self._header_lines > limits.max_header_lines:
            raise _Refuse(431, "too many header lines")
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > limits.max_header_size:
            raise _Refuse(431, "request header fields too large")
        if req.method:
            # A trailer field, after a chunked body (the head set the method): counted above,
            # then dropped, as nginx does; a Host or Content-Length there must not change the
            # request already on its way (RFC 9110 6.5.1).
            return
        kind = _header_kinds.get(name)
        if kind is None:
            kind = _header_kind(name)
        # llhttp drops the OWS before a value, not the OWS after it (RFC 9110 5.5: not part of
        # the value): strip it where the value is interpreted.
        if kind:
            if kind == _HOST:
                if req.raw_host is not None:
                    raise _Refuse(400, "more than one Host header")
                req.raw_host = value.rstrip(b" \t")
            elif kind == _TRANSFER_ENCODING:
                if req.chunked or value.rstrip(b" \t").lower() != b"chunked":
                    raise _Refuse(501, "unsupported transfer encoding")
                req.chunked = True
            elif kind == _CONTENT_LENGTH:
                value = value.rstrip(b" \t")
                req.content_length = int(value) if value.isdigit() else -1
            elif kind == _EXPECT:
                if value.rstrip(b" \t").lower() != b"100-continue":
                    raise _Refuse(417, "unsupported expectation")
                req.expect_continue = True
            else:
                raise _Refuse(400, "underscore in a header name")
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Refuse(
                505 if version.startswith(("2", "3")) else 400, "unsupported HTTP version"
            )
        req.version = version
        limits = self.limits
        req.method = parser.get_method().decode("ascii", "replace")
        if req.method == "CONNECT":
            raise _Refuse(405, "CONNECT is not allowed")
        if version == "1.0":
            if req.chunked:
                raise _Refuse(400, "Transfer-Encoding on HTTP/1.0")
            req.expect_continue = False  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client
        if req.content_length == -1:
            raise _Refuse(400, "invalid Content-Length")
        req.has_body = req.chunked or bool(req.content_length)
        max_body = limits.max_body_size
        if max_body and req.content_length is not None and req.content_length > max_body:
            raise _Refuse(413, "request body too large")
        parts = self._url_parts
        target = parts[0] if len(parts) == 1 else b"".join(parts)
        req.target = target
        try:
            req.path, req.query = split_target(target)
        except BadTarget as e:
            raise _Refuse(e.status, e.reason) from None
        raw_host = req.raw_host
        if raw_host is None:
            if version == "1.1":
                raise _Refuse(400, "missing Host header")
        else:
            host = parse_host(raw_host)
            if host is None:
                raise _Refuse(400, "invalid Host header")
            req.host = host
        if target[:1] != b"/":
            if req.path == "*":
                if req.method != "OPTIONS":
                    raise _Refuse(400, "asterisk-form target needs OPTIONS")
            else:
                # RFC 9112 3.2.2: the authority of an absolute-form target replaces Host, for
                # routing and for the upstream alike.
                authority = _authority(target)
                host = parse_host(authority)
                if host is None:
                    raise _Refuse(400, "invalid host in request-target")
                req.raw_host, req.host = authority, host
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        self._head_bytes = 0
        if self._current is None:
            self._deadline = None  # the header timeout no longer applies
            self._start(req)
        else:
            self._pending.append(req)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        assert req is not None
        req.body_size += len(body)
        max_body = self.limits.max_body_size
        if max_body and req.body_size > max_body:
            raise _Refuse(413, "request body too large")
        if req.exchange is not None:
            req.exchange.on_body(body)
        else:
            if req.body_parts is None:
                req.body_parts = []
            req.body_parts.append(body)
            if req.body_size > PIPELINE_BUFFER:
                self._pause_reading()

    def on_message_complete(self) -> None:
        req = self._parsing
        assert req is not None
        req.body_done = True
        self._parsing = None
        if req.exchange is not None:
            req.exchange.on_body_end()
        if self._current is None and not self._pending and not self._closing:
            self._arm(self.limits.keepalive_timeout)

    # --- what the handler and exchange call --------------------------------------------------

    def _start(self, req: Request) -> None:
        """Hand `req` to the handler. A loop, not recursion: a handler that answers at once
        finishes the request, and the next pipelined one starts here, not deeper in the stack."""
        self._current = req
        self._responded = False
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while True:
                running = self._current
                if running is None:
                    return
                if running.refusal is not None:  # refused while an earlier response was sent
                    status, message = running.refusal
                    self.send_simple(running, status, json_error(status, message), close=True)
                    return
                try:
                    self.handler.on_request(self, running)
                except Exception:  # a bug in a handler fails this request, never the worker
                    import logging

                    logging.getLogger("ando.http").exception("request handler failed")
                    if self._current is running:
                        self.send_simple(
                            running, 500, json_error(500, "500 Internal Server Error"), close=True
                        )
                if self._current is running:
                    return  # still in flight; its exchange will call finish()
        finally:
            self._dispatching = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self._responded = True
            self.transport.write(data)

    def send_simple(
        self,
        req: Request,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | tuple[()] = (),
        *,
        content_type: bytes = b"application/json",
        close: bool = False,
        own_lines: bool = True,
    ) -> int:
        """A complete response made by the gateway itself (errors, redirects, mocks).
        Returns the bytes written. `own_lines=False`: `headers` already hold Date and Server
        (gateway_headers, maybe changed by plugins)."""
        keep = req.keep_alive and not close and (req.body_done or not req.has_body)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status).encode())]
        if own_lines:
            head.append(gateway_lines())
        if status in (204, 304):
            body = b""  # these never have a body: a Content-Length would make the client wait
        else:
            head.append(b"Content-Type: " + content_type + b"\r\n")
            head.append(b"Content-Length: %d\r\n" % len(body))
        for k, v in headers:
            head.append(k + b": " + v + b"\r\n")
        if not keep:
            head.append(b"Connection: close\r\n")
        elif req.version == "1.0":
            head.append(b"Connection: keep-alive\r\n")
        head.append(b"\r\n")
        if req.method != "HEAD" and status not in (204, 304):
            head.append(body)
        data = b"".join(head)
        self.write(data)
        self.finish(req, keep)
        return len(data)

    def send_continue(self) -> None:
        """The interim 100 response (not the start of the final response)."""
        if self.transport is not None and not self._closing:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def finish(self, req: Request, keep_alive: bool) -> None:
        """The response to `req` is complete: serve the next pipelined request, idle, or close."""
        if self._current is not req:
            return
        self._current = None
        self.requests_served += 1
        if not keep_alive or not req.keep_alive or self._closing:
            self.close()
            return
        if req.has_body and not req.body_done:
            # The response went out before the request body was read (an error, or a plugin's
            # answer): the rest of the body would be parsed as a request. Close instead.
            self.close()
            return
        if self._upgrading is req:
            # An Upgrade the upstream declined: what followed the request was never HTTP.
            self.close()
            return
        if self._pending:
            nxt = self._pending.popleft()
            if not self._pending:
                self._resume_reading()
            self._start(nxt)
            return
        if self._read_paused:
            self._resume_reading()
        self._arm(
            self.limits.keepalive_timeout if self._parsing is None else self.limits.header_timeout
        )

    def start_tunnel(self, exchange: Exchange) -> None:
        """After a 101: every byte from now on is raw, both ways."""
        self.tunnel = exchange
        self._deadline = None
        req, self._upgrading = self._upgrading, None
        if req is not None and req.body_parts and req.exchange is None:
            parts, req.body_parts = req.body_parts, None
            for p in parts:
                exchange.on_tunnel_data(p)
        self._resume_reading()

    def pause_reading(self) -> None:
        self._pause_reading()

    def resume_reading(self) -> None:
        self._resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    def begin_drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in flight."""
        if self._current is None and self._parsing is None and self.tunnel is None:
            self.close()
        elif self._current is not None:
            (self._pending[-1] if self._pending else self._current).keep_alive = False

    @property
    def idle(self) -> bool:
        return self._current is None and self._parsing is None and self.tunnel is None

    @property
    def state(self) -> str:
        """nginx's stub_status states: writing (a request being served, or a tunnel), reading
        (a request head arriving), waiting (an idle keep-alive connection)."""
        if self._current is not None or self.tunnel is not None:
            return "writing"
        return "reading" if self._parsing is not None else "waiting"

    # --- internals --------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request we will not serve, then close: the stream can no longer be trusted.

        Nothing after it is read. A response already in flight for an earlier request is
        finished first (and the pipelined requests before this one are served): this one's
        answer waits its turn. When the refused request's head was already handed over (a body
        that breaks, or grows too large, after its head was forwarded), its exchange is told the
        client is gone, so the upstream connection is aborted and never reused.
        """
        if self._closing or self._refused:
            return
        self._refused = True
        self._pause_reading()
        req = self._parsing
        if req is None:
            req = self.request_class()
        if req.method == "":
            req.method = "GET"
        req.keep_alive = False
        current = self._current
        if current is not None and current is not req:
            req.refusal = (status, f"{status} {message}")
            if not self._pending or self._pending[-1] is not req:  # not queued yet
                self._pending.append(req)
            return
        req.lost = True
        ex = req.exchange
        if current is req and self._responded:
            # Its response has begun: there is no way to report an error but cutting it short.
            if ex is not None:
                ex.on_client_lost()
            self.abort()
            return
        self._current = req
        self.send_simple(req, status, json_error(status, f"{status} {message}"), close=True)
        req.refusal = (status, message)  # what the client got: an exchange logs it, now or later
        if ex is not None:
            ex.on_client_lost()

    def _upgrade(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade request: what follows is not HTTP. Hold it for
        the exchange until the upstream answers 101 (or declines, and the connection closes)."""
        req = self._pending[-1] if self._pending else self._current
        if req is None or not req.upgrade:
            # Already answered (the handler refused it at once): nothing after it can be parsed.
            self.close()
            return
        self._upgrading = req
        if rest:
            self._hold_upgrade_bytes(rest)

    def _hold_upgrade_bytes(self, data: bytes) -> None:
        req = self._upgrading
        assert req is not None
        if req.exchange is not None:
            req.exchange.on_tunnel_data(data)  # the exchange holds them until the 101
            return
        if req.body_parts is None:
            req.body_parts = []
        req.body_parts.append(data)
        if sum(len(p) for p in req.body_parts) > UPGRADE_HOLD:
            self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._read_paused
            and self.transport is not None
            and not self._closing
            and not self._refused
        ):
            self._read_paused = False
            self.transport.resume_reading()

    def _arm(self, timeout: float) -> None:
        """Set the one deadline this connection has. The timer is re-armed lazily when the
        deadline moves later, and moved when it comes earlier (a 75 s idle timer must not delay
        a 60 s header timeout that starts later, nor a short idle timer after a long header one)."""
        deadline = self.loop.time() + timeout
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closing:
            return
        now = self.loop.time()
        if now < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        if self._parsing is not None and self._current is None:
            self._refuse(408, "request header timeout")
        elif self._current is None and not self._pending:
            self.close()  # idle keep-alive connection
