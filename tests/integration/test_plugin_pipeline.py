"""The plugin pipeline through real sockets: a gateway in this process (so test plugins can be
plugged in) in front of a real upstream. What a plugin author relies on: a refusal ends the
request, a failing plugin fails only its request, async phases, reading the body, and the response
filters on streamed, chunked and gateway-made responses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from ando.config.snapshot import Listener
from ando.config.source import snapshot_from_text
from ando.plugins.base import Plugin, Response
from ando.plugins.catalog import PluginCatalog, PluginSpec
from ando.plugins.context import RequestContext, ResponseHead
from tests.support.client import request
from tests.support.upstream import UpstreamServer, free_port


class Boom(Plugin):
    name, priority = "boom", 100

    def access(self, ctx: RequestContext) -> Response | None:
        if ctx.header("x-boom"):
            raise RuntimeError("kaboom")
        return None


class Slow(Plugin):
    """Waits, then marks the upstream request: the async path."""

    name, priority = "slow", 200

    def access(self, ctx: RequestContext) -> Any:
        if ctx.header("x-slow") is None:
            return None
        return self._later(ctx)

    async def _later(self, ctx: RequestContext) -> Response | None:
        await asyncio.sleep(0.05)
        if ctx.header("x-slow") == "deny":
            return Response(429, {"message": "slow no"})
        ctx.set_header("X-Slow-Done", "1")
        return None


class BodyLen(Plugin):
    """Reads the whole body in access and tells the upstream its length."""

    name, priority = "body-len", 300

    async def access(self, ctx: RequestContext) -> Response | None:
        body = await ctx.read_body()
        ctx.set_header("X-Seen-Body", str(len(body)))
        return None


class Shout(Plugin):
    """header_filter adds a header and changes the status; body_filter upper-cases."""

    name, priority = "shout", 400

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        head.set("X-Shout", "yes")
        if head.status == 404:
            head.status = 410

    def body_filter(self, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        return chunk.upper() + (b"!" if eof else b"")


class Logs(Plugin):
    name, priority = "logs", 500
    seen: ClassVar[list[tuple[str, int, str | None]]] = []

    def log(self, ctx: RequestContext) -> None:
        Logs.seen.append((ctx.path, ctx.status, ctx.route_id))


CLASSES = {c.name: c for c in (Boom, Slow, BodyLen, Shout, Logs)}
CATALOG = PluginCatalog.of(
    PluginSpec(c.name, c.priority, {"type": "object"}) for c in CLASSES.values()
)


class InProcessGateway:
    """A Gateway on its own uvloop thread, with the test plugins above."""

    def __init__(self, text: str) -> None:
        self.port = free_port()
        self.snapshot = snapshot_from_text(text, "t.yaml", environ={}, catalog=CATALOG)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ando.proxy.gateway import Gateway

        asyncio.set_event_loop(self.loop)
        self.gateway = Gateway(self.snapshot, plugins=CLASSES)
        self.gateway.access_log = None
        listener = Listener("127.0.0.1", self.port, False, False)
        server = self.loop.run_until_complete(
            self.loop.create_server(self.gateway.protocol_factory(listener), "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def __enter__(self) -> InProcessGateway:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer("up") as up:
        yield up


@pytest.fixture(scope="module")
def gw(upstream: UpstreamServer) -> Iterator[InProcessGateway]:
    text = f"""
global_rules: [{{id: g, plugins: {{logs: {{}}}}}}]
routes:
  - {{id: boom, uri: /boom, plugins: {{boom: {{}}}}, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
  - {{id: slow, uri: /slow, plugins: {{slow: {{}}}}, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
  - {{id: body, uri: /body, plugins: {{body-len: {{}}}}, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
  - {{id: shout, uris: [/chunked, /status/*], plugins: {{shout: {{}}}}, upstream: {{nodes: {{"{upstream.addr}": 1}}}}}}
"""
    with InProcessGateway(text) as g:
        yield g


def test_a_failing_plugin_fails_its_request_with_500_and_the_worker_serves_on(gw):
    r = request(gw.port, path="/boom", headers={"X-Boom": "1"})
    assert r.status == 500
    assert r.json() == {"error_msg": "500 Internal Server Error"}
    assert request(gw.port, path="/boom").status == 200


def test_an_async_phase_continues_the_request_or_refuses_it(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, path="/slow", headers={"X-Slow": "go"})
    assert r.status == 200
    assert ("X-Slow-Done", "1") in [tuple(h) for h in r.json()["headers"]]
    r = request(gw.port, path="/slow", headers={"X-Slow": "deny"})
    assert (r.status, r.json()) == (429, {"message": "slow no"})
    assert len(upstream.requests) == 1


def test_a_plugin_reads_the_body_and_the_upstream_still_gets_all_of_it(gw):
    body = b"0123456789" * 10_000
    r = request(gw.port, "POST", "/body", body=body)
    got = r.json()
    assert got["body_len"] == len(body)
    assert ("X-Seen-Body", str(len(body))) in [tuple(h) for h in got["headers"]]
    # chunked too
    r = request(
        gw.port,
        "POST",
        "/body",
        headers={"Transfer-Encoding": "chunked"},
        body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert r.json()["body_len"] == 11


def test_response_filters_apply_to_upstream_bodies_chunked_or_not(gw):
    r = request(gw.port, path="/chunked?n=3&size=4")
    assert r.status == 200
    assert r.header("X-Shout") == "yes"
    assert r.header("Transfer-Encoding") == "chunked"  # the length changed: re-framed
    assert r.body == b"AAAABBBBCCCC!"
    r = request(gw.port, path="/status/404")
    assert r.status == 410 and r.body == b"STATUS 404!"


def test_the_log_phase_sees_every_finished_request_also_unmatched_ones(gw):
    Logs.seen.clear()
    request(gw.port, path="/slow")
    request(gw.port, path="/nowhere")
    expected = [("/slow", 200, "slow"), ("/nowhere", 404, None)]
    # Wait for these two entries, not for any two: a request of an earlier test may finish
    # (and log) after the clear above.
    deadline = 250
    while not all(e in Logs.seen for e in expected) and deadline:
        deadline -= 1
        threading.Event().wait(0.02)
    assert ("/slow", 200, "slow") in Logs.seen
    assert ("/nowhere", 404, None) in Logs.seen
