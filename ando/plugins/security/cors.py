"""cors: answer CORS preflights at the gateway and add CORS headers to responses.

APISIX 3.x's cors, priority 4000:

- `rewrite`: every OPTIONS request is answered by the gateway with 200 and an empty body (APISIX
  does not forward OPTIONS on a route with cors), so a preflight never reaches the upstream; the
  request's Origin is kept for `header_filter` (a later plugin may change request headers).
- `header_filter`, on every response (the upstream's, the preflight's, and gateway-made ones
  such as a 401 from an auth plugin or a 502): when the Origin is allowed, set
  Access-Control-Allow-Origin (and `Vary: Origin` unless it is `*`), -Allow-Methods, -Max-Age,
  -Expose-Headers (only when `expose_headers` is set), -Allow-Headers, and -Allow-Credentials
  when `allow_credential`. An Origin that is not allowed gets no CORS header at all.

Which Origin is allowed, in APISIX's order:

1. `allow_origins_by_metadata`: names of entries of `plugin_metadata.cors.allow_origins`; an
   Origin one of them allows is allowed. When none does and `allow_origins` is the default `*`,
   the Origin is refused (the metadata list is then the only list).
2. Otherwise `allow_origins_by_regex`, when set, is the only rule (regexes searched in the
   Origin); else `allow_origins`: `*` (any, answered `*`), `**` (any, answered with the request's
   Origin), one origin, or a comma-separated list.

`allow_credential: true` cannot be combined with `*` in the other fields (CORS forbids it; APISIX
refuses the conf), only with `**`. `timing_allow_origins` / `timing_allow_origins_by_regex` set
Timing-Allow-Origin the same way.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext, ResponseHead
from ando.plugins.security._checks import Problems, compile_all, regex_problems

ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
_PREFLIGHT = Response(200)
_ORIGIN_KEY = "cors:origin"  # ctx.data: the request's Origin as rewrite saw it
_UNSEEN = object()
_ACAO = b"Access-Control-Allow-Origin"
_ACAH = b"Access-Control-Allow-Headers"
_VARY_ORIGIN = (b"Vary", b"Origin")


class OriginRule:
    """One `allow_origins`-style value: `*`, `**`, an origin, or a comma-separated list."""

    __slots__ = ("any", "listed", "reflect", "single")

    def __init__(self, value: str) -> None:
        self.reflect = value == "**"
        self.any = value == "*"
        self.listed: frozenset[str] | None = (
            frozenset(v for v in value.split(",") if v) if "," in value else None
        )
        self.single = value

    def allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None when it is refused."""
        if self.reflect:
            return origin or "*"
        if self.any:
            return "*"
        if self.listed is not None:
            return origin if origin in self.listed else None
        return origin if origin == self.single else None


class Cors(Plugin):
    __slots__ = (
        "by_metadata",
        "by_regex",
        "fixed",
        "metadata_only",
        "origins",
        "reflect_headers",
        "replaced",
        "timing",
        "timing_regex",
    )

    name = "cors"
    priority = 4000
    has_metadata_schema = True

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.origins = OriginRule(conf["allow_origins"])
        regex = conf.get("allow_origins_by_regex")
        self.by_regex = compile_all(regex) if regex else None
        keys = conf.get("allow_origins_by_metadata")
        self.by_metadata: tuple[OriginRule, ...] | None = None
        if keys:
            table = (build.metadata or {}).get("allow_origins") or {}
            self.by_metadata = tuple(OriginRule(table[k]) for k in keys if k in table)
        # With metadata names, the default "*" does not widen a metadata miss to every origin.
        self.metadata_only = conf["allow_origins"] == "*"
        # The headers that do not depend on the request, ready as the response head holds them;
        # `replaced`: the names this instance owns (an upstream's values for them are dropped).
        methods = conf["allow_methods"]
        fixed = [
            (b"Access-Control-Allow-Methods", ALL_METHODS if methods == "**" else methods),
            (b"Access-Control-Max-Age", str(conf["max_age"])),
        ]
        if conf.get("expose_headers"):
            fixed.append((b"Access-Control-Expose-Headers", conf["expose_headers"]))
        self.reflect_headers = conf["allow_headers"] == "**"
        if not self.reflect_headers:
            fixed.append((_ACAH, conf["allow_headers"]))
        if conf["allow_credential"]:
            fixed.append((b"Access-Control-Allow-Credentials", "true"))
        self.fixed = tuple((k, v.encode("latin-1")) for k, v in fixed)
        self.replaced = frozenset({_ACAO.lower(), _ACAH.lower()} | {k.lower() for k, _ in fixed})
        assert all(n.startswith(b"access-control-") for n in self.replaced)  # header_filter's test
        timing = conf.get("timing_allow_origins")
        timing_regex = conf.get("timing_allow_origins_by_regex")
        self.timing_regex = compile_all(timing_regex) if timing_regex else None
        self.timing = OriginRule(timing) if timing and not timing_regex else None

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems = regex_problems(conf, "allow_origins_by_regex")
        problems += regex_problems(conf, "timing_allow_origins_by_regex")
        if conf.get("allow_credential"):
            starred = [
                f
                for f in (
                    "allow_origins",
                    "allow_methods",
                    "allow_headers",
                    "expose_headers",
                    "timing_allow_origins",
                )
                if conf.get(f) == "*"
            ]
            if starred:
                fields = ", ".join(starred)
                problems.append(
                    (
                        ("allow_credential",),
                        "you can not set '*' for other option when 'allow_credential' is true"
                        f" ('*' in {fields}: list the values, or use '**')",
                    )
                )
        return problems

    def rewrite(self, ctx: RequestContext) -> Response | None:
        ctx.data[_ORIGIN_KEY] = ctx.header("Origin")
        if ctx.method == "OPTIONS":
            return _PREFLIGHT
        return None

    def allowed_origin(self, origin: str | None) -> str | None:
        """Access-Control-Allow-Origin for a request from `origin`, or None: no CORS headers."""
        if self.by_metadata is not None:
            for rule in self.by_metadata:
                if origin is not None and rule.allowed(origin) is not None:
                    return origin
            if self.metadata_only:
                return None
        if self.by_regex is not None:
            if origin is None:
                return None
            for p in self.by_regex:
                if p.search(origin) is not None:
                    return origin
            return None
        return self.origins.allowed(origin)

    def _timing_origin(self, origin: str | None) -> str | None:
        if self.timing_regex is not None:
            if origin is not None:
                for p in self.timing_regex:
                    if p.search(origin) is not None:
                        return origin
            return None
        return self.timing.allowed(origin) if self.timing is not None else None

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        data = ctx.data
        origin = data.get(_ORIGIN_KEY, _UNSEEN)
        if origin is _UNSEEN:  # rewrite did not run (an earlier global rule answered)
            origin = ctx.header("Origin")
        allow = self.allowed_origin(origin)  # type: ignore[arg-type]
        if allow is not None:
            headers = head.headers
            # Every name this instance owns starts with Access-Control-: one search over the
            # names joined says whether the response has one (it rarely does).
            if b"access-control-" in b"\n".join([k for k, _ in headers]).lower():
                replaced = self.replaced
                headers[:] = [(k, v) for k, v in headers if k.lower() not in replaced]
            headers.append((_ACAO, allow.encode("latin-1")))
            if allow != "*":
                headers.append(_VARY_ORIGIN)
            headers.extend(self.fixed)
            if self.reflect_headers:  # "**": whatever the preflight asks for
                asked = ctx.header("Access-Control-Request-Headers")
                if asked is not None:
                    headers.append((_ACAH, asked.encode("latin-1")))
        if self.timing is not None or self.timing_regex is not None:
            timing = self._timing_origin(origin)  # type: ignore[arg-type]
            if timing is not None:
                head.set("Timing-Allow-Origin", timing)
