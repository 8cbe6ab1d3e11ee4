"""One proxied request: pick a node, send the request, stream the response back, retry on failure.

The exchange sits between the client connection (ando/http/server.py) and an upstream connection
(ando/http/upstream.py) and relays events between them with no coroutine per request: bodies flow
chunk by chunk in both directions, and each side's write buffer filling up pauses reading on the
other side, so a 1 GB transfer keeps memory flat.

The client's body is not read until an upstream connection is ready, so a failed connect can move
to the next node without losing anything. Once body bytes went out, a retry needs them again:
idempotent requests keep up to REPLAY_LIMIT bytes for that; beyond it a failure after sending is
final (502/504). A non-idempotent request (POST, PATCH, ...) is never sent twice: once its head went
out to a node, a failure is final, as nginx's `proxy_next_upstream` without `non_idempotent`.
A pooled keep-alive connection that turns out to be dead before any response byte (the upstream
closed it while idle, as we reused it) costs one more try on the same node over a new connection,
not an attempt (nginx gives a failed cached connection an extra try too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

from ando.http.server import (
    HttpConnection,
    gateway_lines,
    json_error,
    reason_phrase,
)
from ando.http.upstream import UpstreamConnection, open_connection
from ando.plugins.context import RequestContext
from ando.proxy.balancer import NOTHING_TRIED, Node
from ando.proxy.compiled import RouteRuntime, UpstreamRuntime
from ando.proxy.health import HTTP_FAILURE, TCP_FAILURE, TIMEOUT
from ando.proxy.pipeline import PluginFailed, filter_body, filter_head
from ando.proxy.variables import Vars

if TYPE_CHECKING:
    from ando.proxy.gateway import Gateway

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
REPLAY_LIMIT = 64 * 1024
TUNNEL_HOLD_LIMIT = 64 * 1024
# While the client does not take the response (its write buffer is full and the upstream paused),
# the upstream read timeout does not apply; this one does, as nginx's send_timeout.
CLIENT_SEND_TIMEOUT = 60.0
# Likewise while a request body streams: the upstream send timeout runs only while the upstream
# does not take what we have (its write buffer is full); waiting on the client for more of the
# body is bounded by this one, as nginx's client_body_timeout (then 408, not 504).
CLIENT_BODY_TIMEOUT = 60.0

# Hop-by-hop headers (RFC 9110 7.6.1) end at this hop, in both directions.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers never forwarded as received: hop-by-hop ones, and those the gateway sets itself.
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
    # Set by the gateway once an auth plugin identified a consumer; never taken from a client.
    b"x-consumer-username",
    b"x-consumer-custom-id",
    b"x-credential-identifier",
}

# The start of the usual status lines, made once.
_STATUS_PREFIX = {code: b"HTTP/1.1 %d " % code for code in range(200, 600)}

# States
_CONNECTING, _SENDING, _WAITING, _RESPONDING, _TUNNEL, _DONE = range(6)


# How a failed attempt counts for passive health checks: a response that breaks HTTP is an
# HTTP failure, a read past its deadline a timeout, anything else a failed connection.
_PASSIVE_OUTCOME = {"timeout": TIMEOUT, "invalid": HTTP_FAILURE}


def _target_bytes(uri: str) -> bytes:
    """A plugin's upstream uri as a request-target: never with bytes that would break the
    request line (spaces, controls), which are percent-encoded."""
    raw = uri.encode("utf-8")
    if any(b <= 0x20 or b == 0x7F for b in raw):
        raw = b"".join(b"%%%02X" % b if (b <= 0x20 or b == 0x7F) else bytes((b,)) for b in raw)
    return raw if raw.startswith(b"/") else b"/" + raw


def _connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


# Header names classified once per spelling, not lower-cased per request: a name seen before is
# one dict lookup. Bounded, since names come from clients and upstreams.
_PLAIN, _DROP, _CONNECTION, _XFF, _TE, _UPGRADE, _LENGTH, _GATEWAY = range(8)
_KIND_CACHE_MAX = 4096
_request_kinds: dict[bytes, int] = {}
_response_kinds: dict[bytes, int] = {}
# Connection header values naming no other header (the usual ones) need no filtering pass.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade", b"te"})
_token_cache: dict[bytes, frozenset[bytes]] = {}


# Lower-case name -> kind; any other name is _PLAIN.
_REQUEST_KINDS = {
    **dict.fromkeys(_DROP_REQUEST, _DROP),
    b"connection": _CONNECTION,
    b"x-forwarded-for": _XFF,
}
_RESPONSE_KINDS = {
    **dict.fromkeys(_HOP_BY_HOP, _DROP),
    b"connection": _CONNECTION,
    b"transfer-encoding": _TE,
    b"upgrade": _UPGRADE,
    b"content-length": _LENGTH,
    # the gateway's own (server.gateway_lines): an upstream's are replaced, as nginx does
    b"date": _GATEWAY,
    b"server": _GATEWAY,
}


def _classify(name: bytes, cache: dict[bytes, int], kinds: dict[bytes, int]) -> int:
    """The slow path of the per-spelling caches below (the hot path inlines `cache.get`)."""
    kind = kinds.get(name.lower(), _PLAIN)
    if len(cache) < _KIND_CACHE_MAX:
        cache[name] = kind
    return kind


def _named_by_connection(value: bytes) -> frozenset[bytes]:
    """Headers a Connection value names beyond the hop-by-hop ones: usually none."""
    found = _token_cache.get(value)
    if found is None:
        found = frozenset(_connection_tokens(value) - _PLAIN_CONNECTION)
        if len(_token_cache) < _KIND_CACHE_MAX:
            _token_cache[value] = found
    return found


def _forwarded_lines(req: Vars, client: bytes, plugin_set: dict[bytes, bytes]) -> bytes:
    """X-Real-IP and X-Forwarded-Proto, -Port and -Host, with the values a plugin set (proxy-
    rewrite) in place of the gateway's, in the order the memoized lines have."""
    get = plugin_set.get
    return (
        b"X-Real-IP: "
        + client
        + b"\r\nX-Forwarded-Proto: "
        + get(b"x-forwarded-proto", req.scheme.encode())
        + b"\r\nX-Forwarded-Port: "
        + get(b"x-forwarded-port", b"%d" % req.server_port)
        + b"\r\nX-Forwarded-Host: "
        + get(b"x-forwarded-host", req.host.encode())
        + b"\r\n"
    )


def _lines_without(
    headers: list[tuple[bytes, bytes]],
    named: frozenset[bytes],
    cache: dict[bytes, int],
    kinds: dict[bytes, int],
    gateway: bool = False,
) -> list[bytes]:
    """The header lines (as pieces) of the headers that are forwarded as they are (kind _PLAIN,
    and _GATEWAY when `gateway`) and not named by Connection: the rare
    second pass when a Connection value names headers."""
    out: list[bytes] = []
    for name, value in headers:
        kind = cache.get(name)
        if kind is None:
            kind = _classify(name, cache, kinds)
        if (kind == _PLAIN or (gateway and kind == _GATEWAY)) and name.lower() not in named:
            out += (name, b": ", value, b"\r\n")
    return out


class ProxyExchange:
    __slots__ = (
        "_client_paused",
        "_held",
        "_replay",
        "_replay_size",
        "attempts",
        "body_done",
        "body_started",
        "bytes_sent",
        "chunk_in",
        "chunk_out",
        "close_after",
        "conn",
        "counted",
        "deadline",
        "gateway",
        "keep_alive",
        "no_body",
        "node",
        "pctx",
        "pending_head",
        "pool_key",
        "req",
        "resp_framed",
        "reused",
        "route",
        "sent",
        "started",
        "state",
        "status",
        "timeout",
        "tracked",
        "tried",
        "up",
        "upgrade",
        "upstream",
        "upstream_latency",
        "upstream_start",
        "upstream_status",
    )

    def __init__(
        self,
        gateway: Gateway,
        conn: HttpConnection,
        req: Vars,
        route: RouteRuntime,
        upstream: UpstreamRuntime,
        pctx: RequestContext | None = None,
    ) -> None:
        self.gateway = gateway
        self.pctx = pctx  # the plugins' context; None on a route without plugins
        # The route's own timeouts, else the upstream's: a plugin's choice of upstream
        # (traffic-split) brings its own.
        self.timeout = route.timeout
        if upstream is not route.upstream:
            self.timeout = route.record.timeout or upstream.timeout or route.timeout
        self.conn = conn
        self.req = req
        self.route = route
        self.upstream = upstream
        self.up: UpstreamConnection | None = None
        self.node: Node | None = None
        self.tried: AbstractSet[Node] = NOTHING_TRIED  # a real set only after a failure
        self.attempts = 0
        self.state = _CONNECTING
        self.started = 0.0  # the first attempt's start
        self.deadline: float | None = None
        self.tracked = False
        self.body_started = False
        self.body_done = not req.has_body
        self.sent = False  # a request head went out to a node (non-idempotent: no retry then)
        self.reused = False  # this attempt's connection came from the keep-alive pool
        self.counted = False  # balancer.on_start was called for self.node, on_finish not yet
        self.chunk_in = req.chunked
        self.chunk_out = False
        self.close_after = False
        self.no_body = False
        self.resp_framed = True
        self.keep_alive = True
        self.status = 0
        self.pending_head: bytes | None = None
        self.upstream_status = 0
        self.bytes_sent = 0
        self.upstream_start = 0.0
        self.upstream_latency: float | None = None
        # A body received so far, kept for a retry (idempotent requests with a body only).
        self._replay: list[bytes] | None = [] if req.has_body and req.method in IDEMPOTENT else None
        self._replay_size = 0
        self._client_paused = False
        self.upgrade = req.upgrade and route.websocket
        self._held: list[bytes] | None = [] if req.upgrade else None

    # --- starting an attempt ----------------------------------------------------------------

    def start(self) -> None:
        req = self.req
        if not req.has_body:
            # Nothing to hold back: take the request now, so that the client going away and
            # its flow control (pause/resume) reach this exchange from the start. Bytes that
            # followed an Upgrade request (queued by the server while no exchange existed) are
            # held for the tunnel, never parsed as a body.
            parts, req.body_parts = req.body_parts, None
            if parts and req.upgrade:
                self._held = [*(self._held or ()), *parts]
            req.attach(self)
            if self.state == _DONE:  # the client was already gone (attach told us)
                return
        self._attempt()

    def _attempt(self) -> None:
        upstream = self.upstream
        node = upstream.only_node
        if node is None or self.tried:
            node = upstream.balancer.pick(self.req, self.tried)
            if node is None:
                if self.attempts == 0:
                    self._respond_error(503, "503 Service Unavailable: no upstream node available")
                else:
                    self._respond_error(502, "502 Bad Gateway")
                return
            self.pool_key = upstream.pool_keys[node]
        else:
            self.pool_key = upstream.only_pool_key
        self.node = node
        self.req.upstream_addr = node.addr
        self.upstream_start = time.monotonic()
        if not self.attempts:
            self.started = self.upstream_start  # what retry_timeout counts from
        self.attempts += 1
        up = self.gateway.pool.acquire(self.pool_key)
        if up is not None:
            self.reused = True
            self._use(up)
            return
        self._connect(node)

    def _connect(self, node: Node) -> None:
        self.reused = False
        self.state = _CONNECTING
        task = self.gateway.loop.create_task(
            open_connection(
                self.gateway.loop,
                node.host,
                node.port,
                node.addr,
                self.timeout.connect,
                self.upstream.tls,
                node.host,
            )
        )
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task.cancelled():
            exc: BaseException | None = ConnectionError("cancelled")
        else:
            exc = task.exception()
        if self.state == _DONE:
            if exc is None:
                self.gateway.pool.release(self.pool_key, task.result(), self.upstream.pool)
            return
        if exc is not None:
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            self._attempt_failed(
                kind, f"connect to {self.node.addr if self.node else '?'}: {exc!r}"
            )
            return
        self._use(task.result())

    def _use(self, up: UpstreamConnection) -> None:
        if self.req.lost:
            # Refused or abandoned while we were connecting: not one byte of it goes upstream.
            assert self.node is not None
            self.gateway.pool.release(self.pool_key, up, self.upstream.pool)
            self.on_client_lost()
            return
        self.up = up
        up.listener = self
        up.requests += 1
        up.expect_head = self.req.method == "HEAD" and (
            self.pctx is None or self.pctx.upstream_method in (None, "HEAD")
        )
        assert self.node is not None
        if not self.counted and self.upstream.balancer.tracks:
            self.upstream.balancer.on_start(self.node)
            self.counted = True
        self.state = _SENDING
        up.write(self._request_head())
        self.sent = True
        req = self.req
        if req.has_body:
            if req.exchange is None:
                if req.expect_continue and not req.body_done and not req.body_parts:
                    self.conn.send_continue()
                req.attach(self)  # replays what the server buffered, then streams
                if self.state == _DONE:  # the client left while we were connecting
                    return
            else:
                # A retry: what this exchange received so far goes out again (the rest streams).
                if self._replay:
                    for part in self._replay:
                        up.write(self._frame(part))
                if self.body_done:
                    self._send_body_end()
            self.conn.resume_reading()
        if self.body_done or not req.has_body:
            # A request without a body is sent with its head (its on_body_end, still to come
            # when the head and the end arrived in one read, finds nothing to do).
            self.state = _WAITING
            self._arm(self.timeout.read)
        else:
            self._arm(self.timeout.send if up.writing_paused else CLIENT_BODY_TIMEOUT)
        # Bytes after an Upgrade request stay in self._held until the 101 arrives.

    def _request_head(self) -> bytes:
        req = self.req
        up = self.upstream
        node = self.node
        assert node is not None
        pctx = self.pctx
        target = req.path.encode()
        if req.query:
            target += b"?" + req.query
        if req.path == "*":
            target = b"*"
        method = req.method
        if pctx is not None:
            if pctx.upstream_uri is not None:
                target = _target_bytes(pctx.upstream_uri)
            if pctx.upstream_method is not None:
                method = pctx.upstream_method
        lines = [method.encode() + b" " + target + b" HTTP/1.1\r\n"]
        # Host: a plugin's rewrite, else by pass_host.
        if pctx is not None and pctx.upstream_host is not None:
            host = pctx.upstream_host.encode("latin-1")
        elif up.pass_host == "rewrite" and up.upstream_host:
            host = up.upstream_host
        elif up.pass_host == "node" or req.raw_host is None:
            host = up.node_hosts[node]
        else:
            host = req.raw_host
        lines.append(b"Host: " + host + b"\r\n")
        named: frozenset[bytes] | None = None
        xff: bytes | None = None
        # Pieces, joined once at the end: no bytes made per header line.
        for name, value in req.headers:
            kind = _request_kinds.get(name)
            if kind is None:
                kind = _classify(name, _request_kinds, _REQUEST_KINDS)
            if kind:
                if kind == _CONNECTION:
                    found = _token_cache.get(value)
                    if found is None:
                        found = _named_by_connection(value)
                    if found:  # every Connection header counts
                        named = found if named is None else named | found
                elif kind == _XFF:
                    xff = value if xff is None else xff + b", " + value
                continue
            lines += (name, b": ", value, b"\r\n")
        if named:  # drop the headers Connection names (it may come after them)
            lines[2:] = _lines_without(req.headers, named, _request_kinds, _REQUEST_KINDS)
        fwd = self.conn.handler_data
        if fwd is None or fwd[3] is not req.client_addr:
            # Per connection: the client's address, scheme and port do not change (unless
            # real-ip replaced the address for this request), nor, usually, the Host.
            client = req.client_addr.encode()
            fwd = self.conn.handler_data = (
                client,
                b"X-Forwarded-For: " + client + b"\r\n",
                b"X-Real-IP: "
                + client
                + b"\r\n"
                + b"X-Forwarded-Proto: "
                + req.scheme.encode()
                + b"\r\n"
                + b"X-Forwarded-Port: %d\r\n" % req.server_port,
                req.client_addr,
                None,
                b"",
            )
        if xff:
            lines.append(b"X-Forwarded-For: " + xff + b", " + fwd[0] + b"\r\n")
        else:
            lines.append(fwd[1])
        if pctx is None or pctx.forwarded is None:
            lines.append(fwd[2])
            host_name = req.host  # one str per spelling (parse_host's cache): by identity
            if fwd[4] is not host_name:
                host_line = b"X-Forwarded-Host: " + host_name.encode() + b"\r\n"
                fwd = self.conn.handler_data = (*fwd[:4], host_name, host_line)
            lines.append(fwd[5])
        else:
            lines.append(_forwarded_lines(req, fwd[0], pctx.forwarded))
        if pctx is not None and pctx.consumer is not None:
            consumer = pctx.consumer
            lines.append(b"X-Consumer-Username: " + consumer.username.encode() + b"\r\n")
            # APISIX's attach_consumer: the consumer's labels.custom_id (a label value: no
            # whitespace, so no CR or LF)
            custom_id = consumer.labels.get("custom_id")
            if custom_id is not None:
                lines.append(b"X-Consumer-Custom-ID: " + str(custom_id).encode() + b"\r\n")
            if pctx.credential_id:
                lines.append(b"X-Credential-Identifier: " + pctx.credential_id.encode() + b"\r\n")
        if self.upgrade:
            lines.append(b"Connection: upgrade\r\n")
            upgrade = req.header(b"upgrade")
            if upgrade is not None:
                lines.append(b"Upgrade: " + upgrade + b"\r\n")
        if req.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif req.content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % req.content_length)
        lines.append(b"\r\n")
        return b"".join(lines)

    def _frame(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunk_in else data

    # --- client side events -----------------------------------------------------------------

    def on_body(self, data: bytes) -> None:
        if self.state == _DONE:
            return
        self.body_started = True
        if self._replay is not None:
            self._replay_size += len(data)
            if self._replay_size > REPLAY_LIMIT:
                self._replay = None
            else:
                self._replay.append(data)
        up = self.up
        if up is None:  # between attempts: nothing to send to yet
            self.conn.pause_reading()
            return
        up.write(self._frame(data))
        if up.writing_paused:
            self.conn.pause_reading()
            self._arm(self.timeout.send)  # waiting on the upstream to take it
        else:
            self._arm(CLIENT_BODY_TIMEOUT)  # waiting on the client for more

    def on_body_end(self) -> None:
        self.body_done = True
        if self.state == _DONE or self.up is None:
            return
        if self.chunk_in:
            self._send_body_end()
        if self.state == _SENDING:
            self.state = _WAITING
            self._arm(self.timeout.read)

    def _send_body_end(self) -> None:
        if self.chunk_in and self.up is not None:
            self.up.write(b"0\r\n\r\n")

    def on_client_pause(self) -> None:
        self._client_paused = True
        if self.up is not None:
            self.up.pause_reading()
        if self.state == _RESPONDING:
            # Waiting on the client now, not on the upstream.
            self._arm(CLIENT_SEND_TIMEOUT)

    def on_client_resume(self) -> None:
        self._client_paused = False
        if self.up is not None:
            self.up.resume_reading()
        if self.state == _RESPONDING:
            self._arm(self.timeout.read)

    def on_client_lost(self) -> None:
        if self.state == _DONE:
            return
        if self.status == 0:
            refusal = self.req.refusal  # refused by the server (e.g. 413 mid-body), else gone
            self.status = refusal[0] if refusal is not None else 499  # nginx's "client closed"
        self._discard_upstream()
        self._done(keep_alive=False, failed=False)

    def on_tunnel_data(self, data: bytes) -> None:
        if self.state == _TUNNEL:
            if self.up is not None:
                self._arm(self.timeout.read)
                self.up.write(data)
                if self.up.writing_paused:
                    self.conn.pause_reading()
            return
        # Bytes after an Upgrade request: held until the upstream answers 101.
        if self._held is None:
            self._held = []
        self._held.append(data)
        if sum(len(p) for p in self._held) > TUNNEL_HOLD_LIMIT:
            self.conn.pause_reading()

    # --- upstream side events ---------------------------------------------------------------

    def on_upstream_pause(self) -> None:
        self.conn.pause_reading()
        if self.state == _SENDING:
            self._arm(self.timeout.send)

    def on_upstream_resume(self) -> None:
        self.conn.resume_reading()
        if self.state == _SENDING:
            self._arm(CLIENT_BODY_TIMEOUT)

    def on_upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.upstream_status = status
        self.upstream_latency = time.monotonic() - self.upstream_start
        health = self.upstream.health
        if health is not None:
            health.passive_status(self.node, status)  # type: ignore[arg-type]
        req = self.req
        if status == 101 and not self.upgrade:
            # An upgrade nobody asked for (or not allowed on this route): refuse it.
            self._discard_upstream()
            self._respond_error(502, "502 Bad Gateway: unexpected protocol switch")
            return
        self.state = _RESPONDING
        pctx = self.pctx
        # Whether `headers` hold the Date and Server to send: only when a plugin took them
        # (ResponseHead.take_date_server); else the upstream's are dropped for the gateway's.
        date_server = False
        if (
            pctx is not None
            and status != 101
            and (pctx.response_headers or pctx.chain.header_filter)
        ):
            try:
                # `headers` is this response's own list (the upstream parser made it): no copy
                head = filter_head(pctx, status, headers)
                new_status, headers, date_server = head.status, head.headers, head.date_server
            except PluginFailed as e:
                self.gateway.report_plugin_failure(e, pctx)
                self._discard_upstream()
                self.state = _WAITING
                self._respond_error(500, "500 Internal Server Error", filters=False)
                return
            if new_status != status:
                status, reason = new_status, b""
        self.status = status
        prefix = _STATUS_PREFIX.get(status) or b"HTTP/1.1 %d " % status
        out = [prefix, reason or reason_phrase(status).encode(), b"\r\n"]
        named: frozenset[bytes] | None = None
        length: bytes | None = None
        chunked = False
        upgrade_value: bytes | None = None
        for name, value in headers:
            kind = _response_kinds.get(name)
            if kind is None:
                kind = _classify(name, _response_kinds, _RESPONSE_KINDS)
            if kind:
                # Content-Length goes out below, where the framing is decided. It and
                # Transfer-Encoding are the upstream's: plugins cannot change them (context.py).
                if kind == _LENGTH:
                    length = value
                elif kind == _CONNECTION:
                    found = _token_cache.get(value)
                    if found is None:
                        found = _named_by_connection(value)
                    if found:  # every Connection header counts
                        named = found if named is None else named | found
                elif kind == _GATEWAY:
                    if date_server:
                        out += (name, b": ", value, b"\r\n")
                elif kind == _TE:
                    chunked = b"chunked" in value.lower()
                elif kind == _UPGRADE:
                    upgrade_value = value
                continue
            out += (name, b": ", value, b"\r\n")  # pieces, joined once below
        if named:  # out[:3] is the status line
            out[3:] = _lines_without(headers, named, _response_kinds, _RESPONSE_KINDS, date_server)
        if not date_server:
            out.append(gateway_lines())
        if status == 101:
            out.append(b"Connection: upgrade\r\n")
            if upgrade_value is not None:
                out.append(b"Upgrade: " + upgrade_value + b"\r\n")
            out.append(b"\r\n")
            head = b"".join(out)
            self.bytes_sent += len(head)
            self.conn.write(head)
            return
        self.no_body = req.method == "HEAD" or status in (204, 304)
        self.resp_framed = self.no_body or length is not None or chunked
        if pctx is not None and pctx.chain.body_filter and not self.no_body:
            pctx.status = status  # what body filters read (filter_head set it, when it ran)
            length = None  # filters may change the body: its length is known only at the end
        keep = req.keep_alive and not self.gateway.draining
        if self.no_body or (length is not None and not chunked):
            if length is not None and status != 204:  # HEAD's, 304's: the upstream's as it is
                out += (b"Content-Length: ", length, b"\r\n")
        elif req.version == "1.1":
            self.chunk_out = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep = False  # an HTTP/1.0 client: the end of the body is the end of the connection
            self.close_after = True
        if req.upgrade and not self.upgrade:
            keep = False  # bytes after the Upgrade request were never HTTP we could parse
        if not keep:
            out.append(b"Connection: close\r\n")
        elif req.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        self.keep_alive = keep
        out.append(b"\r\n")
        head = b"".join(out)
        self.bytes_sent += len(head)
        # Held until the body (usually in the same read) or the end of this read: one write,
        # one syscall, for a whole small response.
        self.pending_head = head

    def on_upstream_flush(self) -> None:
        """An upstream read is fully parsed and the response goes on: don't sit on the head,
        and give the upstream the read timeout again (once per read, not per callback; a
        response that ended within the read never gets here)."""
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            self.conn.write(head)
        if self.state == _RESPONDING and not self._client_paused:
            self._arm(self.timeout.read)

    def on_upstream_body(self, data: bytes) -> None:
        if self.state != _RESPONDING or self.no_body:
            return
        pctx = self.pctx
        if pctx is not None and pctx.chain.body_filter:
            data = self._filter_body(data, False)
            if not data:
                return
        if self.chunk_out:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.bytes_sent += len(data)
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            data = head + data
        self.conn.write(data)  # may pause the client side (on_client_pause re-arms the deadline)
        if self.conn.writing_paused and self.up is not None:
            self.up.pause_reading()

    def _filter_body(self, data: bytes, eof: bool) -> bytes:
        pctx = self.pctx
        assert pctx is not None
        try:
            return filter_body(pctx, data, eof)
        except PluginFailed as e:
            # The head may be out already: all that is left is to cut the response short.
            self.gateway.report_plugin_failure(e, pctx)
            self._discard_upstream()
            self.conn.abort()
            self._done(keep_alive=False, failed=True)
            return b""

    def _filter_tail(self) -> None:
        """body_filter's last call (eof); what it returns goes out before the body ends."""
        pctx = self.pctx
        if pctx is not None and pctx.chain.body_filter and not self.no_body:
            tail = self._filter_body(b"", True)
            if self.state != _RESPONDING:
                return
            if tail:
                self.pending_head, head = None, self.pending_head
                self.bytes_sent += len(tail)
                if self.chunk_out:
                    tail = b"%x\r\n%s\r\n" % (len(tail), tail)
                self.conn.write(head + tail if head else tail)

    def on_upstream_done(self, reusable: bool) -> None:
        if self.state != _RESPONDING:
            return
        pctx = self.pctx
        if pctx is not None and pctx.chain.body_filter:
            self._filter_tail()
            if self.state != _RESPONDING:
                return
        head, self.pending_head = self.pending_head, None
        if self.chunk_out:
            self.conn.write(head + b"0\r\n\r\n" if head else b"0\r\n\r\n")
            self.bytes_sent += 5
        elif head is not None:
            self.conn.write(head)
        up, self.up = self.up, None
        if up is not None:
            if reusable and self.body_done:
                self.gateway.pool.release(self.pool_key, up, self.upstream.pool)
            else:
                up.close()
        self._done(keep_alive=self.keep_alive, failed=False)

    def on_upstream_upgrade(self, rest: bytes) -> None:
        if not self.upgrade or self.state == _DONE:
            self._discard_upstream()
            return
        self.state = _TUNNEL
        # As nginx: a tunnel idle (no byte either way) for the read timeout is closed.
        self._arm(self.timeout.read)
        self.conn.start_tunnel(self)
        held, self._held = self._held, None
        if held and self.up is not None:
            for part in held:
                self.up.write(part)
        if rest:
            self.bytes_sent += len(rest)
            self.conn.write(rest)

    def on_upstream_tunnel_data(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        self._arm(self.timeout.read)
        self.conn.write(data)
        if self.conn.writing_paused and self.up is not None:
            self.up.pause_reading()

    def on_upstream_error(self, message: str) -> None:
        if self.state == _DONE:
            return
        self._discard_upstream()
        if self.state == _RESPONDING:  # head already forwarded: the client must see a failure
            self.conn.abort()
            self._done(keep_alive=False, failed=True)
            return
        self._attempt_failed("invalid", message)

    def on_upstream_lost(self) -> None:
        if self.state == _DONE:
            return
        self.up = None
        if self.state == _TUNNEL:
            self.conn.close()
            self._done(keep_alive=False, failed=False)
            return
        if self.state == _RESPONDING:
            if self.resp_framed:
                # A Content-Length or chunked body cut short: the client must not take it as
                # complete, so its connection is cut too.
                self.conn.abort()
                self._done(keep_alive=False, failed=True)
            else:
                # Read-until-close framing: EOF ends the body.
                if self.pctx is not None:
                    self._filter_tail()
                    if self.state != _RESPONDING:
                        return
                self.on_upstream_flush()
                if self.chunk_out:
                    self.conn.write(b"0\r\n\r\n")
                self._done(keep_alive=self.keep_alive and not self.close_after, failed=False)
            return
        self._attempt_failed("error", "upstream closed the connection before responding")

    # --- timeouts ---------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self.deadline = self.gateway.loop.time() + seconds
        if not self.tracked:  # the sweep's set needs us once; later deadlines are a field write
            self.tracked = True
            self.gateway.track(self)

    def on_timeout(self) -> None:
        if self.state == _DONE:
            return
        self.deadline = None
        if self.state == _RESPONDING:
            self._discard_upstream()
            self.conn.abort()
            self._done(keep_alive=False, failed=True)
            return
        if self.state == _TUNNEL:  # idle for the read timeout
            self._discard_upstream()
            self.conn.close()
            self._done(keep_alive=False, failed=False)
            return
        if self.state == _CONNECTING:
            return  # the connect has its own timeout
        if self.state == _SENDING and self.up is not None and not self.up.writing_paused:
            # The upstream took everything; the client stopped sending its body.
            self._discard_upstream()
            self._release_node(failed=False)
            self._respond_error(408, "408 Request Time-out")
            return
        self._discard_upstream()
        self._attempt_failed("timeout", "upstream timed out")

    # --- failure, retry, completion ---------------------------------------------------------

    def _attempt_failed(self, kind: str, message: str) -> None:
        self._discard_upstream()
        up = self.upstream
        within = up.retry_timeout <= 0 or time.monotonic() - self.started < up.retry_timeout
        if self.req.method in IDEMPOTENT:
            replayable = self._replay is not None or not self.body_started
        else:
            replayable = not self.sent
        node = self.node
        if kind == "error" and self.reused and node is not None and replayable and within:
            # A pooled connection that died before any response byte: the upstream closed it
            # while it sat idle. Once, the same node again over a new connection.
            self._connect(node)
            return
        if node is not None:
            self.tried = {*self.tried, node}
            if not self.counted and up.balancer.tracks:
                # A failed connect: the balancer still learns of the failure.
                up.balancer.on_start(node)
                self.counted = True
            self._release_node(failed=True)
            self.gateway.log_event("upstream_failed", node=node.addr, kind=kind, detail=message)
            if up.health is not None:
                up.health.passive(node, _PASSIVE_OUTCOME.get(kind, TCP_FAILURE))
        if kind != "invalid" and self.attempts < up.max_attempts and replayable:
            if within:
                self._attempt()
                return
            # A retry that retry_timeout refused: 502 whatever the last failure was, as APISIX's
            # balancer answers when its proxy_retry_deadline has passed.
            self._respond_error(502, "502 Bad Gateway")
            return
        if kind == "timeout":
            self._respond_error(504, "504 Gateway Time-out")
        else:
            self._respond_error(502, "502 Bad Gateway")

    def _release_node(self, *, failed: bool) -> None:
        """Tell the balancer the request to self.node is over (exactly once per on_start)."""
        if self.counted:
            self.counted = False
            node = self.node
            assert node is not None
            self.upstream.balancer.on_finish(node, time.monotonic() - self.upstream_start, failed)

    def _discard_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.abort()

    def _end(self, *, failed: bool) -> bool:
        """Mark the exchange over (once): no more deadline, the balancer told. False if it
        already was."""
        if self.state == _DONE:
            return False
        self.state = _DONE
        self.deadline = None
        if self.tracked:
            self.tracked = False
            self.gateway.tracked.discard(self)
        self._release_node(failed=failed)
        return True

    def _respond_error(self, status: int, message: str, *, filters: bool = True) -> None:
        if not self._end(failed=True):
            return
        close = not self.body_done or self.req.upgrade
        body = json_error(status, message)
        headers: list[tuple[bytes, bytes]] = []
        date_server = False  # the gateway's Date and Server are sent, unless a plugin took them
        pctx = self.pctx
        if pctx is not None and filters:
            try:
                head = filter_head(pctx, status, headers)
                status, headers, date_server = head.status, head.headers, head.date_server
                if pctx.chain.body_filter:
                    body = filter_body(pctx, body, True)
            except PluginFailed as e:
                self.gateway.report_plugin_failure(e, pctx)
                status, headers, body = 500, [], json_error(500, "500 Internal Server Error")
                date_server = False
        self.status = status
        self.bytes_sent += self.conn.send_simple(
            self.req, status, body, headers, close=close, own_lines=not date_server
        )
        self.gateway.request_finished(self)
        # Break the request <-> exchange cycle, so plain refcounting frees both: left to the
        # cyclic collector, they made it run on a fifth of a loaded worker's samples.
        self.req.exchange = None

    def _done(self, *, keep_alive: bool, failed: bool) -> None:
        if not self._end(failed=failed):
            return
        self.gateway.request_finished(self)
        self.req.exchange = None  # break the request <-> exchange cycle (see _respond_error)
        self.conn.finish(self.req, keep_alive)
