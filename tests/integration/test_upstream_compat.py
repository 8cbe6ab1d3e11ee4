"""Upstream behaviour as APISIX 3.x has it, through a running gateway (one worker).

Each test is an upstream an APISIX user can bring over, and what its nodes then see.
"""

from __future__ import annotations

from typing import Any

from tests.support.client import request
from tests.support.gateway import GatewayProcess, wait_for
from tests.support.upstream import UpstreamServer, closed_port, echoed_headers

FAST = {"connect": 1, "send": 1, "read": 1}


def route(upstream: dict[str, Any]) -> dict[str, Any]:
    return {"routes": [{"id": "r", "uri": "/*", "upstream": upstream}]}


def test_pass_host_node_on_several_nodes_sends_each_node_its_own_host(tmp_path):
    # apisix/balancer.lua: with pass_host node, a retried node with another address gets its
    # own Host (host:port unless the port is the scheme's), the request recreated for it.
    dead = closed_port()
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        nodes = [
            {"host": "127.0.0.1", "port": dead, "weight": 1, "priority": 2},
            {"host": "127.0.0.1", "port": a.port, "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": b.port, "weight": 1, "priority": 0},
        ]
        cfg = route({"pass_host": "node", "nodes": nodes, "timeout": FAST})
        with GatewayProcess(cfg, tmp_path) as gw:
            r = request(gw.port, "GET", "/x", headers={"Host": "client.example"})
    assert r.status == 200, (r.status, r.body)
    assert r.json()["server"] == "a"  # the dead node was tried, then the next priority
    assert echoed_headers(r)["host"] == [f"127.0.0.1:{a.port}"]
    assert b.requests == []


def test_retries_on_a_one_node_upstream_try_that_node_again(tmp_path):
    # apisix/balancer.lua: pick_server returns the only node on every try, and retries (set
    # explicitly: the default for one node is 0) are tries of that node.
    with UpstreamServer("a") as a:
        cfg = route({"nodes": {a.addr: 1}, "retries": 2, "timeout": FAST})
        with GatewayProcess(cfg, tmp_path) as gw:
            r = request(gw.port, "GET", "/reset")
    assert r.status == 502, (r.status, r.body)
    assert [x["path"] for x in a.requests] == ["/reset"] * 3


def test_a_one_node_upstream_without_retries_tries_once(tmp_path):
    with (
        UpstreamServer("a") as a,
        GatewayProcess(route({"nodes": {a.addr: 1}, "timeout": FAST}), tmp_path) as gw,
    ):
        r = request(gw.port, "GET", "/reset")
    assert r.status == 502, (r.status, r.body)
    assert [x["path"] for x in a.requests] == ["/reset"]


def test_active_probe_sends_upstream_host_with_pass_host_rewrite(tmp_path):
    # apisix/upstream.lua create_checker: with pass_host rewrite the probe's Host is the
    # upstream_host the real requests carry, so a name-based backend answers the probe too.
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        up = {
            "id": "u",
            "pass_host": "rewrite",
            "upstream_host": "api.example",
            "nodes": {a.addr: 1, b.addr: 1},
            "checks": {"active": {"http_path": "/probe", "host": "probe.example"}},
        }
        cfg = {"upstreams": [up], "routes": [{"id": "r", "uri": "/*", "upstream_id": "u"}]}

        def probes() -> list[dict[str, Any]]:
            return [x for x in [*a.requests, *b.requests] if x["path"] == "/probe"]

        with GatewayProcess(cfg, tmp_path):
            wait_for(lambda: len(probes()) >= 2, "the first probes")
    hosts = {v for x in probes() for k, v in x["headers"] if k.lower() == "host"}
    assert hosts == {"api.example"}
