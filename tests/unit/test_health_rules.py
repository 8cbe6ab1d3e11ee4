"""Health-check counting, without sockets: thresholds per kind of failure, successes to come back,
a success resetting failures (and the reverse), 0 turning a passive kind off, statuses in neither
list counting for nothing, and the balancer steered (including a new config's balancer)."""

from __future__ import annotations

from ando.proxy.balancer import Node, make_balancer
from ando.proxy.health import (
    HTTP_FAILURE,
    NEUTRAL,
    SUCCESS,
    TCP_FAILURE,
    TIMEOUT,
    HealthChecker,
)

A, B = Node("10.0.0.1", 80, 1, 0), Node("10.0.0.2", 80, 1, 0)


def checker(checks: dict, events: list | None = None) -> HealthChecker:
    log = (
        (lambda event, **f: events.append((event, f)))
        if events is not None
        else (lambda *a, **k: None)
    )
    return HealthChecker("/upstreams/u", checks, (A, B), log)


def picks(balancer, n: int = 6) -> set[str]:
    return {balancer.pick(None).addr for _ in range(n)}


def test_active_thresholds_per_kind_and_successes_to_come_back():
    events: list = []
    hc = checker({"active": {"unhealthy": {"tcp_failures": 2, "timeouts": 3},
                             "healthy": {"successes": 2}}}, events)  # fmt: skip
    balancer = make_balancer("roundrobin", (A, B))
    hc.attach(balancer)
    rules = hc._active_rules
    hc._count(B, TCP_FAILURE, rules, "active")
    hc._count(B, TIMEOUT, rules, "active")
    hc._count(B, TIMEOUT, rules, "active")
    assert hc.status()[1][3] == 1  # 1 tcp failure and 2 timeouts: each below its own limit
    hc._count(B, TCP_FAILURE, rules, "active")
    assert hc.status()[1] == ["/upstreams/u", "10.0.0.2", 80, 0]
    assert picks(balancer) == {"10.0.0.1:80"}
    assert (
        events[-1][0] == "upstream_node_unhealthy" and events[-1][1]["reason"] == "2 tcp_failures"
    )
    hc._count(B, SUCCESS, rules, "active")
    hc._count(B, HTTP_FAILURE, rules, "active")  # a failure resets the successes
    hc._count(B, SUCCESS, rules, "active")
    assert hc.status()[1][3] == 0
    hc._count(B, SUCCESS, rules, "active")
    assert hc.status()[1][3] == 1 and picks(balancer) == {"10.0.0.1:80", "10.0.0.2:80"}
    assert [e for e, _ in events] == ["upstream_node_unhealthy", "upstream_node_healthy"]


def test_a_success_resets_the_failure_counts():
    hc = checker({"active": {"unhealthy": {"http_failures": 2}}})
    rules = hc._active_rules
    for _ in range(5):
        hc._count(A, HTTP_FAILURE, rules, "active")
        hc._count(A, SUCCESS, rules, "active")
    assert hc.status()[0][3] == 1


def test_passive_kinds_at_zero_are_off_and_unlisted_statuses_count_for_nothing():
    hc = checker({"active": {}, "passive": {"unhealthy": {"tcp_failures": 0, "http_failures": 2,
                                                          "http_statuses": [500]}}})  # fmt: skip
    for _ in range(10):
        hc.passive(A, TCP_FAILURE)
        hc.passive_status(A, 404)  # in neither list
        hc._count(A, NEUTRAL, hc._active_rules, "active")
    assert hc.status()[0][3] == 1
    hc.passive_status(A, 500)
    hc.passive_status(A, 500)
    assert hc.status()[0][3] == 0


def test_without_passive_checks_real_traffic_is_not_judged():
    hc = checker({"active": {}})
    for _ in range(20):
        hc.passive_status(A, 503)
        hc.passive(A, TCP_FAILURE)
    assert hc.status()[0][3] == 1


def test_a_new_configs_balancer_learns_the_nodes_already_down():
    hc = checker({"active": {"unhealthy": {"tcp_failures": 1}}})
    hc._count(B, TCP_FAILURE, hc._active_rules, "active")
    fresh = make_balancer("roundrobin", (A, B))
    hc.attach(fresh)
    assert picks(fresh) == {"10.0.0.1:80"}
