"""APISIX's request variables (`uri`, `host`, `arg_x`, `http_x_y`, `cookie_z`, ...), lazily.

Route `vars`, chash keys and plugins read variables by name. Most requests read none, so nothing
is parsed until asked: the query string and the Cookie header are parsed on first use.

The variables are the request itself: the gateway's connections parse into a `Vars` (a Request
with the proxy's per-request fields), so a request costs one object, not a request plus a view.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from ando.http.server import Request

if TYPE_CHECKING:
    from ando.plugins.context import RequestContext


class Vars(Request):
    """A request as the proxy sees it: the parsed head, the route it matched and its variables."""

    __slots__ = (
        "_args",
        "_cookies",
        "ctx",
        "metric",
        "route_id",
        "service_id",
        "upstream_addr",
    )

    def __init__(self) -> None:
        Request.__init__(self)  # (super() costs a lookup per request)
        self.ctx: RequestContext | None = None  # the plugins' context, on routes with plugins
        self._args: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        self.route_id: str | None = None
        self.service_id: str | None = None
        self.upstream_addr: str | None = None
        self.metric: tuple[str, str, str, str] | None = None  # labels, when prometheus counts it

    def get(self, name: str) -> str | None:
        req = self
        simple = _SIMPLE.get(name)
        if simple is not None:
            return simple(self)
        if name.startswith("http_"):
            want = name[5:].replace("_", "-").encode().lower()
            value = self._joined(want, b"; " if want == b"cookie" else b", ")
            # without the trailing whitespace llhttp leaves on a value (nginx trims it too)
            return value.decode("latin-1").rstrip(" \t") if value is not None else None
        if name.startswith("arg_"):
            if self._args is None:
                self._args = {}
                for k, v in parse_qsl(req.query.decode("latin-1"), keep_blank_values=True):
                    self._args.setdefault(k, v)
            return self._args.get(name[4:])
        if name.startswith("cookie_"):
            if self._cookies is None:
                self._cookies = _parse_cookies(self._joined(b"cookie", b"; "))
            return self._cookies.get(name[7:])
        return None

    __call__ = get

    def _joined(self, lower: bytes, sep: bytes) -> bytes | None:
        """Every header named `lower`, joined with `sep`, as nginx's $http_NAME has them
        (since 1.23: ", ", and "; " for Cookie, so APISIX's cookie_* variables see them all):
        an HTTP/2 hop in front may split cookies over several headers."""
        n = len(lower)
        found = [v for k, v in self.headers if len(k) == n and k.lower() == lower]
        if len(found) < 2:
            return found[0] if found else None
        return sep.join(v.rstrip(b" \t") for v in found)


def _parse_cookies(raw: bytes | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.decode("latin-1").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k and k not in out:
            out[k] = v.strip()
    return out


def _query(v: Vars) -> str | None:
    return v.query.decode("latin-1") if v.query else None


def _header(lower: bytes) -> Callable[[Vars], str | None]:
    """nginx's variables that are one request header by another name ($content_type)."""

    def get(v: Vars) -> str | None:
        value = v._joined(lower, b", ")
        return value.decode("latin-1").rstrip(" \t") if value is not None else None

    return get


_HOSTNAME = socket.gethostname()


_SIMPLE = {
    "uri": lambda v: v.path,
    "request_uri": lambda v: v.target.decode("latin-1"),
    "host": lambda v: v.host,
    "remote_addr": lambda v: v.client_addr,
    "remote_port": lambda v: str(v.client_port),
    "server_port": lambda v: str(v.server_port),
    "request_method": lambda v: v.method,
    "scheme": lambda v: v.scheme,
    "args": _query,
    "query_string": _query,
    "server_protocol": lambda v: f"HTTP/{v.version}",
    "content_type": _header(b"content-type"),
    "content_length": _header(b"content-length"),
    "is_args": lambda v: "?" if v.query else "",
    "document_uri": lambda v: v.path,
    "hostname": lambda v: _HOSTNAME,
    "route_id": lambda v: v.route_id,
    "service_id": lambda v: v.service_id,
    "upstream_addr": lambda v: v.upstream_addr,
    "request_path": lambda v: unquote(v.path),
    "consumer_name": lambda v: v.ctx.consumer_name if v.ctx is not None else None,
    "consumer_group_id": lambda v: v.ctx.consumer_group_id if v.ctx is not None else None,
    "route_name": lambda v: v.ctx.route.name if v.ctx is not None and v.ctx.route else None,
    "status": lambda v: str(v.ctx.status) if v.ctx is not None and v.ctx.status else None,
}
