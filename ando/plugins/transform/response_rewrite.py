"""response-rewrite: change the response the client gets (status, headers, body).

APISIX's response-rewrite (priority 899, header_filter and body_filter), field for field:
`status_code`; `headers` as `{name: value}` (set) or `{add: ["Name: value"], set: {...},
remove: [...]}` applied as add, set, remove, values with `$var` references (a set value that
resolves to "" removes the header); `body` (`body_base64` to decode it first) replacing the body
whole, or `filters` ([{regex, scope: once|global, replace, options}]) substituting inside it;
`vars`, an expression evaluated when the response head is ready (so `status` and upstream
variables work): the rewrite applies only to responses it matches.

It works the same on an upstream's response, streamed or chunked, and on one the gateway made
(a plugin's 401, a 404, a 502). When the body changes, Content-Length, Content-Encoding, ETag and
Last-Modified go (APISIX's clear_header_as_body_modified) and the response is re-framed. A
configuration without `body` or `filters` leaves the body alone and streams it untouched (its
instances have no body filter at all).

A header value resolving to something that holds CR, LF or NUL (from a `$arg_x`, say) is dropped
rather than sent: the response head is already decided when this runs, so refusing is no longer
possible, and splitting the response must never be.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ando.plugins.base import BuildContext, Plugin
from ando.plugins.checks import Problems, expr_problems
from ando.plugins.context import RequestContext, ResponseHead
from ando.plugins.transform.template import (
    RESPONSE_HEADERS,
    HeaderActions,
    Regex,
    SubTemplate,
    check_headers,
    compile_regex,
    is_new_headers_conf,
    substitute,
    valid_header_name,
)
from ando.router.expr import compile_expr

# What APISIX's clear_header_as_body_modified removes once the body changes.
_BODY_HEADERS = ("Content-Length", "Content-Encoding", "Last-Modified", "ETag")


def _decode_base64(text: str) -> bytes | None:
    """ngx.decode_base64: the standard alphabet, padding optional."""
    if len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse_add(item: str) -> tuple[str, str] | None:
    """A headers.add item, as APISIX reads it: ^([^:\\s]+)\\s*:\\s*([^:]+)$."""
    name, sep, value = item.partition(":")
    name, value = name.strip(), value.strip(" \t")
    if not sep or not valid_header_name(name) or ":" in value or not value:
        return None
    return name, value


class ResponseRewrite(Plugin):
    name = "response-rewrite"
    priority = 899

    __slots__ = ("changes_body", "headers", "key", "matches", "status")

    def __new__(cls, conf: dict[str, Any], build: BuildContext) -> ResponseRewrite:
        # Only a configuration that changes the body gets a body filter: the others keep the
        # upstream's framing (Content-Length) and stream as if the plugin were not there.
        if cls is ResponseRewrite and ("body" in conf or "filters" in conf):
            cls = ResponseRewriteBody
        return super().__new__(cls)

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.status: int | None = conf.get("status_code")
        vars_ = conf.get("vars")
        self.matches = compile_expr(vars_).evaluate if vars_ else None
        self.changes_body = "body" in conf or "filters" in conf
        self.key = ("response-rewrite", id(self))
        self.headers = HeaderActions.from_conf(conf.get("headers"), parse_add=_parse_add)

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems: Problems = []
        if "body" in conf and "filters" in conf:
            problems.append(
                (("filters",), "fields 'body' and 'filters' cannot be used together; choose one")
            )
        if conf.get("body_base64"):
            body = conf.get("body")
            if not body or _decode_base64(body) is None:
                problems.append((("body",) if body else (), "invalid base64 content"))
        headers = conf.get("headers")
        if headers is not None:
            problems.extend(
                (("headers", *p), m)
                for p, m in check_headers(headers, add_is_list=True, strict_values=False)
            )
            if is_new_headers_conf(headers):
                for i, item in enumerate(headers.get("add") or ()):
                    if _parse_add(item) is None:
                        problems.append((("headers", "add", i), 'expected "Name: value"'))
        if "vars" in conf:
            problems.extend(expr_problems(conf["vars"], ("vars",)))
        for i, flt in enumerate(conf.get("filters") or ()):
            try:
                compile_regex(flt["regex"], flt.get("options", "jo"), binary=True)
            except ValueError as e:
                problems.append((("filters", i, "regex"), str(e)))
            try:
                SubTemplate(flt["replace"])
            except ValueError as e:
                problems.append((("filters", i, "replace"), str(e)))
        return problems

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        if self.matches is not None and not self.matches(ctx.var):
            return
        if self.changes_body:
            ctx.data[self.key] = []  # matched: the body filter collects from here on
            for name in _BODY_HEADERS:
                head.remove(name)
        if self.status is not None:
            head.status = self.status
        if self.headers is not None:
            self.headers.apply(ctx.var, head, RESPONSE_HEADERS, refuse=False)


class ResponseRewriteBody(ResponseRewrite):
    """response-rewrite with `body` or `filters`: the same, plus the body filter."""

    __slots__ = ("body", "filters")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        body = conf.get("body")
        self.body: bytes | None = None
        if body is not None:
            decoded = _decode_base64(body) if conf.get("body_base64") else body.encode("utf-8")
            self.body = decoded or b""
        self.filters: tuple[tuple[Regex, SubTemplate, bool], ...] = tuple(
            (
                compile_regex(f["regex"], f.get("options", "jo"), binary=True),
                SubTemplate(f["replace"]),
                f.get("scope", "once") == "global",
            )
            for f in conf.get("filters") or ()
        )

    def body_filter(self, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        held = ctx.data.get(self.key)
        if held is None:
            return chunk  # vars did not match (or the head never came through us)
        if self.body is not None:
            return self.body if eof else b""
        if chunk:
            held.append(chunk)
        if not eof:
            return b""
        body = b"".join(held)
        held.clear()
        for regex, template, every in self.filters:
            if regex.text:
                text = body.decode("utf-8", "surrogateescape")
                body = substitute(regex, text, template, all=every).encode(
                    "utf-8", "surrogateescape"
                )
            else:
                body = substitute(regex, body, template, all=every)
        return body
