"""APISIX compatibility of the traffic-control plugins (limit-count, limit-req, limit-conn,
api-breaker, traffic-split), through a running gateway: what a client moving a config over from
APISIX 3.x sees, status, body and headers, where Ando used to answer otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

PAGE_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.fixture(scope="module")
def canary() -> Iterator[UpstreamServer]:
    with UpstreamServer("canary") as c:
        yield c


@pytest.fixture(scope="module")
def gw(
    upstream: UpstreamServer, canary: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    up = {"nodes": {upstream.addr: 1}}
    # APISIX's upstream schema, which traffic-split's inline upstream uses, has `checks`; its
    # traffic-split documentation lists it among the fields it ignores there.
    checked = {
        "nodes": {canary.addr: 1},
        "checks": {"active": {"http_path": "/status/500", "healthy": {"interval": 1}}},
    }
    config: dict[str, Any] = {
        "routes": [
            {
                "id": "split-checks",
                "uri": "/split",
                "upstream": up,
                "plugins": {
                    "traffic-split": {
                        "rules": [
                            {
                                "match": [{"vars": [["http_x_canary", "==", "1"]]}],
                                "weighted_upstreams": [{"upstream": checked}],
                            }
                        ]
                    }
                },
            },
            {
                "id": "breaker-bare",
                "uri": "/status/*",
                "upstream": up,
                "plugins": {
                    "api-breaker": {
                        "break_response_code": 503,
                        "unhealthy": {"http_statuses": [503], "failures": 1},
                    }
                },
            },
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("traffic-compat"), access_log=False) as g:
        yield g


# --- api-breaker --------------------------------------------------------------------------------


def test_breaker_without_a_body_answers_nginx_error_page(gw):
    # APISIX's access phase returns only break_response_code: core.response.exit(503) ends in
    # ngx.exit(503), so the client gets nginx's HTML page, as for limit-count's bare refusal.
    first = request(gw.port, path="/status/503")
    assert (first.status, first.body) == (503, b"status 503")  # the upstream's own answer
    r = request(gw.port, path="/status/503")
    assert r.status == 503
    assert r.body == PAGE_503
    assert r.header("Content-Type") == "text/html"


# --- traffic-split ------------------------------------------------------------------------------


def test_inline_upstream_with_checks_is_accepted_and_routed_to(gw, canary):
    # A config APISIX accepts loads (the gateway started on it) and the canary gets its traffic.
    r = request(gw.port, path="/split", headers={"X-Canary": "1"})
    assert r.status == 200 and r.json()["server"] == "canary"
    r = request(gw.port, path="/split")
    assert r.status == 200 and r.json()["server"] == "up"
