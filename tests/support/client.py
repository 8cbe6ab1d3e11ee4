"""A small blocking HTTP/1.1 client for black-box tests: one request, one parsed response.

Built on http.client (stdlib), with a timeout on every socket operation, so a hung gateway fails
a test instead of hanging it.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool = True  # False: the connection ended before the body did
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str = "GET",
    path: str = "/",
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    conn: http.client.HTTPConnection | None = None,
) -> Response:
    """Send one request (on `conn` when given: keep-alive across calls) and read the response."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            items.insert(0, ("Host", f"127.0.0.1:{port}"))
        for k, v in items:
            c.putheader(k, v)
        if body is not None and not any(
            k.lower() in ("content-length", "transfer-encoding") for k, _ in items
        ):
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        hdrs = list(r.getheaders())
        try:
            data = r.read()
            return Response(r.status, hdrs, data)
        except http.client.IncompleteRead as e:
            return Response(r.status, hdrs, e.partial, complete=False, error=repr(e))
        except (ConnectionError, OSError) as e:
            return Response(r.status, hdrs, b"", complete=False, error=repr(e))
    finally:
        if own:
            c.close()


def get_json(port: int, path: str = "/", **kw: Any) -> tuple[int, Any]:
    r = request(port, "GET", path, **kw)
    try:
        return r.status, r.json()
    except ValueError:
        return r.status, r.body
