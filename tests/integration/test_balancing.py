"""Load balancing through a running gateway (one worker): which node answers which request.

Each upstream names itself in its echo body (`server`), so the tests count answers per node.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, closed_port, free_port


def served_by(port: int, path: str = "/", **kw: Any) -> str:
    r = request(port, "GET", path, **kw)
    assert r.status == 200, (r.status, r.body)
    return r.json()["server"]


def route(upstream: dict[str, Any], uri: str = "/*") -> dict[str, Any]:
    return {"routes": [{"id": "r", "uri": uri, "upstream": upstream}]}


def test_roundrobin_weights_exact_counts(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route({"type": "roundrobin", "nodes": {a.addr: 3, b.addr: 1}})
        with GatewayProcess(cfg, tmp_path) as gw:
            seq = [served_by(gw.port) for _ in range(40)]
    counts = collections.Counter(seq)
    assert counts == {"a": 30, "b": 10}
    # smooth WRR interleaves: every window of 4 consecutive picks holds exactly one "b"
    for i in range(0, 40, 4):
        assert seq[i : i + 4].count("b") == 1, seq


def test_roundrobin_list_nodes_equal_weights(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b, UpstreamServer("c") as c:
        nodes = [{"host": "127.0.0.1", "port": u.port, "weight": 1} for u in (a, b, c)]
        with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
            counts = collections.Counter(served_by(gw.port) for _ in range(30))
    assert counts == {"a": 10, "b": 10, "c": 10}


def test_weight_zero_node_gets_nothing(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route({"nodes": {a.addr: 1, b.addr: 0}})
        with GatewayProcess(cfg, tmp_path) as gw:
            counts = collections.Counter(served_by(gw.port) for _ in range(10))
    assert counts == {"a": 10}
    assert b.requests == []


def test_chash_header_is_sticky_and_spreads(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b, UpstreamServer("c") as c:
        cfg = route(
            {
                "type": "chash",
                "hash_on": "header",
                "key": "X-User",
                "nodes": {a.addr: 1, b.addr: 1, c.addr: 1},
            }
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            first = {}
            for i in range(30):
                first[f"user-{i}"] = served_by(gw.port, headers={"X-User": f"user-{i}"})
            # the same key lands on the same node every time
            for i in range(0, 30, 3):
                key = f"user-{i}"
                again = [served_by(gw.port, headers={"X-User": key}) for _ in range(3)]
                assert again == [first[key]] * 3, key
    spread = collections.Counter(first.values())
    assert len(spread) == 3, spread  # 30 keys over 3 nodes: all of them are used


def test_chash_missing_key_falls_back_to_client_address(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route(
            {"type": "chash", "hash_on": "header", "key": "X-User", "nodes": {a.addr: 1, b.addr: 1}}
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            seen = {served_by(gw.port) for _ in range(10)}
    assert len(seen) == 1  # always 127.0.0.1


def test_chash_on_arg_var(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route(
            {"type": "chash", "hash_on": "vars", "key": "arg_id", "nodes": {a.addr: 1, b.addr: 1}}
        )
        with GatewayProcess(cfg, tmp_path) as gw:
            for i in range(10):
                first = served_by(gw.port, f"/x?id={i}")
                assert served_by(gw.port, f"/y?id={i}") == first


def test_least_conn_prefers_the_idle_node(tmp_path):
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        cfg = route({"type": "least_conn", "nodes": {a.addr: 1, b.addr: 1}})
        with GatewayProcess(cfg, tmp_path) as gw:
            slow: list[str] = []
            t = threading.Thread(target=lambda: slow.append(served_by(gw.port, "/delay?ms=1500")))
            t.start()
            try:
                # wait (bounded) until the slow request reached its node
                for _ in range(200):
                    if any(r["path"] == "/delay" for r in a.requests + b.requests):
                        break
                    threading.Event().wait(0.01)
                busy = "a" if any(r["path"] == "/delay" for r in a.requests) else "b"
                quick = [served_by(gw.port, "/quick") for _ in range(6)]
            finally:
                t.join(10)
    assert slow == [busy]
    idle = "b" if busy == "a" else "a"
    assert quick == [idle] * 6


def test_priority_failover_and_back(tmp_path):
    port = free_port()
    with UpstreamServer("backup") as backup:
        nodes = [
            {"host": "127.0.0.1", "port": port, "weight": 1, "priority": 10},
            {"host": "127.0.0.1", "port": backup.port, "weight": 1, "priority": 0},
        ]
        with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
            with UpstreamServer("primary", port=port):
                assert [served_by(gw.port) for _ in range(5)] == ["primary"] * 5
            assert backup.requests == []
            # primary down: each request tries it, is refused, and fails over to the backup
            assert [served_by(gw.port) for _ in range(5)] == ["backup"] * 5
            with UpstreamServer("primary", port=port):
                assert [served_by(gw.port) for _ in range(5)] == ["primary"] * 5
            lines = [ln for ln in gw.access_log_lines() if ln.get("route_id") == "r"]
    assert [ln["status"] for ln in lines] == [200] * 15
    assert {ln["upstream_addr"] for ln in lines[5:10]} == {backup.addr}


def test_priority_lower_group_only_when_higher_all_tried(tmp_path):
    with UpstreamServer("b1") as b1, UpstreamServer("b2") as b2:
        nodes = [
            {"host": "127.0.0.1", "port": closed_port(), "weight": 1, "priority": 5},
            {"host": "127.0.0.1", "port": b1.port, "weight": 1, "priority": 0},
            {"host": "127.0.0.1", "port": b2.port, "weight": 1, "priority": -1},
        ]
        with GatewayProcess(route({"nodes": nodes}), tmp_path) as gw:
            seq = [served_by(gw.port) for _ in range(4)]
    assert seq == ["b1"] * 4
    assert b2.requests == []
