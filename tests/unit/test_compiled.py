"""The Snapshot compiled for serving: inheritance from services, defaults derived from upstreams."""

from __future__ import annotations

from ando.config.source import snapshot_from_text
from ando.proxy.compiled import RuntimeConfig

TEXT = """
services:
  - id: ws
    enable_websocket: true
    hosts: [svc.example.com]
    upstream: {nodes: {"127.0.0.1:1980": 1, "127.0.0.1:1981": 1, "127.0.0.1:1982": 0}}
upstreams:
  - id: u
    nodes: {"127.0.0.1:1990": 1}
    timeout: {connect: 1, send: 2, read: 3}
routes:
  - {id: inherits, uri: /a, service_id: ws}
  - {id: refuses, uri: /b, service_id: ws, enable_websocket: false}
  - {id: own, uri: /c, upstream_id: u, timeout: {connect: 4, send: 5, read: 6}}
  - {id: upstream-timeout, uri: /d, upstream_id: u}
  - {id: both, uri: /e, upstream_id: u, upstream: {nodes: {"127.0.0.1:1999": 1}}}
"""


def routes() -> dict:
    config = RuntimeConfig(snapshot_from_text(TEXT, "t.yaml", environ={}))
    return {r.id: r for r in config.routes}


def test_enable_websocket_comes_from_the_service_unless_the_route_sets_it():
    r = routes()
    assert r["inherits"].websocket is True
    assert r["refuses"].websocket is False  # an explicit false wins, as in APISIX
    assert r["own"].websocket is False


def test_route_inherits_the_service_upstream_and_retries_default_to_usable_nodes_minus_one():
    r = routes()
    up = r["inherits"].upstream
    assert up is not None and {n.addr for n in up.nodes} >= {"127.0.0.1:1980", "127.0.0.1:1981"}
    assert up.max_attempts == 2  # weight-0 nodes are not counted


def test_route_timeout_overrides_the_upstream_timeout():
    r = routes()
    assert (r["own"].timeout.connect, r["own"].timeout.read) == (4.0, 6.0)
    assert (r["upstream-timeout"].timeout.connect, r["upstream-timeout"].timeout.read) == (1.0, 3.0)


def test_upstream_id_wins_over_an_inline_upstream_as_in_apisix():
    # apisix/upstream.lua fetch(): a route's upstream_id is looked up first.
    assert [n.addr for n in routes()["both"].upstream.nodes] == ["127.0.0.1:1990"]
