"""A small HTTP/1.1 client for log pushers: POST a body, read the status, keep the connection.

Why our own: the pushers need one request at a time to one URL, on the worker's own loop, with
a hard timeout and nothing else; a general client would be a new dependency for that. It speaks
HTTP/1.1 over `loop.create_connection` (TLS when the URL is https), parses responses with
httptools (already the server's parser), and keeps one connection alive between requests.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from ando import __version__

_MAX_ERROR_BODY = 4096  # bytes of a response body kept for an error message


class PushError(Exception):
    """A push failed: no connection, a timeout, a broken or refusing answer."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to POST: parsed once from a URL."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """Raises ValueError for anything but an absolute http(s) URL with a host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, host, port, path, host_header)


class _Exchange(asyncio.Protocol):
    """One connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.body = bytearray()
        self.headers_done = False
        self.keep_alive = True
        self.closed = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(PushError(f"bad response: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done:  # a body delimited by the close
                self.waiter.set_result((self.status, bytes(self.body)))
            else:
                self.waiter.set_exception(PushError(f"connection closed: {exc or 'by peer'}"))

    # --- httptools callbacks ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        if len(self.body) < _MAX_ERROR_BODY:
            self.body += data[: _MAX_ERROR_BODY - len(self.body)]

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, bytes(self.body)))

    # --- use -------------------------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.status, self.headers_done = 0, False
        self.body = bytearray()
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(data)
        return self.waiter

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPoster:
    """POSTs to one target, reusing its connection while the server keeps it open."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float,
        headers: list[tuple[str, str]] | None = None,
        verify_tls: bool = True,
    ) -> None:
        self.target = target
        self.timeout = timeout
        fixed = [("Host", target.host_header), ("User-Agent", f"ando/{__version__}")]
        fixed += headers or []
        for name, value in fixed:
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} has CR, LF or NUL")
        self._head_fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed).encode("latin-1")
        self._ssl: ssl.SSLContext | None = None
        if target.scheme == "https":
            self._ssl = ssl.create_default_context()
            if not verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._conn: _Exchange | None = None

    async def post(self, path: str | None, content_type: str, body: bytes) -> tuple[int, bytes]:
        """(status, the start of the body). Raises PushError (timeouts included)."""
        head = (
            f"POST {path or self.target.path} HTTP/1.1\r\n".encode("latin-1")
            + self._head_fixed
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode(
                "latin-1"
            )
        )
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._conn
                if conn is None or conn.closed:
                    conn = self._conn = await self._connect()
                status, answer = await conn.request(head + body)
        except TimeoutError:
            self.close()
            raise PushError(f"no answer within {self.timeout:g}s") from None
        except OSError as e:
            self.close()
            raise PushError(f"cannot reach {self.target.host}:{self.target.port}: {e}") from None
        except PushError:
            self.close()
            raise
        if not conn.keep_alive:
            self.close()
        return status, answer

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            _Exchange,
            self.target.host,
            self.target.port,
            ssl=self._ssl,
            server_hostname=self.target.host if self._ssl is not None else None,
        )
        return protocol

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
