"""limit-count, limit-req and limit-conn in-process, socket-free: the counting, the delays and
where counters are keyed (owner, group, window). Through a gateway: tests/integration/
test_plugins_limits.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ando.plugins.base import BuildContext, Response
from ando.plugins.context import RequestContext
from ando.plugins.shared import SharedDict
from ando.plugins.traffic.limit_conn import LimitConn
from ando.plugins.traffic.limit_count import LimitCount
from ando.plugins.traffic.limit_req import LimitReq


class _Req:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.method, self.path, self.query, self.host = "GET", "/", b"", "h"
        self.has_body = False


def make_ctx(**vars: str) -> RequestContext:
    values = {"remote_addr": "10.0.0.1", **vars}
    return RequestContext(_Req(), values.get, None)  # type: ignore[arg-type]


def build(shared: SharedDict, owner: str = "route:1") -> BuildContext:
    return BuildContext(owner=owner, snapshot=None, shared=shared, cache={})


COUNT = {
    "key_type": "var", "key": "remote_addr", "rejected_code": 503, "policy": "local",
    "allow_degradation": False, "show_limit_quota_header": True, "redis_port": 6379,
    "redis_database": 0, "redis_timeout": 1000, "redis_ssl": False, "redis_ssl_verify": False,
}  # fmt: skip
REQ = {"key_type": "var", "rejected_code": 503, "nodelay": False, "allow_degradation": False,
       "policy": "local"}  # fmt: skip
CONN = {"key_type": "var", "rejected_code": 503, "only_use_default_delay": True,
        "allow_degradation": False, "policy": "local"}  # fmt: skip


def headers(ctx: RequestContext) -> dict[str, str]:
    """The response headers the plugin set, by name. The context keeps each as a tuple with the
    name first and the value just before the `add` flag (str or bytes, by version)."""
    out: dict[str, str] = {}
    for entry in ctx.response_headers or []:
        name, value = entry[0], entry[-2]
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        out[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


def settle(result: Any) -> None:
    """Close a delay coroutine a test does not await."""
    if asyncio.iscoroutine(result):
        result.close()


# --- limit-count ------------------------------------------------------------------------------


def test_count_allows_count_then_refuses_with_quota_headers():
    plugin = LimitCount({**COUNT, "count": 2, "time_window": 60}, build(SharedDict(64)))
    results = []
    for _ in range(3):
        ctx = make_ctx()
        results.append((plugin.access(ctx), headers(ctx)))
    assert [r for r, _ in results[:2]] == [None, None]
    refused = results[2][0]
    assert isinstance(refused, Response) and refused.status == 503
    assert [h["X-RateLimit-Remaining"] for _, h in results] == ["1", "0", "0"]
    assert {h["X-RateLimit-Limit"] for _, h in results} == {"2"}
    assert all(59 <= int(h["X-RateLimit-Reset"]) <= 60 for _, h in results)


def test_count_counters_are_keyed_by_owner_group_window_and_key():
    shared = SharedDict(256)
    conf = {**COUNT, "count": 1, "time_window": 60}
    route1 = LimitCount(conf, build(shared, "route:1"))
    route2 = LimitCount(conf, build(shared, "route:2"))
    assert route1.access(make_ctx()) is None
    assert route1.access(make_ctx()) is not None
    assert route2.access(make_ctx()) is None  # another owner, another counter
    assert route1.access(make_ctx(remote_addr="10.0.0.2")) is None  # another key
    # a changed window is a new counter (an old long window does not linger)
    assert (
        LimitCount({**conf, "time_window": 5}, build(shared, "route:1")).access(make_ctx()) is None
    )
    grouped = {**conf, "group": "g"}
    assert LimitCount(grouped, build(shared, "route:3")).access(make_ctx()) is None
    assert LimitCount(grouped, build(shared, "service:s")).access(make_ctx()) is not None


def test_count_redis_policy_has_an_async_access_phase_and_local_a_sync_one():
    import inspect

    local = LimitCount({**COUNT, "count": 1, "time_window": 1}, build(SharedDict(64)))
    assert not inspect.iscoroutinefunction(local.access)
    redis = LimitCount(
        {**COUNT, "count": 1, "time_window": 1, "policy": "redis", "redis_host": "127.0.0.1"},
        build(SharedDict(64)),
    )
    assert inspect.iscoroutinefunction(redis.access)


# --- limit-req --------------------------------------------------------------------------------


def test_req_leaky_bucket_delays_within_burst_and_refuses_beyond():
    plugin = LimitReq({**REQ, "rate": 10, "burst": 1, "key": "remote_addr"}, build(SharedDict(64)))
    assert plugin.access(make_ctx()) is None  # the first: no excess
    delayed = plugin.access(make_ctx())
    assert asyncio.iscoroutine(delayed)  # one request of excess: ~0.1 s
    settle(delayed)
    refused = plugin.access(make_ctx())
    assert isinstance(refused, Response) and refused.status == 503
    time.sleep(0.25)  # drains 2.5 requests of excess
    assert plugin.access(make_ctx()) is None


def test_req_nodelay_lets_the_burst_through_at_once():
    plugin = LimitReq(
        {**REQ, "rate": 1, "burst": 2, "nodelay": True, "key": "remote_addr"},
        build(SharedDict(64)),
    )
    assert [plugin.access(make_ctx()) for _ in range(3)] == [None, None, None]
    assert isinstance(plugin.access(make_ctx()), Response)


def delay_of(result: Any) -> float:
    """The seconds an access phase's asyncio.sleep(...) coroutine would wait."""
    assert asyncio.iscoroutine(result)
    seconds = result.cr_frame.f_locals["delay"]
    result.close()
    return seconds


def test_req_delay_is_excess_over_rate():
    plugin = LimitReq({**REQ, "rate": 4, "burst": 3, "key": "remote_addr"}, build(SharedDict(64)))
    assert plugin.access(make_ctx()) is None
    delays = [delay_of(plugin.access(make_ctx())) for _ in range(3)]
    assert [round(d * 4) for d in delays] == [1, 2, 3]  # 0.25, 0.5, 0.75 s


# --- limit-conn -------------------------------------------------------------------------------


def conn_plugin(shared: SharedDict, **conf: Any) -> LimitConn:
    full = {**CONN, "key": "remote_addr", "default_conn_delay": 0.5, **conf}
    return LimitConn(full, build(shared))


def count_of(shared: SharedDict) -> float:
    found = shared.get("limit-conn:route:1:10.0.0.1")
    return found[0] if found else 0.0


def test_conn_counts_in_and_out():
    shared = SharedDict(64)
    plugin = conn_plugin(shared, conn=1, burst=1)
    first, second, third = make_ctx(), make_ctx(), make_ctx()
    assert plugin.access(first) is None
    delayed = plugin.access(second)
    assert asyncio.iscoroutine(delayed)
    settle(delayed)
    refused = plugin.access(third)
    assert isinstance(refused, Response) and refused.status == 503
    assert count_of(shared) == 2  # a refused request is not counted
    plugin.log(third)
    assert count_of(shared) == 2  # ...and not counted out
    plugin.log(first)
    plugin.log(second)
    assert count_of(shared) == 0
    plugin.log(second)  # a second log of one request changes nothing
    assert count_of(shared) == 0


def test_conn_log_of_a_request_refused_before_it_counted_changes_nothing():
    shared = SharedDict(64)
    plugin = conn_plugin(shared, conn=1, burst=0)
    held = make_ctx()
    assert plugin.access(held) is None
    plugin.log(make_ctx())  # this request never reached limit-conn's access
    assert count_of(shared) == 1


@pytest.mark.parametrize(
    ("conn", "n", "units"), [(2, 1, 0), (2, 2, 0), (2, 3, 1), (2, 4, 1), (2, 5, 2), (1, 3, 2)]
)
def test_conn_delay_steps(conn, n, units):
    """resty.limit.conn: the N-th concurrent request waits unit * floor((N - 1) / conn)."""
    plugin = conn_plugin(SharedDict(64), conn=conn, burst=10)
    ctxs = [make_ctx() for _ in range(n)]
    for c in ctxs:
        settle(plugin.access(c))
    assert ctxs[-1].data[plugin][1] == pytest.approx(0.5 * units)


def test_conn_unit_delay_follows_latency_unless_only_the_default_is_used():
    adaptive = conn_plugin(SharedDict(64), conn=1, burst=1, only_use_default_delay=False)
    ctx = make_ctx()
    adaptive.access(ctx)
    ctx.latency = 0.1
    adaptive.log(ctx)
    assert adaptive.unit_delay == pytest.approx(0.3)  # (0.1 + 0.5) / 2
    fixed = conn_plugin(SharedDict(64), conn=1, burst=1)
    ctx = make_ctx()
    fixed.access(ctx)
    ctx.latency = 0.1
    fixed.log(ctx)
    assert fixed.unit_delay == 0.5
