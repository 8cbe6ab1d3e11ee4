"""APISIX compatibility of the traffic-control plugins, socket-free. Through a gateway:
tests/integration/test_traffic_compat.py."""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext
from ando.plugins.shared import SharedDict
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
