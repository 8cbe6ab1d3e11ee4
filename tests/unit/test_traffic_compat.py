"""APISIX compatibility of the traffic-control plugins, socket-free. Through a gateway:
tests/integration/test_traffic_compat.py."""

from __future__ import annotations

import time
from typing import Any

from ando.plugins.base import BuildContext
from ando.plugins.context import RequestContext
from ando.plugins.shared import SharedDict
from ando.plugins.traffic.api_breaker import ApiBreaker
from ando.plugins.traffic.traffic_split import TrafficSplit


def test_traffic_split_inline_upstream_checks_are_ignored():
    # APISIX's traffic-split documents `checks` as not supported in an inline upstream: it is
    # accepted by the schema and no health check runs. The upstream built carries none.
    made: list[dict[str, Any]] = []

    def make_upstream(ref: Any) -> Any:
        made.append(ref)
        return object()

    build = BuildContext(
        owner="route:1", snapshot=None, shared=SharedDict(64), cache={}, make_upstream=make_upstream
    )
    inline = {"nodes": {"127.0.0.1:1980": 1}, "checks": {"active": {"http_path": "/"}}}
    TrafficSplit({"rules": [{"weighted_upstreams": [{"upstream": inline, "weight": 1}]}]}, build)
    assert len(made) == 1
    assert "checks" not in made[0]
    assert made[0]["nodes"] == {"127.0.0.1:1980": 1}


class _Req:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.method, self.path, self.query, self.host = "GET", "/api", b"", "h"
        self.has_body = False


def _breaker_ctx(status: int = 0) -> RequestContext:
    ctx = RequestContext(_Req(), {"remote_addr": "10.0.0.1"}.get, None)  # type: ignore[arg-type]
    ctx.upstream_status = status
    return ctx


def test_breaker_open_time_counts_whole_seconds_as_apisix(monkeypatch):
    # api-breaker.lua stores ngx.time() (whole seconds) when it trips and answers the break
    # code while lasttime + breaker_time >= ngx.time(): tripped at 1000.9, the first 2 s break
    # still holds at 1002.95 and ends when the clock reaches 1003.
    clock = [1000.9]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    build = BuildContext(owner="route:1", snapshot=None, shared=SharedDict(64), cache={})
    breaker = ApiBreaker(
        {
            "break_response_code": 502,
            "max_breaker_sec": 300,
            "unhealthy": {"http_statuses": [500], "failures": 3},
            "healthy": {"http_statuses": [200], "successes": 3},
        },
        build,
    )
    for _ in range(3):
        breaker.log(_breaker_ctx(500))
    for now in (1000.95, 1002.0, 1002.95, 1002.999):
        clock[0] = now
        r = breaker.access(_breaker_ctx())
        assert r is not None and r.status == 502, now
    clock[0] = 1003.0
    assert breaker.access(_breaker_ctx()) is None


def test_breaker_never_outlives_max_breaker_sec_after_its_trip(monkeypatch):
    # APISIX keeps the trip time for max_breaker_sec (the shared dict's TTL): a capped break
    # ends max_breaker_sec after the trip itself, not at the end of a whole second.
    clock = [1000.2]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    build = BuildContext(owner="route:1", snapshot=None, shared=SharedDict(64), cache={})
    breaker = ApiBreaker(
        {
            "break_response_code": 502,
            "max_breaker_sec": 3,
            "unhealthy": {"http_statuses": [500], "failures": 1},
            "healthy": {"http_statuses": [200], "successes": 3},
        },
        build,
    )
    breaker.log(_breaker_ctx(500))  # first trip: 2 s
    clock[0] = 1003.5
    assert breaker.access(_breaker_ctx()) is None
    breaker.log(_breaker_ctx(500))  # second trip: 4 s, capped to 3
    clock[0] = 1006.4
    assert breaker.access(_breaker_ctx()) is not None
    clock[0] = 1006.6
    assert breaker.access(_breaker_ctx()) is None
