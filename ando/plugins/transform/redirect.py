"""redirect: answer with a redirect instead of proxying.

APISIX's redirect (priority 900, rewrite phase). Exactly one of:

- `uri`: a template with `$var` / `${var}` references (`/new$uri`, `https://x.example$request_uri`);
- `regex_uri`: [regex, template]; when the regex matches the request path, the Location is the
  path with that first match replaced (`$1`, `${1}` are captures); when it does not, the request
  goes on to the upstream;
- `http_to_https`: a plain-http request (as the connection says, or X-Forwarded-Proto when the
  client sent one, compared ignoring case) goes to `https://$host[:port]$request_uri` with 301
  for GET and HEAD and 308 otherwise (so a POST body is re-sent). The port is the node's first
  TLS listener's (none when it is 443 or there is no TLS listener): APISIX reads
  `plugin_attr.redirect.https_port`, else its `apisix.ssl.listen`, else 443.

`ret_code` (302) is the status otherwise; `encode_uri` percent-encodes the Location's path;
`append_query_string` adds the request's query (after `&` if the Location has one). The body is
nginx's small HTML page for the status, as APISIX's `core.response.exit(code)` sends.

The Location never carries a control character: CR, LF, NUL and the rest are percent-encoded
(what OpenResty does to header values), so `?next=%0D%0ASet-Cookie:...` cannot split the
response; non-ASCII characters are percent-encoded (UTF-8) too.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext
from ando.plugins.pages import html_page, nginx_page, status_phrase
from ando.plugins.transform.template import (
    Regex,
    SubTemplate,
    check_regex_pairs,
    compile_regex,
    encode_location,
    encode_path,
    request_uri,
)
from ando.plugins.vartemplate import RedirectTemplate

# nginx's reason phrases where they differ from Python's.
_NGINX_REASONS = {302: "Moved Temporarily"}
# The redirect statuses nginx has a page for (ngx_http_special_response.c).
_NGINX_3XX_PAGES = frozenset({301, 302, 303, 307, 308})


def _page(status: int) -> bytes:
    """nginx's special response page for `status`, with the footer every such page has
    (`<hr><center>openresty</center>`); empty for a status nginx has no page for."""
    if status in _NGINX_3XX_PAGES:
        reason = _NGINX_REASONS.get(status) or status_phrase(status)
        return html_page(f"{status} {reason}", "openresty").encode()
    return nginx_page(status).body


class Redirect(Plugin):
    name = "redirect"
    priority = 900

    __slots__ = (
        "append_query",
        "encode_uri",
        "http_to_https",
        "pages",
        "port_suffix",
        "regex",
        "ret_code",
        "uri",
    )

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.ret_code: int = conf["ret_code"]
        self.http_to_https: bool = bool(conf.get("http_to_https"))
        self.uri = RedirectTemplate(conf["uri"]) if "uri" in conf else None
        self.regex: tuple[Regex, SubTemplate] | None = None
        if "regex_uri" in conf:
            self.regex = (compile_regex(conf["regex_uri"][0]), SubTemplate(conf["regex_uri"][1]))
        self.encode_uri: bool = conf["encode_uri"]
        self.append_query: bool = conf["append_query_string"]
        port = None
        node = getattr(build.snapshot, "node", None)
        for listener in getattr(node, "listen", ()) or ():
            if listener.tls:
                port = listener.port
                break
        self.port_suffix = f":{port}" if port is not None and port != 443 else ""
        self.pages = {code: _page(code) for code in {self.ret_code, 301, 308}}

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems = check_regex_pairs(conf, "regex_uri")
        if conf.get("http_to_https") and conf.get("append_query_string"):
            problems.append(
                (
                    ("append_query_string",),
                    "only one of `http_to_https` and `append_query_string` can be configured.",
                )
            )
        return problems

    def rewrite(self, ctx: RequestContext) -> Response | None:
        code = self.ret_code
        if self.http_to_https:
            proto = ctx.header("X-Forwarded-Proto") or ctx.scheme
            if proto.strip().lower() != "http":
                return None
            location = f"https://{ctx.host}{self.port_suffix}{request_uri(ctx)}"
            code = 301 if ctx.method in ("GET", "HEAD") else 308
        elif self.uri is not None:
            location = self.uri.render(ctx.var)
        elif self.regex is not None:
            regex, template = self.regex
            path = ctx.path
            m = regex.pattern.search(path)
            if m is None:
                return None
            location = template.replace(path, m)
        else:
            return None
        if self.encode_uri:
            base, sep, query = location.partition("?")
            location = encode_path(base) + sep + query
        if self.append_query:
            query = ctx.query
            if query:
                location += ("&" if "?" in location else "?") + query
        return Response(
            code,
            self.pages.get(code, b""),
            {"Location": encode_location(location), "Content-Type": "text/html"},
        )
