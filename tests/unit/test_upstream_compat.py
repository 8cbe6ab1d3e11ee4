"""Upstream configuration and balancing as APISIX 3.x has them, without sockets.

Each test pins one behaviour an APISIX user brings over with an upstream, read from APISIX's
source: the chash key of `hash_on: vars_combinations` (apisix/balancer/chash.lua with
core.utils.resolve_var), `pass_host: node` on an upstream of several nodes (apisix/upstream.lua,
apisix/balancer.lua), and health-check counters a threshold of 0 turns off
(lua-resty-healthcheck's incr_counter).
"""

from __future__ import annotations

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.snapshot import upstream_from_conf
from ando.config.source import snapshot_from_text
from ando.proxy.balancer import Node
from ando.proxy.compiled import UpstreamRuntime, _hash_key
from ando.proxy.health import HTTP_FAILURE, SUCCESS, TCP_FAILURE, HealthChecker
from ando.proxy.variables import Vars

# --- chash: hash_on vars_combinations ------------------------------------------------------------


def request(headers: dict[str, str] | None = None, query: str = "") -> Vars:
    v = Vars()
    v.headers = [(k.encode(), val.encode()) for k, val in (headers or {}).items()]
    v.query = query.encode()
    v.client_addr = "192.0.2.7"
    return v


def combined_key(key: str):
    up = upstream_from_conf(
        {"type": "chash", "hash_on": "vars_combinations", "key": key, "nodes": {"a:80": 1}}, "u"
    )
    return _hash_key(up)


def test_vars_combinations_with_no_variable_resolved_hashes_the_client_address() -> None:
    # chash.lua: n_resolved == 0 -> no key -> remote_addr, whatever literal text the key has.
    key = combined_key("user-$http_x_user")
    assert key(request()) == "192.0.2.7"
    assert key(request({"X-User": "alice"})) == "user-alice"


def test_vars_combinations_one_resolved_variable_is_enough() -> None:
    key = combined_key("$http_x_user:$arg_region")
    assert key(request({"X-User": "alice"})) == "alice:"
    assert key(request(query="region=eu")) == ":eu"


def test_vars_combinations_braced_names_and_defaults() -> None:
    # resolve_var's `${name}` and `${name ?? default}` (a default counts as resolved).
    assert combined_key("${http_x_user}")(request({"X-User": "bob"})) == "bob"
    assert combined_key("${http_x_user}-${arg_v}")(request(query="v=2")) == "-2"
    assert combined_key("${http_x_user ?? anon}")(request()) == "anon"


def test_vars_combinations_escaped_dollar_is_text() -> None:
    # `\$name` is not a reference: nothing resolves, so the client address is hashed.
    assert combined_key(r"\$http_x_user")(request({"X-User": "bob"})) == "192.0.2.7"


# --- pass_host: node with several nodes -----------------------------------------------------------


PASS_NODE = """
routes:
  - id: r
    uri: /*
    upstream:
      pass_host: node
      nodes:
        "127.0.0.1:8081": 1
        "localhost:80": 1
        "example.com:8443": 1
"""


def test_pass_host_node_accepts_several_nodes() -> None:
    # apisix/upstream.lua refuses several nodes only where balancer.recreate_request is missing
    # (a stock OpenResty); APISIX 3.x runs on APISIX-Runtime, which has it, and balancer.lua
    # then sets each retried node's own Host.
    snap = snapshot_from_text(PASS_NODE, "t.yaml", environ={})
    up = snap.routes[0].upstream
    assert up is not None and up.pass_host == "node" and len(up.nodes) == 3
    rt = UpstreamRuntime(up)
    hosts = {n.addr: rt.node_hosts[n] for n in rt.nodes}
    # balancer.lua's parse_server_for_upstream_host: the port only when not the scheme's own
    assert hosts == {
        "127.0.0.1:8081": b"127.0.0.1:8081",
        "localhost:80": b"localhost",
        "example.com:8443": b"example.com:8443",
    }


def test_pass_host_rewrite_still_needs_upstream_host() -> None:
    text = PASS_NODE.replace("pass_host: node", "pass_host: rewrite")
    with pytest.raises(ConfigError):
        snapshot_from_text(text, "t.yaml", environ={})


# --- health checks: a threshold of 0 is a no-op report ---------------------------------------------


A, B = Node("10.0.0.1", 80, 1, 0), Node("10.0.0.2", 80, 1, 0)


def checker(passive: dict) -> HealthChecker:
    return HealthChecker(
        "/upstreams/u", {"active": {}, "passive": passive}, (A, B), lambda *a, **k: None
    )


def healthy(hc: HealthChecker, node: Node) -> bool:
    return {(h, p): s for _, h, p, s in hc.status()}[(node.host, node.port)] == 1


def test_passive_successes_0_leaves_the_failure_counts_alone() -> None:
    # incr_counter returns at once when the limit is 0: a success with healthy.successes 0
    # does not reset the failures, so failures between successes still add up.
    hc = checker({"healthy": {"successes": 0}, "unhealthy": {"tcp_failures": 3}})
    for _ in range(3):
        hc.passive(B, TCP_FAILURE)
        hc.passive_status(B, 200)
    assert not healthy(hc, B)
    assert healthy(hc, A)


def test_passive_failure_kind_0_leaves_the_success_count_alone() -> None:
    # A node down (actively), coming back on passive successes: a 500 while http_failures is 0
    # is no report at all, so it does not restart the count of successes.
    hc = checker({"healthy": {"successes": 2}, "unhealthy": {"http_failures": 0}})
    active = hc._active_rules
    for _ in range(2):
        hc._count(B, TCP_FAILURE, active, "active")
    assert not healthy(hc, B)
    hc.passive_status(B, 200)
    hc.passive_status(B, 500)
    hc.passive(B, HTTP_FAILURE)
    hc.passive_status(B, 200)
    assert healthy(hc, B)


def test_a_counted_success_still_resets_failures() -> None:
    # The ordinary case is unchanged: failures must come in a row.
    hc = checker({"unhealthy": {"tcp_failures": 2}})
    hc.passive(B, TCP_FAILURE)
    hc.passive(B, SUCCESS)
    hc.passive(B, TCP_FAILURE)
    assert healthy(hc, B)
    hc.passive(B, TCP_FAILURE)
    assert not healthy(hc, B)


# --- retries on an upstream of one node -----------------------------------------------------------


def one_node_upstream(nodes: dict[str, int], **extra) -> UpstreamRuntime:
    return UpstreamRuntime(upstream_from_conf({"nodes": nodes, **extra}, "u"))


def test_one_node_upstream_retries_that_node() -> None:
    # apisix/balancer.lua pick_server: with one node, every try (retries included) is that node.
    rt = one_node_upstream({"10.0.0.1:80": 1}, retries=2)
    (node,) = rt.nodes
    assert rt.max_attempts == 3
    assert rt.balancer.pick(None) is node
    assert rt.balancer.pick(None, frozenset({node})) is node


def test_a_weight_0_node_makes_it_two_nodes() -> None:
    # nodes_count counts every configured node: with a second (weight 0) one, the picker runs
    # and a retry must find an untried node, which there is none of.
    rt = one_node_upstream({"10.0.0.1:80": 1, "10.0.0.2:80": 0}, retries=2)
    node = next(n for n in rt.nodes if n.weight)
    assert rt.balancer.pick(None, frozenset({node})) is None


# --- active checks: the Host header of a probe ----------------------------------------------------


def probe_host(node: Node, active: dict | None = None, **upstream) -> str:
    hc = HealthChecker("/upstreams/u", {"active": active or {}}, (node,), lambda *a, **k: None,
                       **upstream)  # fmt: skip
    head = hc._request(node).decode("latin-1").split("\r\n")
    (host,) = [line[6:] for line in head if line.lower().startswith("host: ")]
    return host


IP_NODE = Node("10.0.0.1", 8080, 1, 0)
NAMED_NODE = Node("backend.internal", 8080, 1, 0)


def test_probe_host_is_upstream_host_with_pass_host_rewrite() -> None:
    # apisix/upstream.lua create_checker: upstream_host is the target's host header, which
    # lua-resty-healthcheck prefers to checks.active.host.
    for node in (IP_NODE, NAMED_NODE):
        got = probe_host(node, {"host": "probe.example"}, pass_host="rewrite",
                         upstream_host="api.example")  # fmt: skip
        assert got == "api.example"


def test_probe_host_with_pass_host_node_is_a_named_node_s_name() -> None:
    assert probe_host(NAMED_NODE, {"host": "probe.example"}, pass_host="node") == (
        "backend.internal"
    )
    # an IP node has no domain: checks.active.host, else the address
    assert probe_host(IP_NODE, {"host": "probe.example"}, pass_host="node") == "probe.example"
    assert probe_host(IP_NODE, pass_host="node") == "10.0.0.1"


def test_probe_host_with_pass_host_pass_is_checks_active_host() -> None:
    assert probe_host(NAMED_NODE, {"host": "probe.example"}) == "probe.example"
    assert probe_host(NAMED_NODE, upstream_host="api.example") == "backend.internal"


def probe_head(active: dict) -> list[str]:
    hc = HealthChecker("/upstreams/u", {"active": active}, (IP_NODE,), lambda *a, **k: None)
    return hc._request(IP_NODE).decode("latin-1").split("\r\n")


def test_probe_req_headers_user_agent_is_the_only_one() -> None:
    # lua-resty-healthcheck sends req_headers as given and no User-Agent of its own.
    head = probe_head({"req_headers": ["user-agent: probe/1", "X-Probe: 1"]})
    assert [h for h in head if h.lower().startswith("user-agent:")] == ["user-agent: probe/1"]
    assert "X-Probe: 1" in head
    assert sum(h.lower().startswith("user-agent:") for h in probe_head({})) == 1
