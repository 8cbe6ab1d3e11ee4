"""proxy-rewrite: change what the upstream receives (path, query, method, Host, headers).

APISIX's proxy-rewrite (priority 1008, rewrite phase), field for field:

- `uri`: the new path, with `$var` references (`$arg_id`, `${http_x_user}`, `$remote_addr`,
  `${arg_v ?? 1}`); `regex_uri`: [regex, template, regex, template, ...], the first regex that
  matches the request path is substituted (first match only) with its template (`$1`, `${1}`,
  `$0`); `uri` wins when both are given. The client's query string is appended, after `&` when
  the new URI has a `?` of its own, else after `?`.
- `use_real_request_uri_unsafe`: the request target exactly as the client sent it (path and
  query, not normalized) goes upstream; `uri` / `regex_uri` still apply to it, and nothing is
  encoded or appended.
- `method`, `host` (the Host header the upstream sees; a `Host` in `headers` has no effect).
- `headers`: `{name: value}` (set), or `{add: {...}, set: {...}, remove: [...]}`, applied in
  that order (APISIX's code: add, then set, then remove); values take `$var` references and the
  regex_uri captures (`$1`); a `set` value that resolves to "" removes the header.

Header injection: a value that resolves to something holding CR, LF or NUL (say `$arg_x` from
`?x=a%0D%0AEvil:%201`) refuses the request with 400 `{"error_msg": ...}` rather than dropping
the header: the upstream never sees a request that differs from the configuration in a way the
client chose (a dropped tenant or trace header could change what the upstream does). Values
written in the configuration itself cannot hold them (the schema refuses them).
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext
from ando.plugins.transform.template import (
    REQUEST_HEADERS,
    HeaderActions,
    Regex,
    SubTemplate,
    check_headers,
    check_regex_pairs,
    compile_regex,
    encode_path,
    encode_query,
    encode_value,
    request_uri,
)
from ando.plugins.vartemplate import VarTemplate

# Variables whose value is already in the request's (percent-encoded) form.
_RAW_VARS = frozenset({"uri", "request_uri", "args", "query_string"})


def _escape_var(name: str, value: str) -> str:
    return encode_path(value) if name in _RAW_VARS else encode_value(value)


class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008

    __slots__ = ("headers", "host", "method", "regex", "unsafe", "uri")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.unsafe: bool = conf.get("use_real_request_uri_unsafe", False)
        self.uri = VarTemplate(conf["uri"]) if "uri" in conf else None
        self.regex: tuple[tuple[Regex, SubTemplate], ...] = ()
        if self.uri is None and conf.get("regex_uri"):
            pairs = conf["regex_uri"]
            self.regex = tuple(
                (compile_regex(pairs[i]), SubTemplate(pairs[i + 1]))
                for i in range(0, len(pairs) - 1, 2)
            )
        self.method: str | None = conf.get("method")
        self.host: str | None = conf.get("host")
        self.headers = HeaderActions.from_conf(conf.get("headers"), captures=True)

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems = check_regex_pairs(conf, "regex_uri")
        if "headers" in conf:
            problems.extend(((("headers", *p), m) for p, m in check_headers(conf["headers"])))
        return problems

    def _new_uri(self, ctx: RequestContext) -> tuple[str | None, tuple[str | None, ...] | None]:
        """The upstream URI (None: the request's own stands) and the regex_uri captures."""
        base = request_uri(ctx) if self.unsafe else ctx.path
        captures = None
        if self.uri is not None:
            new = self.uri.render(ctx.var, _escape_var)
        else:
            for regex, template in self.regex:
                m = regex.pattern.search(base)
                if m is not None:
                    captures = (m.group(0), *m.groups())
                    new = template.replace(base, m)
                    break
            else:
                return (base if self.unsafe else None), None
        if self.unsafe:
            return new, captures
        path, sep, query = new.partition("?")
        new = encode_path(path) + (sep + encode_query(query) if sep else "")
        args = ctx.query
        if args:
            new += ("&" if sep else "?") + args
        return new, captures

    def rewrite(self, ctx: RequestContext) -> Response | None:
        captures = None
        if self.uri is not None or self.regex or self.unsafe:
            new, captures = self._new_uri(ctx)
            if new is not None:
                ctx.set_uri(new)
        if self.headers is not None:
            unsafe = self.headers.apply(ctx.var, ctx, REQUEST_HEADERS, captures, refuse=True)
            if unsafe is not None:
                return _refuse(unsafe)
        if self.method is not None:
            ctx.upstream_method = self.method
        if self.host is not None:
            ctx.upstream_host = self.host
        return None


def _refuse(name: str) -> Response:
    return Response(
        400, {"error_msg": f"400 Bad Request: the value for header {name} holds CR, LF or NUL"}
    )
