"""http-logger: each request's log entry, batched and POSTed to an HTTP(S) server.

APISIX's http-logger (priority 410), field for field: `uri` (required), `auth_header` (sent as
Authorization), `timeout` (seconds), `log_format` (or `plugin_metadata.http-logger.log_format`:
`{"key": "$var" or literal, nested objects allowed}`), `include_req_body` /
`include_req_body_expr` / `max_req_body_bytes`, `include_resp_body` / `include_resp_body_expr` /
`max_resp_body_bytes`, `concat_method` (`json`: one JSON array per batch, or a bare object when
`batch_max_size` is 1; `new_line`: one JSON document per line), `ssl_verify`, and the batch
processor's `name`, `batch_max_size`, `inactive_timeout`, `buffer_duration`, `max_retry_count`,
`retry_delay` (ando/observability/batch.py, shared with the VictoriaLogs pusher; at most
`plugin_metadata.http-logger.max_pending_entries` entries wait, the oldest dropped beyond).

The default entry is APISIX's: `request {url, uri, method, headers, querystring, size}`,
`response {status, headers, size}`, `server`, `upstream`, `latency`, `upstream_latency`,
`apisix_latency` (milliseconds), `client_ip`, `route_id`, `service_id`, `consumer {username}`,
`start_time` (epoch milliseconds). Unlike APISIX, credentials never reach the log server:
Authorization, Cookie, apikey-style query arguments, auth plugins' credential names and the node's
`access_log.redact` names are masked in headers, `querystring`, `uri` and `url`.

Sizes: `request.size` is the request head as received plus its declared body length;
`response.size` is the response head plus its Content-Length (or the collected body), as the
logger sees them (APISIX's bytes_sent counts the bytes written on the socket).

Why a configuration's class depends on its fields: a body filter re-frames every response
(chunked), and reading the request body buffers it; only configurations that include a body get
those phases, the others log from `header_filter` and `log` alone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from ando import __version__
from ando.observability.batch import BatchProcessor
from ando.observability.httpclient import HttpPoster, PushError, Target
from ando.observability.redact import Redactor, credential_names
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems, expr_problems
from ando.plugins.context import RequestContext, ResponseHead
from ando.router.expr import compile_expr

_KEY = "http-logger"  # ctx.data: (status, response header list) from header_filter
_BODY_KEY = "http-logger.body"  # ctx.data: collected response body chunks, or None
_DEFAULT_MAX_PENDING = 8192  # APISIX's max_pending_entries default
_FORMAT_DEPTH = 5  # nested log_format objects beyond this are cut, as APISIX does
_HOSTNAME = socket.gethostname()
_PLUGIN_BODY_LIMIT = 16 * 1024 * 1024  # what ctx.read_body() reads without a node body limit


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


def _format_fn(
    fmt: Mapping[str, Any], depth: int = 1
) -> Callable[[Callable[[str], Any]], dict[str, Any]]:
    """Compile a log_format once: `$name` values read a variable, others are literals."""
    items: list[tuple[str, int, Any]] = []  # (key, kind, value): 0 literal, 1 var, 2 nested
    for key, value in fmt.items():
        if isinstance(value, Mapping):
            if depth < _FORMAT_DEPTH:
                items.append((key, 2, _format_fn(value, depth + 1)))
        elif isinstance(value, str) and value.startswith("$"):
            items.append((key, 1, value[1:]))
        else:
            items.append((key, 0, value))

    def build(var: Callable[[str], Any]) -> dict[str, Any]:
        return {
            key: value if kind == 0 else var(value) if kind == 1 else value(var)
            for key, kind, value in items
        }

    return build


class HttpLogger(Plugin):
    name = "http-logger"
    priority = 410
    has_metadata_schema = True

    __slots__ = (
        "body_limit",
        "custom",
        "max_req_body",
        "max_resp_body",
        "processor",
        "redactor",
        "req_body_expr",
        "resp_body_expr",
        "server",
    )

    def __new__(cls, conf: dict[str, Any], build: BuildContext) -> HttpLogger:
        if cls is HttpLogger:
            bodies = (bool(conf.get("include_req_body")), bool(conf.get("include_resp_body")))
            cls = _VARIANTS[bodies]
        return super().__new__(cls)

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        """Once per config: the entry format, the masks, and this worker's batch processor for
        these sending settings (kept across reloads, so a reload loses no pending entry)."""
        super().__init__(conf, build)
        metadata = build.metadata or {}
        fmt = conf.get("log_format") or metadata.get("log_format")
        self.custom = _format_fn(fmt) if fmt else None
        node_redact = build.snapshot.node.observability.get("access_log", {}).get("redact", ())
        self.redactor: Redactor = build.per_snapshot(
            ("http-logger", "redactor"),
            lambda: Redactor(set(node_redact) | credential_names(build.snapshot)),
        )
        self.max_req_body = conf["max_req_body_bytes"]
        limit = int(build.snapshot.node.limits.get("max_body_size", 0) or 0)
        self.body_limit = limit or _PLUGIN_BODY_LIMIT
        self.max_resp_body = conf["max_resp_body_bytes"]
        req_expr = conf.get("include_req_body_expr")
        resp_expr = conf.get("include_resp_body_expr")
        self.req_body_expr = compile_expr(req_expr).evaluate if req_expr else None
        self.resp_body_expr = compile_expr(resp_expr).evaluate if resp_expr else None
        self.server = {"hostname": _HOSTNAME, "version": __version__}
        max_pending = int(metadata.get("max_pending_entries", _DEFAULT_MAX_PENDING))
        sending = (
            conf["uri"],
            conf.get("auth_header") or "",
            conf["timeout"],
            conf["ssl_verify"],
            conf["concat_method"],
            conf["name"],
            conf["batch_max_size"],
            conf["inactive_timeout"],
            conf["buffer_duration"],
            conf["max_retry_count"],
            conf["retry_delay"],
            max_pending,
        )
        self.processor: BatchProcessor = build.per_worker(
            ("http-logger", sending), lambda: _processor(conf, max_pending, build.log)
        )

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        """The URI must parse as http(s) with a host; the body expressions must compile."""
        problems: Problems = []
        try:
            Target.parse(conf["uri"])
        except ValueError as e:
            problems.append((("uri",), str(e)))
        for field in ("include_req_body_expr", "include_resp_body_expr"):
            if conf.get(field):
                problems += expr_problems(conf[field], (field,))
        return problems

    # --- phases ----------------------------------------------------------------------------

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        ctx.data[_KEY] = (head.status, head.headers)

    def log(self, ctx: RequestContext) -> None:
        entry = self._custom_entry(ctx) if self.custom is not None else self._full_entry(ctx)
        self.processor.push(orjson.dumps(entry, default=str))

    # --- the entry -------------------------------------------------------------------------

    def _custom_entry(self, ctx: RequestContext) -> dict[str, Any]:
        assert self.custom is not None
        entry = self.custom(lambda name: _variable(ctx, name))
        if ctx.route_id is not None:
            entry["route_id"] = ctx.route_id
            entry["service_id"] = ctx.service_id
        self._add_bodies(ctx, entry)
        return entry

    def _full_entry(self, ctx: RequestContext) -> dict[str, Any]:
        redactor = self.redactor
        var = ctx.var
        raw_uri = var("request_uri") or ctx.path
        path, sep, query = raw_uri.partition("?")
        uri = path + "?" + redactor.query(query.encode("latin-1")) if sep else path
        request_headers = ctx.headers
        head = ctx.data.get(_KEY)
        status, response_headers = (head[0], head[1]) if head is not None else (ctx.status, [])
        shown_response = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response_headers]
        latency = ctx.latency
        upstream_latency = ctx.upstream_latency
        route = ctx.route
        consumer = ctx.consumer_name
        entry: dict[str, Any] = {
            "request": {
                "url": f"{ctx.scheme}://{ctx.host}:{var('server_port')}{uri}",
                "uri": uri,
                "method": ctx.method,
                "headers": redactor.header_map(request_headers),
                "querystring": redactor.query_args(ctx.args),
                "size": _request_size(ctx, raw_uri, request_headers),
            },
            "response": {
                "status": ctx.status or status,
                "headers": redactor.header_map(shown_response),
                "size": _response_size(ctx, status, shown_response),
            },
            "server": self.server,
            "upstream": ctx.upstream_addr,
            "service_id": (ctx.service_id or "") if route is not None else ctx.host,
            "route_id": ctx.route_id,
            "client_ip": ctx.client_addr,
            "start_time": int((time.time() - latency) * 1000),
            "latency": _ms(latency),
            "upstream_latency": _ms(upstream_latency),
            "apisix_latency": _ms(latency - upstream_latency)
            if upstream_latency is not None
            else _ms(latency),
        }
        if consumer is not None:
            entry["consumer"] = {"username": consumer}
        self._add_bodies(ctx, entry)
        return entry

    def _add_bodies(self, ctx: RequestContext, entry: dict[str, Any]) -> None:
        if ctx.body and (self.req_body_expr is None or self.req_body_expr(ctx.var)):
            body = ctx.body[: self.max_req_body]
            entry.setdefault("request", {})["body"] = body.decode("utf-8", "replace")
        held = ctx.data.get(_BODY_KEY)
        if held:
            body = b"".join(held)[: self.max_resp_body]
            entry.setdefault("response", {})["body"] = body.decode("utf-8", "replace")


class _WithRequestBody(HttpLogger):
    """include_req_body: the body is read (buffered) before it goes upstream, so the log has it.
    Only a body the node would read anyway is taken: a declared length within the node's body
    limit (16 MiB without one); a larger or unbounded chunked body is logged without it rather
    than refused because of a logger."""

    __slots__ = ()

    def before_proxy(self, ctx: RequestContext) -> Response | Awaitable[None] | None:
        if not ctx.has_body:
            return None
        if self.req_body_expr is not None and not self.req_body_expr(ctx.var):
            return None
        length = ctx.header("content-length")
        if length is None or not length.isdigit() or int(length) > self.body_limit:
            return None
        return _read(ctx)


async def _read(ctx: RequestContext) -> None:
    await ctx.read_body()


class _WithResponseBody(HttpLogger):
    """include_resp_body: the response body is collected (up to max_resp_body_bytes) as it
    streams to the client, unchanged."""

    __slots__ = ()

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        ctx.data[_KEY] = (head.status, head.headers)
        if self.resp_body_expr is None or self.resp_body_expr(ctx.var):
            ctx.data[_BODY_KEY] = []

    def body_filter(self, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        held = ctx.data.get(_BODY_KEY)
        if held is not None and chunk:
            room = self.max_resp_body - sum(len(c) for c in held)
            if room > 0:
                held.append(chunk[:room])
        return chunk


class _WithBothBodies(_WithResponseBody, _WithRequestBody):
    __slots__ = ()


_VARIANTS: dict[tuple[bool, bool], type[HttpLogger]] = {
    (False, False): HttpLogger,
    (True, False): _WithRequestBody,
    (False, True): _WithResponseBody,
    (True, True): _WithBothBodies,
}


def _variable(ctx: RequestContext, name: str) -> Any:
    """A log_format variable: APISIX's request variables, plus the log-time ones."""
    extra = _LOG_VARS.get(name)
    return extra(ctx) if extra is not None else ctx.var(name)


_LOG_VARS: dict[str, Callable[[RequestContext], Any]] = {
    "time_iso8601": lambda ctx: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    "msec": lambda ctx: round(time.time(), 3),
    "request_time": lambda ctx: round(ctx.latency, 3),
    "upstream_response_time": lambda ctx: (
        round(ctx.upstream_latency, 3) if ctx.upstream_latency is not None else None
    ),
    "upstream_status": lambda ctx: ctx.upstream_status or None,
    "request_id": lambda ctx: ctx.header("x-request-id"),
}


def _request_size(ctx: RequestContext, raw_uri: str, headers: list[tuple[str, str]]) -> int:
    line = len(ctx.method) + len(raw_uri) + len(ctx.var("server_protocol") or "HTTP/1.1") + 4
    size = line + sum(len(k) + len(v) + 4 for k, v in headers) + 2
    length = ctx.header("content-length")
    if length is not None and length.isdigit():
        size += int(length)
    elif ctx.body:
        size += len(ctx.body)
    return size


def _response_size(ctx: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
    size = len(f"HTTP/1.1 {status} \r\n") + sum(len(k) + len(v) + 4 for k, v in headers) + 2
    for k, v in headers:
        if k.lower() == "content-length" and v.isdigit():
            return size + int(v)
    held = ctx.data.get(_BODY_KEY)
    return size + (sum(len(c) for c in held) if held else 0)


def _processor(
    conf: Mapping[str, Any], max_pending: int, log: Callable[..., Any]
) -> BatchProcessor:
    """The batch processor of one sending configuration, with APISIX's framing of a batch."""
    target = Target.parse(conf["uri"])
    headers = [("Authorization", conf["auth_header"])] if conf.get("auth_header") else []
    poster = HttpPoster(
        target, timeout=float(conf["timeout"]), headers=headers, verify_tls=conf["ssl_verify"]
    )
    single = conf["batch_max_size"] == 1
    as_array = conf["concat_method"] == "json" and not single

    async def send(batch: bytearray, count: int) -> None:
        body = b"[" + batch + b"]" if as_array else bytes(batch)
        status, answer = await poster.post(None, "application/json", body)
        if status >= 400:
            raise PushError(
                f"server returned status code[{status}] host[{target.host}] "
                f"port[{target.port}] body[{answer[:200].decode('latin-1')}]"
            )

    return BatchProcessor(
        send,
        name=conf["name"],
        batch_max_size=conf["batch_max_size"],
        inactive_timeout=conf["inactive_timeout"],
        buffer_duration=conf["buffer_duration"],
        max_retry_count=conf["max_retry_count"],
        retry_delay=conf["retry_delay"],
        max_pending=max_pending,
        separator=b"," if conf["concat_method"] == "json" else b"\n",
        log=log,
    )
