"""The small HTML pages nginx (so APISIX) answers a bare status with, for the plugins that end a
request without a body of their own (limit-*, uri-blocker, redirect), and the reason phrases
they are titled with.
"""

from __future__ import annotations

from http import HTTPStatus

from ando.http.server import reason_phrase
from ando.plugins.base import Response

# The statuses nginx has a page for (ngx_http_special_response.c); the others get an empty body.
_NGINX_PAGE_STATUSES = frozenset(
    {400, 401, 402, 403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 421, 429}
    | {500, 501, 502, 503, 504, 505, 507}
)
# A page's title is the status line's reason phrase, but for these.
_NGINX_TITLES = {401: "Authorization Required"}


def status_phrase(status: int) -> str:
    """The standard reason phrase of `status` ("" for a status HTTP does not define)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def html_page(title: str, signature: str | None = None) -> str:
    """nginx's page markup, titled `title`; `signature` is the server name of its footer line."""
    tail = f"<hr><center>{signature}</center>\r\n" if signature else ""
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n{tail}</body>\r\n</html>\r\n"
    )


def nginx_title(status: int) -> str | None:
    """The title of nginx's page for `status` ("503 Service Temporarily Unavailable"), None
    when nginx has no page for it. The phrases are the gateway's own status-line ones (nginx's),
    the standard ones where it has none."""
    if status not in _NGINX_PAGE_STATUSES:
        return None
    reason = _NGINX_TITLES.get(status) or reason_phrase(status)
    if reason == "Unknown":
        reason = status_phrase(status)
    return f"{status} {reason}"


def nginx_page(status: int) -> Response:
    """The response nginx makes for a bare status: its HTML page, as APISIX clients see it."""
    title = nginx_title(status)
    if title is None:
        return Response(status, b"")
    return Response(status, html_page(title, "openresty"), {"Content-Type": "text/html"})
