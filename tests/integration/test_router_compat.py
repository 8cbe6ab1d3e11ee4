"""APISIX-compatibility of routing, through a running gateway (tests/unit/test_router_compat.py
drives the router directly; this checks what a client sees)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[GatewayProcess]:
    with UpstreamServer("main") as main:
        config = {
            "upstreams": [{"id": "main", "nodes": {main.addr: 1}}],
            "routes": [
                {"id": "cafe", "uri": "/café", "upstream_id": "main"},
                {"id": "space", "uri": "/files/my docs/*", "upstream_id": "main"},
            ],
        }
        with GatewayProcess(config, tmp_path_factory.mktemp("router-compat")) as gw:
            yield gw


@pytest.mark.parametrize(
    "path",
    ["/caf%C3%A9", "/caf%c3%a9", "/files/my%20docs/a.txt"],
)
def test_decoded_uri_route_serves_the_encoded_request(gateway: GatewayProcess, path: str):
    # APISIX compares the route's uri with nginx's decoded $uri, so these are served there.
    resp = request(gateway.port, "GET", path)
    assert resp.status == 200, resp.body[:200]
