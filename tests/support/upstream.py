"""A real HTTP/1.1 upstream for the tests, run on its own thread and event loop.

It speaks through real sockets (parsed with httptools) and can misbehave on request, by path:

  /status/NNN           answer status NNN (body says so, except 204/304)
  /delay?ms=N           wait N ms, then answer
  /hang                 never answer
  /chunked?n=K&size=S   a chunked response of K chunks of S bytes (&trailer=1: ends with a trailer
                        field, X-Trailer-Leak)
  /stream?bytes=N       a Content-Length response of N bytes, written in 64 KiB pieces
  /close-delimited      a response with no length, ended by closing the connection
  /truncate             promises Content-Length 100, sends 10 bytes, closes
  /broken               an invalid response head
  /split-status         404 "Not Found", its status line written in two pieces 50 ms apart
  /no-reason            a 200 whose status line has no reason phrase ("HTTP/1.1 200")
  /huge-head?kb=N       a head with an N KiB header line, then (with &end=1) an empty 200 body;
                        without `end` it never finishes
  /reset                closes the connection without answering
  anything else         200 with a JSON echo: server name, method, path, query, headers, body
                        length and sha256 (the body is read fully, chunked or not)

Every request is recorded in `requests` (method, path, headers, body length) for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools


class _Conn(asyncio.Protocol):
    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = hashlib.sha256()
        self.body_len = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.transports.add(transport)

    def connection_lost(self, exc) -> None:
        self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.update(body)
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        url = self.url.decode("latin-1")
        record = {
            "server": self.server.name,
            "method": method,
            "url": url,
            "path": urlsplit(url).path,
            "query": urlsplit(url).query,
            "headers": self.headers,
            "body_len": self.body_len,
            "body_sha256": self.body.hexdigest(),
            "version": self.parser.get_http_version(),
        }
        self.server.requests.append(record)
        self.reset()
        task = asyncio.ensure_future(self.respond(record))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def respond(self, rec: dict) -> None:
        t = self.transport if rec["method"] != "HEAD" else _HeadOnly(self.transport)
        path = rec["path"]
        q = {k: v[0] for k, v in parse_qs(rec["query"]).items()}
        if path.startswith("/status/"):
            status = int(path.split("/")[2])
            body = b"" if status in (204, 304) else f"status {status}".encode()
            t.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)
            if status == 304:
                pass
            return
        if path == "/delay":
            await asyncio.sleep(int(q.get("ms", "100")) / 1000)
        if path == "/hang":
            return
        if path == "/reset":
            t.abort()
            return
        if path == "/broken":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nxx")
            return
        if path == "/split-status":
            t.write(b"HTTP/1.1 404 Not F")
            await asyncio.sleep(0.05)
            t.write(b"ound\r\nContent-Length: 2\r\n\r\nno")
            return
        if path == "/no-reason":
            t.write(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")
            return
        if path == "/huge-head":
            t.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
            for _ in range(int(q.get("kb", "1024"))):
                t.write(b"a" * 1024)
                await asyncio.sleep(0)
            if q.get("end"):
                t.write(b"\r\nContent-Length: 0\r\n\r\n")
            return
        if path == "/truncate":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            t.close()
            return
        if path == "/close-delimited":
            t.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close-body")
            t.close()
            return
        if path == "/chunked":
            n, size = int(q.get("n", "3")), int(q.get("size", "5"))
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                chunk = bytes([97 + i % 26]) * size
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(0)
            t.write(b"0\r\nX-Trailer-Leak: yes\r\n\r\n" if q.get("trailer") else b"0\r\n\r\n")
            return
        if path == "/stream":
            total = int(q.get("bytes", "1048576"))
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            piece = b"x" * 65536
            sent = 0
            while sent < total:
                n = min(len(piece), total - sent)
                t.write(piece[:n])
                sent += n
                while t.get_write_buffer_size() > 1 << 20:
                    await asyncio.sleep(0.001)
                    if t.is_closing():
                        return
            return
        body = json.dumps(rec).encode()
        extra = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in self.server.extra_headers
        )
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), extra)
            + body
        )


class _HeadOnly:
    """A transport view for a response to HEAD: the head goes out, the body does not."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport
        self._in_head = True

    def write(self, data: bytes) -> None:
        if self._in_head:
            head, sep, _ = data.partition(b"\r\n\r\n")
            self._t.write(head + sep)
            self._in_head = not sep

    def __getattr__(self, name: str):
        return getattr(self._t, name)


class UpstreamServer:
    """Start with `with UpstreamServer("a") as up:`; `up.port`, `up.addr`, `up.requests`."""

    def __init__(self, name: str = "up", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self.port = port  # 0: any free port; a fixed one lets a test restart a node in place
        self.requests: list[dict] = []
        self.connections = 0
        self.extra_headers: list[tuple[str, str]] = []
        self.tasks: set[asyncio.Future] = set()
        self.transports: set[asyncio.BaseTransport] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> UpstreamServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Conn(self), self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            for t in list(self.transports):  # a stopped node closes its connections too
                t.abort()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        assert ready.wait(10), "upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def echoed_headers(response: Any) -> dict[str, list[str]]:
    """The request headers the echo upstream received, from its answer (a client Response):
    lower-case name -> the values in the order they came."""
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before: the
    kernel can give a just-closed port again, and a gateway whose listener and metrics server
    were given the same port shares it between them (SO_REUSEPORT), answering requests with
    the wrong server (seen once in CI-like runs)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def closed_port() -> int:
    """A port with nothing listening (connections are refused)."""
    return free_port()


class HangingServer:
    """Accepts connections and never reads or answers: for connect-ok/read-timeout cases."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
