"""The per-worker gateway: owns the current compiled config and serves each request with it.

`swap` replaces the config with one reference assignment; a request keeps the RouteRuntime it was
matched with, so requests in flight finish on the config they started on.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ando.config.snapshot import Listener, Snapshot
from ando.http.server import HttpConnection, Limits, Request, gateway_headers, json_error
from ando.http.tls import CertTable, server_context
from ando.http.upstream import UpstreamPool
from ando.observability import batch
from ando.observability.access_log import AccessLog, add_tls
from ando.observability.access_log import configure as configure_access_log
from ando.observability.metrics import UNMATCHED, WorkerMetrics, max_series_of, request_length
from ando.plugins.base import Plugin, Response
from ando.plugins.context import _DATE_SERVER, RequestContext, header_bytes, header_name_bytes
from ando.plugins.shared import SharedDict
from ando.proxy.compiled import RouteRuntime, RuntimeConfig
from ando.proxy.exchange import ProxyExchange
from ando.proxy.health import HealthRegistry
from ando.proxy.pipeline import (
    UNMATCHED_STAGES,
    BodyCollector,
    BodyTooLarge,
    PluginFailed,
    filter_body,
    filter_head,
    is_final_status,
    run_log_phase,
    run_request_phases,
)
from ando.proxy.variables import Vars

_NOT_FOUND_MSG = "404 Route Not Found"
_NO_UPSTREAM_MSG = "503 Service Unavailable: missing upstream configuration in Route or Service"
_NOT_FOUND = json_error(404, _NOT_FOUND_MSG)
_NO_UPSTREAM = json_error(503, _NO_UPSTREAM_MSG)
_TIMEOUT_SWEEP = 0.25
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
# ctx.read_body() without a node body limit (ando.limits.max_body_size) reads at most this.
PLUGIN_BODY_LIMIT = 16 * 1024 * 1024


def limits_from(settings: Mapping[str, Any]) -> Limits:
    return Limits(
        header_timeout=float(settings.get("header_timeout", 60)),
        max_header_size=int(settings.get("max_header_size", 32768)),
        max_header_lines=int(settings.get("max_header_lines", 100)),
        max_request_line=int(settings.get("max_request_line", 8192)),
        max_body_size=int(settings.get("max_body_size", 0)),
        keepalive_timeout=float(settings.get("keepalive_timeout", 75)),
    )


class Gateway:
    def __init__(
        self,
        snapshot: Snapshot,
        shared_state: SharedDict | None = None,
        plugins: Mapping[str, type[Plugin]] | None = None,
    ) -> None:
        self.loop = asyncio.get_event_loop()
        # Node-wide plugin state: made by the master before fork, so all workers share it.
        self.shared_state = shared_state if shared_state is not None else SharedDict()
        self.worker_cache: dict[Any, Any] = {}  # plugins' per-worker clients, across reloads
        self.plugins = plugins  # None: the built-ins the config enables (`ando.plugins`)
        self.pool = UpstreamPool(self.loop)
        self.connections: set[HttpConnection] = set()
        self.inflight = 0
        self.accepted = 0  # connections, since the worker started
        self.requests = 0  # requests, since the worker started
        self.metrics = WorkerMetrics(max_series_of(snapshot.node.observability))
        self.health = HealthRegistry(self.log_event)
        self.draining = False
        # Exchanges with a deadline, for the sweep (an exchange leaves with one set.discard).
        self.tracked: set[ProxyExchange] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event | None = None
        self.access_log: AccessLog | None = None
        self.certs: CertTable | None = None
        self.config: RuntimeConfig | None = None
        self.limits: Limits
        self._body_reader = self._read_body  # bound once: every RequestContext gets it
        self.swap(snapshot)

    # --- config -------------------------------------------------------------------------------

    def swap(self, snapshot: Snapshot) -> None:
        """Build everything first, then switch with plain assignments (no await in between)."""
        config = RuntimeConfig(
            snapshot,
            shared_state=self.shared_state,
            plugins=self.plugins,
            log=self.log_event,
            worker_cache=self.worker_cache,
        )
        self.health.sync(config.health_checked)
        limits = limits_from(snapshot.node.limits)
        certs = self.certs
        if certs is None or self.config is None or snapshot.ssls != self.config.snapshot.ssls:
            certs = CertTable(snapshot.ssls.values())  # TLS contexts: rebuilt only on change
        access_log, retire_log = configure_access_log(
            snapshot, self.access_log, self.loop, self.log_event
        )
        self.config, self.limits, self.access_log, self.certs = config, limits, access_log, certs
        self.metrics.max_series = max_series_of(snapshot.node.observability)
        for conn in self.connections:
            conn.limits = limits
        retire_log()

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate moved the access log file): open it again by its path."""
        if self.access_log is not None:
            self.access_log.reopen()

    async def close_logs(self, timeout: float) -> None:
        """At worker exit, after the drain: write and push every log line still held (the
        access log, VictoriaLogs, http-logger batches), within `timeout` seconds."""
        closing = [batch.close_all(timeout)]
        if self.access_log is not None:
            closing.append(self.access_log.aclose(timeout))
        await asyncio.gather(*closing)

    def ssl_context(self, listener: Listener) -> ssl.SSLContext | None:
        """For `tls: true` listeners: certificates by SNI from the current config's ssls."""
        if not listener.tls:
            return None
        return server_context(lambda: self.certs)  # type: ignore[arg-type,return-value]

    def protocol_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        scheme = "https" if listener.tls else "http"

        def make() -> HttpConnection:
            conn = HttpConnection(
                self,
                self.limits,
                scheme=scheme,
                on_close=self.connections.discard,
                request_class=Vars,
            )
            self.connections.add(conn)
            self.accepted += 1
            if self.draining:
                self.loop.call_soon(conn.begin_drain)
            return conn

        return make

    # --- requests -----------------------------------------------------------------------------

    def on_request(self, conn: HttpConnection, req: Request) -> None:
        self.inflight += 1
        self.requests += 1
        config = self.config
        v: Vars = req  # type: ignore[assignment]  # what this gateway's connections parse into
        match = config.router.match(req.method, req.host, req.path, req.client_addr, v)
        if match is None:
            if config.global_chain is not None:
                if config.global_metrics:
                    v.metric = UNMATCHED
                self._with_plugins(conn, req, v, None, config.global_chain)
                return
            sent = conn.send_simple(req, 404, _NOT_FOUND)
            self._log(
                req, 404, sent, None, None, metric=UNMATCHED if config.global_metrics else None
            )
            return
        route = match.entry.payload
        v.route_id = route.id
        v.service_id = route.service_id
        if route.metrics is not None:
            v.metric = route.metrics.key(match.uri, req.host)
        if route.chain is not None:
            self._with_plugins(conn, req, v, route, route.chain)
            return
        upstream = route.upstream
        if upstream is None:
            sent = conn.send_simple(req, 503, _NO_UPSTREAM)
            self._log(req, 503, sent, route.id, route.service_id, metric=v.metric)
            return
        ProxyExchange(self, conn, v, route, upstream).start()

    # --- requests with plugins ----------------------------------------------------------------

    def _with_plugins(
        self, conn: HttpConnection, req: Request, v: Vars, route: RouteRuntime | None, chain: Any
    ) -> None:
        ctx = RequestContext(
            req,
            v,
            chain,
            route.record if route is not None else None,
            self._body_reader,
            conn,
        )
        v.ctx = ctx
        if route is not None and not chain.request_phases:  # response phases only
            upstream = route.upstream
            if upstream is not None:
                ProxyExchange(self, conn, v, route, upstream, ctx).start()
            else:
                self._proceed(conn, req, v, route, ctx)
            return
        try:
            result = (
                run_request_phases(ctx)
                if route is not None
                else run_request_phases(ctx, UNMATCHED_STAGES)
            )
        except PluginFailed as e:
            self._plugin_failed(conn, req, ctx, route, e)
            return
        if result is None or type(result) is Response:
            self._after_phases(conn, req, v, route, ctx, result)  # type: ignore[arg-type]
        else:
            task = self.loop.create_task(result)  # type: ignore[arg-type]
            task.add_done_callback(lambda t: self._resumed(t, conn, req, v, route, ctx))

    def _resumed(
        self,
        task: asyncio.Task[Response | None],
        conn: HttpConnection,
        req: Request,
        v: Vars,
        route: RouteRuntime | None,
        ctx: RequestContext,
    ) -> None:
        if req.lost:  # the client left (or was refused) while a plugin waited
            status = req.refusal[0] if req.refusal is not None else 499
            self._finish_plugin_request(req, ctx, route, status, 0)
            return
        error = task.exception() if not task.cancelled() else ConnectionError("cancelled")
        if isinstance(error, BodyTooLarge) or isinstance(
            getattr(error, "error", None), BodyTooLarge
        ):
            self._answer(
                conn, req, ctx, route, Response(413, {"error_msg": "413 Request Entity Too Large"})
            )
            return
        if error is not None:
            if not isinstance(error, PluginFailed):
                error = PluginFailed("?", "access", error)
            self._plugin_failed(conn, req, ctx, route, error)
            return
        self._after_phases(conn, req, v, route, ctx, task.result())

    def _after_phases(
        self,
        conn: HttpConnection,
        req: Request,
        v: Vars,
        route: RouteRuntime | None,
        ctx: RequestContext,
        result: Response | None,
    ) -> None:
        """The request phases are over: a plugin's answer, or on to the upstream."""
        if result is None:
            self._proceed(conn, req, v, route, ctx)
        else:
            self._answer(conn, req, ctx, route, result)

    def _proceed(
        self,
        conn: HttpConnection,
        req: Request,
        v: Vars,
        route: RouteRuntime | None,
        ctx: RequestContext,
    ) -> None:
        if route is None:
            self._answer(conn, req, ctx, None, Response(404, {"error_msg": _NOT_FOUND_MSG}))
            return
        upstream = ctx.upstream or route.upstream
        if upstream is None:
            self._answer(conn, req, ctx, route, Response(503, {"error_msg": _NO_UPSTREAM_MSG}))
            return
        ProxyExchange(self, conn, v, route, upstream, ctx).start()

    def _answer(
        self,
        conn: HttpConnection,
        req: Request,
        ctx: RequestContext,
        route: RouteRuntime | None,
        resp: Response,
    ) -> None:
        """A response made by a plugin (or by the gateway for a request with plugins): it goes
        through the response filters like an upstream's would."""
        try:
            if not is_final_status(resp.status):
                raise ValueError(f"status {resp.status!r} is not a final HTTP status")
            own = [
                (header_name_bytes(k), header_bytes(v))
                for k, v in resp.headers
                if k.lower() != "content-type"
            ]
            # The gateway's Date and Server, unless the answer sets its own (as APISIX's exit):
            # then the headers hold both from the start.
            named = {k.lower() for k, _ in own}
            if named.isdisjoint(_DATE_SERVER):
                head = filter_head(ctx, resp.status, own)
            else:
                headers = [h for h in gateway_headers() if h[0].lower() not in named] + own
                head = filter_head(ctx, resp.status, headers, True)
            status, headers = head.status, head.headers
            body = resp.body
            if ctx.chain.body_filter:
                body = filter_body(ctx, body, True)
        except PluginFailed as e:
            self._plugin_failed(conn, req, ctx, route, e, filters=False)
            return
        except ValueError as e:  # a status, header name or value that would break the response
            failure = PluginFailed("?", "answer", e)
            self._plugin_failed(conn, req, ctx, route, failure, filters=False)
            return
        content_type = resp.content_type.encode("latin-1")
        kept = []
        for k, v in headers:
            lower = k.lower()
            if lower == b"content-type":
                content_type = v
            elif lower not in _FRAMING:  # the gateway frames its own responses
                kept.append((k, v))
        headers = kept
        sent = conn.send_simple(
            req, status, body, headers, content_type=content_type, own_lines=not head.date_server
        )
        self._finish_plugin_request(req, ctx, route, status, sent)

    def _plugin_failed(
        self,
        conn: HttpConnection,
        req: Request,
        ctx: RequestContext,
        route: RouteRuntime | None,
        error: PluginFailed,
        *,
        filters: bool = True,
    ) -> None:
        self.log_event(
            "plugin_error",
            level="error",
            plugin=error.plugin,
            phase=error.phase,
            route_id=route.id if route is not None else None,
            error=repr(error.error),
            traceback=error.trace,
        )
        resp = Response(500, {"error_msg": "500 Internal Server Error"})
        if filters:
            self._answer(conn, req, ctx, route, resp)
            return
        sent = conn.send_simple(req, 500, resp.body, close=True)
        self._finish_plugin_request(req, ctx, route, 500, sent)

    def _finish_plugin_request(
        self, req: Request, ctx: RequestContext, route: RouteRuntime | None, status: int, sent: int
    ) -> None:
        ctx.status = status
        self._log(
            req, status, sent, route.id if route else None, route.service_id if route else None, ctx
        )

    def _read_body(self, conn: HttpConnection, req: Request) -> asyncio.Future[bytes]:
        limit = self.limits.max_body_size or PLUGIN_BODY_LIMIT
        return BodyCollector(conn, req, limit).start()

    def report_plugin_failure(self, error: PluginFailed, ctx: RequestContext) -> None:
        self.log_event(
            "plugin_error",
            level="error",
            plugin=error.plugin,
            phase=error.phase,
            route_id=ctx.route_id,
            error=repr(error.error),
            traceback=error.trace,
        )

    def request_finished(self, ex: ProxyExchange) -> None:
        ctx = ex.pctx
        if self.access_log is None and ex.req.metric is None and (ctx is None or not ctx.chain.log):
            # Nothing to log or count (what _finished would find out, argument by argument).
            if ctx is not None:
                ctx.var.ctx = None  # break the vars <-> context cycle (as _finished does)
            self.inflight -= 1
            if self.draining:
                self._check_idle()
            return
        req = ex.req
        route = ex.route
        if ctx is not None and ctx.chain.log:  # what log-phase plugins read
            ctx.status = ex.status
            ctx.upstream_status = ex.upstream_status
            ctx.upstream_addr = ex.node.addr if ex.node is not None else None
            ctx.upstream_latency = ex.upstream_latency
        self._finished(
            req,
            ex.status,
            ex.bytes_sent,
            route.id,
            route.service_id,
            ctx,
            ex.node.addr if ex.node is not None else None,
            ex.upstream_status or None,
            ex.upstream_latency,
            route.name,
            ex.conn.transport,
            ex.req.metric,
        )

    def _log(
        self,
        req: Request,
        status: int,
        sent: int,
        route_id: str | None,
        service_id: str | None,
        ctx: RequestContext | None = None,
        metric: tuple[str, str, str, str] | None = None,
    ) -> None:
        """A request the gateway answered itself (404, 503, a plugin's response)."""
        log = self.access_log
        name = log.route_names.get(route_id) if log is not None and route_id else None
        if ctx is not None:
            metric = ctx.var.metric
        self._finished(
            req, status, sent, route_id, service_id, ctx, None, None, None, name, None, metric
        )

    def _finished(
        self,
        req: Request,
        status: int,
        sent: int,
        route_id: str | None,
        service_id: str | None,
        ctx: RequestContext | None,
        upstream_addr: str | None,
        upstream_status: int | None,
        upstream_latency: float | None,
        route_name: str | None,
        transport: Any,
        metric: tuple[str, str, str, str] | None,
    ) -> None:
        """Every request ends here, once: the access log line, metrics, the plugins' log phase."""
        self.inflight -= 1
        log = self.access_log
        # Only when something reads it: the plain path with neither log nor metrics skips it.
        latency = (
            time.monotonic() - req.start
            if metric is not None or log is not None or (ctx is not None and ctx.chain.log)
            else 0.0
        )
        if metric is not None:
            node = ""
            if upstream_addr is not None:
                node = upstream_addr.rpartition(":")[0].strip("[]")
            self.metrics.record(
                metric,
                status,
                (ctx.consumer_name or "") if ctx is not None else "",
                node,
                latency,
                upstream_latency,
                request_length(req.method, req.target, req.headers, req.body_size),
                sent,
            )
        if log is not None:
            record = {
                "time": log.timestamp(time.time()),
                "request_id": _header_text(req, b"x-request-id"),
                "client_addr": req.client_addr,
                "method": req.method,
                "host": req.host,
                "path": req.path,
                "query": log.query(req.query) if req.query else None,
                "status": status,
                "bytes_sent": sent,
                "upstream_addr": upstream_addr,
                "upstream_status": upstream_status,
                "latency": int(latency * 1e6) / 1e6,
                "upstream_latency": int(upstream_latency * 1e6) / 1e6
                if upstream_latency is not None
                else None,
                "route_id": route_id,
                "route_name": route_name,
                "service_id": service_id,
                "consumer": ctx.consumer_name if ctx is not None else None,
            }
            if transport is not None and req.scheme == "https":
                add_tls(record, transport)
            log.write(record)
        if ctx is not None:
            if ctx.chain.log:
                ctx.latency = latency
                run_log_phase(ctx, self.report_plugin_failure)
            ctx.var.ctx = None  # break the vars <-> context cycle: refcounting frees both
        self._check_idle()

    def metrics_report(self) -> dict[str, Any]:
        """This worker's totals for the master (ando/runtime/metrics_server.py), with the
        connection states nginx's stub_status reports."""
        reading = writing = waiting = 0
        for conn in self.connections:
            state = conn.state
            if state == "writing":
                writing += 1
            elif state == "reading":
                reading += 1
            else:
                waiting += 1
        return {
            "metrics": self.metrics.dump(),
            "accepted": self.accepted,
            "handled": self.accepted,
            "requests": self.requests,
            "active": len(self.connections),
            "reading": reading,
            "writing": writing,
            "waiting": waiting,
            "log_dropped": batch.dropped_by_pusher(),
            "upstream_status": self.health.status(),
        }

    def log_event(self, event: str, level: str = "warn", **fields: Any) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "level": level,
            "event": event,
        }
        record.update(fields)
        sys.stderr.write(orjson.dumps(record).decode() + "\n")
        if self.access_log is not None:
            self.access_log.event(record)  # to VictoriaLogs too, when it is configured

    # --- timeouts -----------------------------------------------------------------------------

    def track(self, ex: ProxyExchange) -> None:
        """Exchanges with a deadline are checked by one sweep every 250 ms, not a timer each."""
        self.tracked.add(ex)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(_TIMEOUT_SWEEP, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for ex in [e for e in self.tracked if e.deadline is not None and e.deadline <= now]:
            self.tracked.discard(ex)
            ex.tracked = False
            try:
                ex.on_timeout()
            except Exception as e:  # never let one request's failure stop the sweep
                self.log_event("timeout_handler_failed", error=repr(e))
        if self.tracked:
            self._sweeper = self.loop.call_later(_TIMEOUT_SWEEP, self._sweep)

    # --- shutdown -----------------------------------------------------------------------------

    def begin_drain(self) -> None:
        self.draining = True
        self.health.stop_all()
        for conn in list(self.connections):
            conn.begin_drain()
        self.pool.close_all()

    async def wait_idle(self, timeout: float) -> bool:
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if self.inflight <= 0 and all(c.idle for c in self.connections):
                return True
            await asyncio.sleep(0.05)
        return self.inflight <= 0

    def _check_idle(self) -> None:
        if self.draining and self.inflight <= 0:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()


def _header_text(req: Request, name: bytes) -> str | None:
    value = req.header(name)
    return value.decode("latin-1").rstrip(" \t") if value is not None else None
