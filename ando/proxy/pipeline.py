"""Running a request's plugin phases: rewrite, access and before_proxy up to the proxy, the
response filters on the way back, and log at the end.

The request phases run synchronously, in one call, for as long as every plugin answers at once
(the usual case: auth, headers, local counters). The first plugin that returns an awaitable (a
delay, Redis) moves the rest of the run into a task; the HTTP layer keeps buffering the body
meanwhile, with its usual back-pressure.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ando.plugins.base import Response
from ando.plugins.context import _DATE_SERVER, RequestContext, ResponseHead

if TYPE_CHECKING:
    from ando.http.server import HttpConnection, Request
    from ando.plugins.chain import Entry

# The request-side stages of a chain (ando/plugins/chain.py): global rules' rewrite and access,
# the route's rewrite; then, once a consumer is known, the rewrite of the plugins it brought;
# then access and before_proxy. A request that matched no route runs only the first stage (the
# global rules: its chain has no route plugins).
# Stage 0 before_consumer, 1 consumer_rewrite, 2 after_consumer (PluginChain.stages); a failure
# names its plugin's phase (Entry.phase), not the stage.
_CONSUMER_STAGE = 1
UNMATCHED_STAGES = 1
ALL_STAGES = 3


class PluginFailed(Exception):
    """A plugin raised: the request fails with 500; the message names the plugin."""

    def __init__(self, plugin: str, phase: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin} failed in {phase}: {error!r}")
        self.plugin = plugin
        self.phase = phase
        self.error = error
        self.trace = "".join(traceback.format_exception(error)).strip()


def run_request_phases(
    ctx: RequestContext, end: int = ALL_STAGES, stage: int = 0, index: int = 0
) -> Response | Awaitable[Response | None] | None:
    """None to go on to the upstream, a Response to answer with, or an awaitable of either
    once a plugin had to wait. Raises PluginFailed."""
    while stage < end:
        if stage == _CONSUMER_STAGE and index == 0:
            consumer = ctx.consumer
            if consumer is None:
                stage += 1
                continue
            ctx.chain = ctx.chain.for_consumer(consumer)
        entries = ctx.chain.stages[stage]
        for entry in entries[index:] if index else entries:
            index += 1
            try:
                result = entry.fn(ctx)
            except Exception as e:
                raise PluginFailed(entry.name, entry.phase, e) from e
            if result is None:
                continue
            if type(result) is Response:
                return result
            return _resume(ctx, result, entry, end, stage, index)
        stage += 1
        index = 0
    return None


async def _resume(
    ctx: RequestContext, pending: Any, entry: Entry, end: int, stage: int, index: int
) -> Response | None:
    try:
        result = await pending
    except Exception as e:
        raise PluginFailed(entry.name, entry.phase, e) from e
    if result is not None:
        if not isinstance(result, Response):
            raise PluginFailed(entry.name, entry.phase, TypeError(f"returned {result!r}"))
        return result
    rest = run_request_phases(ctx, end, stage, index)
    if rest is None or type(rest) is Response:
        return rest  # type: ignore[return-value]
    return await rest  # type: ignore[misc]


def filter_head(
    ctx: RequestContext,
    status: int,
    headers: list[tuple[bytes, bytes]],
    date_server: bool = False,
) -> ResponseHead:
    """Headers earlier phases asked for, then every header_filter. Raises PluginFailed.
    `date_server`: `headers` already hold the Date and Server to send (ResponseHead's)."""
    head = ResponseHead(status, headers, date_server)
    extra = ctx.response_headers
    if extra:
        if not date_server:
            for entry in extra:
                if entry[1] in _DATE_SERVER:
                    head.take_date_server()
                    break
        head.headers = _merge(head.headers, extra)
    ctx.status = status
    for entry in ctx.chain.header_filter:
        try:
            entry.fn(ctx, head)
        except Exception as e:
            raise PluginFailed(entry.name, "header_filter", e) from e
        if head.status != ctx.status:
            if not is_final_status(head.status):
                problem = ValueError(f"status {head.status!r} is not a final HTTP status")
                raise PluginFailed(entry.name, "header_filter", problem)
            ctx.status = head.status
    return head


def is_final_status(status: object) -> bool:
    """What a plugin may answer with or turn a response into: three digits, not 1xx. A 1xx
    would tell the client another response follows (the body after it would be read as one);
    600-999 are what RFC 9110 tells clients to treat as 5xx (redirect's ret_code allows them)."""
    return type(status) is int and 200 <= status <= 999


def _merge(
    headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes, bytes, bool | None]]
) -> list[tuple[bytes, bytes]]:
    """The response headers earlier phases set (replacing), added, or added by default (unless
    the response, or a set or add, has that name), in that order. Each name is lower-cased once."""
    lowers = [k.lower() for k, _ in headers]
    replaced = {lower for _, lower, _, how in extra if how is False}
    if replaced and not replaced.isdisjoint(lowers):
        kept = [i for i, lower in enumerate(lowers) if lower not in replaced]
        headers = [headers[i] for i in kept]
        lowers = [lowers[i] for i in kept]
    defaults = False
    for key, lower, raw, how in extra:
        if how is None:
            defaults = True
        else:
            headers.append((key, raw))
            lowers.append(lower)
    if defaults:
        for key, lower, raw, how in extra:
            if how is None and lower not in lowers:
                headers.append((key, raw))
                lowers.append(lower)
    return headers


def filter_body(ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
    """`chunk` through every body_filter in order. Raises PluginFailed."""
    for entry in ctx.chain.body_filter:
        try:
            chunk = entry.fn(ctx, chunk, eof)
        except Exception as e:
            raise PluginFailed(entry.name, "body_filter", e) from e
    return chunk


def run_log_phase(ctx: RequestContext, report: Any) -> None:
    for entry in ctx.chain.log:
        try:
            entry.fn(ctx)
        except Exception as e:
            report(PluginFailed(entry.name, "log", e), ctx)


class BodyCollector:
    """Reads a whole request body for a plugin (`ctx.read_body()`), then hands it back to the
    request as if it had just been buffered, so the proxy still sends it upstream."""

    __slots__ = ("conn", "future", "limit", "parts", "req", "size")

    def __init__(self, conn: HttpConnection, req: Request, limit: int) -> None:
        self.conn = conn
        self.req = req
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def start(self) -> asyncio.Future[bytes]:
        req = self.req
        if req.expect_continue and not req.body_done and not req.body_parts:
            self.conn.send_continue()
        req.attach(self)
        if not self.future.done():
            self.conn.resume_reading()
        return self.future

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.future.done():
                self.future.set_exception(BodyTooLarge(self.limit))
            return
        self.parts.append(data)

    def on_body_end(self) -> None:
        if self.future.done():
            return
        body = b"".join(self.parts)
        req = self.req
        req.exchange = None
        req.body_parts = [body] if body else None  # replayed to the proxy, as a buffered body
        self.future.set_result(body)

    def on_client_pause(self) -> None:
        pass

    def on_client_resume(self) -> None:
        pass

    def on_client_lost(self) -> None:
        if not self.future.done():
            self.future.set_exception(ConnectionError("client closed the connection"))

    def on_tunnel_data(self, data: bytes) -> None:
        pass


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit
