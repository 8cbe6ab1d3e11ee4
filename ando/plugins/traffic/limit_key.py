"""What the limit-* plugins share: the key a request is counted under, and how they refuse.

APISIX's limit-count, limit-req and limit-conn count requests by `key`, read according to
`key_type`:

- `var`: the key names one variable (`remote_addr`, `http_x_api_key`, `consumer_name`, ...);
- `var_combination`: the key is a template such as `"$remote_addr $http_x_user"` (also
  `${name}`), each variable replaced by its value (absent ones by "");
- `constant`: the key itself, so every request shares one counter.

When nothing resolves (the variable is absent or empty; a combination where no variable had a
value) the client address is used instead, as APISIX does: a client cannot escape its limit by
leaving the header out, nor share a counter with everybody who left it out.

A refusal is APISIX's: `{"error_msg": rejected_msg}` when `rejected_msg` is set, else the bare
status, for which nginx (so APISIX) sends its stock HTML error page.
"""

from __future__ import annotations

import re
from typing import Any

from ando.plugins.base import Response

# `$name` or `${name}` not preceded by a backslash (APISIX's core.utils.resolve_var).
_VAR = re.compile(r"(?<!\\)\$(?:\{\s*([^}]+?)\s*\}|([\w.]+))")


class LimitKey:
    """Resolves a request's limit key; compiled once per plugin instance."""

    __slots__ = ("_constant", "_literals", "_name", "_names")

    def __init__(self, key_type: str, key: str) -> None:
        self._constant: str | None = None
        self._name: str | None = None
        self._literals: tuple[str, ...] = ()
        self._names: tuple[str, ...] = ()
        if key_type == "constant":
            self._constant = key
        elif key_type == "var_combination":
            literals: list[str] = []
            names: list[str] = []
            pos = 0
            for m in _VAR.finditer(key):
                literals.append(key[pos : m.start()])
                names.append(m.group(1) or m.group(2))
                pos = m.end()
            literals.append(key[pos:])
            # (a template naming no variable resolves nothing: the client address, as APISIX)
            self._literals = tuple(literals)
            self._names = tuple(names)
        else:
            self._name = key

    def __call__(self, ctx: Any) -> str:
        if self._constant is not None:
            return self._constant
        var = ctx.var
        name = self._name
        if name is not None:
            value = var(name)
            return value if value else _client(ctx)
        literals = self._literals
        parts = [literals[0]]
        resolved = 0
        for i, n in enumerate(self._names):
            value = var(n)
            if value is not None:
                resolved += 1
                parts.append(value)
            parts.append(literals[i + 1])
        if not resolved:
            return _client(ctx)
        return "".join(parts)


def _client(ctx: Any) -> str:
    return ctx.var("remote_addr") or ""


# nginx's stock error pages (ngx_http_special_response.c), which APISIX sends when a plugin
# exits with a bare status; statuses nginx has no page for get an empty body.
_NGINX_PAGES = {
    400: "Bad Request",
    401: "Authorization Required",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    406: "Not Acceptable",
    408: "Request Time-out",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    421: "Misdirected Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}


def nginx_page(status: int) -> Response:
    """The response nginx makes for a bare status: its HTML page, as APISIX clients see it."""
    reason = _NGINX_PAGES.get(status)
    if reason is None:
        return Response(status, b"")
    title = f"{status} {reason}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>openresty</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(status, page, {"Content-Type": "text/html"})


def rejection(status: int, message: str | None) -> Response:
    """APISIX's refusal for `rejected_code` / `rejected_msg`."""
    if message is not None:
        return Response(status, {"error_msg": message})
    return nginx_page(status)
