"""fault-injection: delay requests, or answer them in the gateway's place, to test resilience.

APISIX's fault-injection (priority 11000, rewrite phase). `delay` sleeps `duration` seconds (a
float) then lets the request go on; `abort` answers with `http_status`, `body` and `headers`
instead of proxying (no `body`: nginx's HTML page for the status, as APISIX's bare
`core.response.exit(code)`). Each has a `percentage` (sampled per request,
`random(1, 100) <= p`) and `vars`, a list of lua-resty-expr rules of which any one must match
(an empty list never does).
As in APISIX both `vars` are evaluated first, then the delay runs, then the abort is decided, so
a request can be delayed and then aborted. `body` and header values interpolate `$var` and
`${var ?? default}` the way APISIX's `core.utils.resolve_var` does (ando.plugins.vartemplate).

Only a delayed request leaves the synchronous fast path (the phase returns a coroutine then).

`header_value` and the header-name checks are shared with mocking.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems, expr_problems
from ando.plugins.context import RequestContext
from ando.plugins.pages import nginx_page
from ando.plugins.vartemplate import Lookup, VarTemplate, lua_tostring
from ando.router.expr import Expr, compile_expr

# An HTTP field name (RFC 9110 token): anything else would corrupt the response head.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The gateway frames its own responses; a configured value for these would contradict it.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_value(text: str) -> str:
    """A value safe to put in a response head: the UTF-8 bytes of `text` (Ando's header strings
    are bytes as latin-1), with control characters percent-encoded as ngx_lua does, so no
    request variable (`$arg_x` is percent-decoded) can split the response."""
    raw = text.encode("utf-8", "replace").decode("latin-1")
    if _UNSAFE.search(raw) is None:
        return raw
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", raw)


def check_headers(headers: Any, path: tuple[Any, ...]) -> Problems:
    """Response header names a plugin will send: tokens, and not the framing headers."""
    problems: Problems = []
    if not isinstance(headers, dict):
        return problems
    for name in headers:
        if TOKEN.fullmatch(name) is None:
            problems.append(((*path, name), f"{name!r} is not a valid HTTP header name"))
        elif name.lower() in FRAMING_HEADERS:
            problems.append(
                ((*path, name), f"{name} is set by the gateway itself and cannot be configured")
            )
    return problems


def check_vars(rules: Any, path: tuple[Any, ...]) -> Problems:
    problems: Problems = []
    for i, rule in enumerate(rules or ()):
        problems += expr_problems(rule, (*path, i))
    return problems


def _compile_vars(rules: list[Any] | None) -> tuple[Expr, ...] | None:
    if rules is None:
        return None
    return tuple(compile_expr(rule) for rule in rules)


def _matches(rules: tuple[Expr, ...], lookup: Lookup) -> bool:
    """APISIX's vars_match: any one rule; an empty list matches nothing."""
    for rule in rules:  # noqa: SIM110 (no generator object per request)
        if rule.evaluate(lookup):
            return True
    return False


def _hit(percentage: int | None) -> bool:
    return percentage is None or random.randint(1, 100) <= percentage


class FaultInjection(Plugin):
    name = "fault-injection"
    priority = 11000

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        abort = conf.get("abort")
        delay = conf.get("delay")
        self.abort = abort is not None
        self.abort_status = abort["http_status"] if abort else 0
        body = abort.get("body") if abort else None
        self.abort_body = VarTemplate(body) if body is not None else None
        if self.abort_status in (204, 304):
            self.abort_body = None  # a response that cannot carry one
        self.abort_headers = tuple(
            (name, VarTemplate(lua_tostring(value)))
            for name, value in ((abort or {}).get("headers") or {}).items()
        )
        # No body: APISIX's core.response.exit(code) is a bare ngx.exit, which answers with
        # nginx's HTML page for the status (empty for the statuses nginx has no page for).
        self.abort_page = nginx_page(self.abort_status) if self.abort_body is None else None
        self.abort_percentage: int | None = abort.get("percentage") if abort else None
        self.abort_vars = _compile_vars(abort.get("vars")) if abort else None
        self.delay = delay is not None and delay["duration"] > 0
        self.delay_duration: float = delay["duration"] if delay else 0.0
        self.delay_percentage: int | None = delay.get("percentage") if delay else None
        self.delay_vars = _compile_vars(delay.get("vars")) if delay else None

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems: Problems = []
        for part in ("abort", "delay"):
            section = conf.get(part)
            if isinstance(section, dict):
                problems += check_vars(section.get("vars"), (part, "vars"))
        abort = conf.get("abort")
        if isinstance(abort, dict):
            problems += check_headers(abort.get("headers"), ("abort", "headers"))
        return problems

    def rewrite(self, ctx: RequestContext) -> Response | Awaitable[Response | None] | None:
        lookup = ctx.var
        abort = self.abort and (self.abort_vars is None or _matches(self.abort_vars, lookup))
        if (
            self.delay
            and (self.delay_vars is None or _matches(self.delay_vars, lookup))
            and _hit(self.delay_percentage)
        ):
            return self._delayed(ctx, abort)
        return self._abort(ctx) if abort else None

    async def _delayed(self, ctx: RequestContext, abort: bool) -> Response | None:
        await asyncio.sleep(self.delay_duration)
        return self._abort(ctx) if abort else None

    def _abort(self, ctx: RequestContext) -> Response | None:
        if not _hit(self.abort_percentage):
            return None
        lookup = ctx.var
        headers = [(name, header_value(t.render(lookup))) for name, t in self.abort_headers]
        page = self.abort_page
        if page is not None:
            if page.body:  # nginx types its page text/html, whatever was set before
                headers = [h for h in headers if h[0].lower() != "content-type"]
            return Response(self.abort_status, page.body, [*headers, *page.headers])
        body = self.abort_body.render(lookup) if self.abort_body is not None else None
        return Response(self.abort_status, body, headers)
