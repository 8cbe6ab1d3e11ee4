"""The upstream side: connections to upstream nodes, their response parsing, and keep-alive pools.

An UpstreamConnection is an asyncio Protocol driven by httptools' response parser; while it
serves a request, every event goes to the `UpstreamListener` (the proxy exchange) that holds it.
Between requests it sits in its pool. A connection is reused only when its last response was
complete and well framed, and it is discarded on any doubt: a parse error, an early close, a
response to HEAD that came with bytes after its head, or data arriving while idle.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Protocol

import httptools


class UpstreamListener(Protocol):
    def on_upstream_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_flush(self) -> None: ...
    def on_upstream_done(self, reusable: bool) -> None: ...
    def on_upstream_upgrade(self, rest: bytes) -> None: ...
    def on_upstream_tunnel_data(self, data: bytes) -> None: ...
    def on_upstream_error(self, message: str) -> None: ...
    def on_upstream_lost(self) -> None: ...
    def on_upstream_pause(self) -> None: ...
    def on_upstream_resume(self) -> None: ...


class _HeadDone(Exception):
    """Stops the parser after the head of a response to HEAD (it has no body to wait for)."""


WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# A response head larger than this is refused (502), as nginx refuses one larger than its
# proxy_buffer_size ("upstream sent too big header"): httptools gathers a header line of any
# length before handing it over, so an upstream that never ends a line would grow the worker.
HEAD_MAX = 64 * 1024


class _DroppedTrailers:
    """Where a response's trailer fields go: nowhere."""

    __slots__ = ()

    def append(self, field: tuple[bytes, bytes]) -> None:
        pass


_TRAILERS: list[tuple[bytes, bytes]] = _DroppedTrailers()  # type: ignore[assignment]


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_head_bytes",
        "_headers",
        "_read_paused",
        "_reason",
        "addr",
        "closed",
        "expect_head",
        "idle_since",
        "listener",
        "parser",
        "requests",
        "transport",
        "tunnel",
    )

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.listener: UpstreamListener | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.tunnel = False
        self.expect_head = False  # the request in flight is HEAD: its response has no body
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._read_paused = False
        self._head_bytes = 0  # bytes read of the response head so far; -1 once it is complete

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:  # bytes from an idle connection: the upstream broke framing
            self.close()
            return
        if self.tunnel:
            listener.on_upstream_tunnel_data(data)
            return
        if self._head_bytes >= 0:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self._head_bytes > HEAD_MAX:  # still in the head (-1 after it)
                self.closed = True
                listener.on_upstream_error(f"response head larger than {HEAD_MAX} bytes")
                return
            if self.listener is listener:
                listener.on_upstream_flush()
        except _HeadDone:
            self._after_head_only()
            listener.on_upstream_done(data.endswith(b"\r\n\r\n") or data in (b"\n", b"\r\n"))
        except httptools.HttpParserUpgrade as e:
            self.tunnel = True
            listener.on_upstream_upgrade(data[e.args[0] :])
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadDone):
                self._after_head_only()
                listener.on_upstream_done(data.endswith(b"\n"))
            else:
                self.closed = True
                listener.on_upstream_error("upstream callback failed")
        except httptools.HttpParserError as e:
            self.closed = True
            listener.on_upstream_error(f"invalid response from upstream: {e}")

    def _after_head_only(self) -> None:
        """A response to HEAD ended at its head (the parser was stopped there, so it never saw
        the message end): a new parser, and the next response's head counted from nothing."""
        self.parser = httptools.HttpResponseParser(self)
        self._head_bytes, self._headers = 0, []

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.on_upstream_lost()

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_pause()

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_resume()

    # --- parser callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        # llhttp hands the reason phrase over in pieces when it spans reads; none at all when
        # the status line has none (on_headers_complete resets it for the next response)
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))  # after the head: _TRAILERS, which drops them

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self._headers
        reason, self._reason = self._reason, b""
        if 100 <= status < 200 and status != 101:
            self._headers = []
            return  # interim responses (100 Continue, 103) are not forwarded
        # What httptools reports as headers from now on are trailer fields: dropped (as nginx
        # does by default). Kept, they would be headers of the next response on this
        # connection, another client's.
        self._headers = _TRAILERS
        self._head_bytes = -1
        assert self.listener is not None
        self.listener.on_upstream_head(status, reason, headers)
        if self.expect_head and status != 101:
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.on_upstream_body(body)

    def on_message_complete(self) -> None:
        self._head_bytes = 0  # the next response's head starts now
        self._headers = []
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # Interim responses end here; so does a 101's head (llhttp completes it, then
            # raises HttpParserUpgrade: the bytes after it belong to the tunnel).
            return
        if self.listener is not None and not self.tunnel:
            self.listener.on_upstream_done(self.parser.should_keep_alive())

    # --- used by the exchange ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        t = self.transport
        return t is not None and t.get_write_buffer_size() > WRITE_HIGH_WATER

    def close(self) -> None:
        self.closed = True
        self.listener = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.listener = None
        if self.transport is not None:
            self.transport.abort()


class PoolSettings(Protocol):
    size: int
    idle_timeout: float
    requests: int


class UpstreamPool:
    """Idle keep-alive connections per upstream node, newest first (LIFO keeps few sockets warm).

    Expiry is swept once a second rather than timed per connection: arming and cancelling a
    timer on every request would cost more than the whole lookup."""

    __slots__ = ("_idle", "_sweeper", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._idle: dict[str, list[tuple[UpstreamConnection, float]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def acquire(self, key: str) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn, _ = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, key: str, conn: UpstreamConnection, settings: PoolSettings) -> None:
        conn.listener = None
        conn.expect_head = False
        if conn.closed or conn.tunnel or conn.requests >= settings.requests:
            conn.close()
            return
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if len(idle) >= settings.size:
            conn.close()
            return
        if conn._read_paused:
            conn.resume_reading()
        idle.append((conn, self.loop.time() + settings.idle_timeout))
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        remaining = 0
        for key, idle in list(self._idle.items()):
            keep = []
            for conn, deadline in idle:
                if conn.closed:
                    continue
                if deadline <= now:
                    conn.close()
                else:
                    keep.append((conn, deadline))
            if keep:
                self._idle[key] = keep
                remaining += len(keep)
            else:
                del self._idle[key]
        if remaining:
            self._sweeper = self.loop.call_later(1.0, self._sweep)

    def idle_count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn, _ in idle:
                conn.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    addr: str,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> UpstreamConnection:
    """Connect to a node within `timeout` seconds (raises OSError or TimeoutError)."""
    factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(addr)  # noqa: E731
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(
            factory, host, port, ssl=tls, server_hostname=server_hostname if tls else None
        )
    return proto
