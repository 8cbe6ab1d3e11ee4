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
from ando.plugins.context import RequestContext
from ando.plugins.transform.template import (
    Regex,
    SubTemplate,
    VarTemplate,
    compile_regex,
    encode_path,
    encode_query,
    encode_value,
    header_text,
    header_wire,
    request_uri,
    unsafe_header_value,
    valid_header_name,
    valid_header_value,
)

# Variables whose value is already in the request's (percent-encoded) form.
_RAW_VARS = frozenset({"uri", "request_uri", "args", "query_string"})
_VERBS = ("add", "set", "remove")


def _escape_var(name: str, value: str) -> str:
    return encode_path(value) if name in _RAW_VARS else encode_value(value)


def is_new_headers_conf(headers: dict[str, Any]) -> bool:
    """APISIX's test: the action form when any of add/set/remove holds a table."""
    return any(isinstance(headers.get(v), dict | list) for v in _VERBS)


def check_headers(
    headers: dict[str, Any], *, add_is_list: bool = False, strict_values: bool = True
) -> list[tuple[tuple[Any, ...], str]]:
    """Header names and values the schema cannot judge (shared with response-rewrite, whose
    `add` is a list of "Name: value" strings and whose plain values APISIX does not check)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if not headers:
        return [((), "must have at least 1 field(s)")]
    if not is_new_headers_conf(headers):
        for name, value in headers.items():
            if not valid_header_name(name):
                problems.append(((name,), "invalid field character in header"))
            elif strict_values and not valid_header_value(value):
                problems.append(((name,), "invalid value character in header"))
        return problems
    problems.extend(
        ((name,), "header names cannot be mixed with add, set and remove; move it under set")
        for name in headers
        if name not in _VERBS
    )
    for verb in _VERBS:
        block = headers.get(verb)
        if block is None:
            continue
        if not isinstance(block, dict | list):
            problems.append(((verb,), "expected the form of add, set and remove here"))
            continue
        if not block:
            problems.append(((verb,), "must have at least 1 item(s)"))
            continue
        if isinstance(block, dict):
            problems.extend(
                ((verb, name), "invalid field character in header")
                for name in block
                if not valid_header_name(name)
            )
        elif not (verb == "add" and add_is_list):
            problems.extend(
                ((verb, i), "invalid field character in header")
                for i, name in enumerate(block)
                if not valid_header_name(name)
            )
    return problems


def check_regex_pairs(pairs: list[str], field: str) -> list[tuple[tuple[Any, ...], str]]:
    """[regex, template, ...]: an even count, regexes that compile, templates that parse."""
    if len(pairs) % 2:
        return [((field,), f"The length of {field} should be an even number")]
    problems: list[tuple[tuple[Any, ...], str]] = []
    for i in range(0, len(pairs), 2):
        try:
            compile_regex(pairs[i])
        except ValueError as e:
            problems.append(((field, i), str(e)))
        try:
            SubTemplate(pairs[i + 1])
        except ValueError as e:
            problems.append(((field, i + 1), str(e)))
    return problems


class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008

    __slots__ = ("add", "host", "method", "regex", "remove", "set", "unsafe", "uri")

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
        add: list[tuple[str, VarTemplate]] = []
        set_: list[tuple[str, VarTemplate]] = []
        remove: list[str] = []
        headers = conf.get("headers")
        if headers:
            if is_new_headers_conf(headers):
                add = _templates(headers.get("add"))
                set_ = _templates(headers.get("set"))
                remove = list(headers.get("remove") or ())
            else:
                set_ = _templates(headers)
        self.add = tuple(add)
        self.set = tuple(set_)
        self.remove = tuple(remove)

    @classmethod
    def check_conf(
        cls, conf: dict[str, Any], on_consumer: bool
    ) -> list[tuple[tuple[Any, ...], str]]:
        problems: list[tuple[tuple[Any, ...], str]] = []
        if "regex_uri" in conf:
            problems.extend(check_regex_pairs(conf["regex_uri"], "regex_uri"))
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
                    new = base[: m.start()] + template.expand(m) + base[m.end() :]
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
        var = ctx.var
        for name, template in self.add:
            value = template.render(var, None, captures)
            if value:
                if unsafe_header_value(value):
                    return _refuse(name)
                ctx.add_header(name, header_wire(value))
        for name, template in self.set:
            value = template.render(var, None, captures)
            if not value:
                ctx.remove_header(name)
                continue
            if unsafe_header_value(value):
                return _refuse(name)
            ctx.set_header(name, header_wire(value))
        for name in self.remove:
            ctx.remove_header(name)
        if self.method is not None:
            ctx.upstream_method = self.method
        if self.host is not None:
            ctx.upstream_host = self.host
        return None


def _templates(block: dict[str, Any] | None) -> list[tuple[str, VarTemplate]]:
    if not block:
        return []
    return [(name, VarTemplate(header_text(v), captures=True)) for name, v in block.items()]


def _refuse(name: str) -> Response:
    return Response(
        400, {"error_msg": f"400 Bad Request: the value for header {name} holds CR, LF or NUL"}
    )
