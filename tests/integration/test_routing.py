"""Routing through a running gateway: APISIX's rules (DESIGN.md, "Routing is APISIX's, exactly").

One gateway serves a table of routes; each request in the table names the route id it must land
on. The route that served a request is read from the access log line (`route_id`), found by the
request's unique X-Request-Id; a service-inherited route is also checked by which upstream
answered.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import Response, request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

NOT_FOUND = b'{"error_msg":"404 Route Not Found"}\n'  # APISIX's exit: a newline after JSON


def _r(rid: str, **kw: Any) -> dict[str, Any]:
    route = {"id": rid, "upstream_id": "main"}
    route.update(kw)
    return route


ROUTES: list[dict[str, Any]] = [
    # hosts: exact, then wildcard (longest suffix first), then host-less
    _r("host-exact", uri="/h/*", hosts=["api.example.com"]),
    _r("host-wild", uri="/h/*", hosts=["*.example.com"]),
    _r("host-wild-deep", uri="/h/*", hosts=["*.deep.example.com"]),
    _r("host-none", uri="/h/*"),
    # a host-less exact uri with a high priority still comes after every host table
    _r("host-none-exact", uri="/h/exact", priority=100),
    # exact uri before prefix (whatever the priority), longer prefix first
    _r("p-prefix", uri="/p/*", priority=50),
    _r("p-exact", uri="/p/foo"),
    _r("p-long", uri="/p/long/*"),
    # /foo* is a raw string prefix; /foo/* needs the slash
    _r("q-raw", uri="/q/foo*"),
    _r("q-slash", uri="/q/foo/*"),
    # priority, then config order
    _r("prio-low", uri="/prio", priority=1),
    _r("prio-high", uri="/prio", priority=5),
    _r("order-first", uri="/order"),
    _r("order-second", uri="/order"),
    # methods: a candidate that fails is skipped, the next one tried
    _r("m-get", uri="/m", methods=["GET"]),
    _r("m-post", uri="/m", methods=["POST", "PUT"]),
    # remote_addrs: the test client is 127.0.0.1
    _r("ra-ten", uri="/ra", remote_addrs=["10.0.0.0/8"], priority=10),
    _r("ra-local", uri="/ra", remote_addrs=["127.0.0.1"]),
    _r("ra-only-ten", uri="/ra-only", remote_addr="10.0.0.0/8"),
    # vars
    _r("v-arg", uri="/v", priority=5, vars=[["arg_mode", "==", "json"]]),
    _r("v-http", uri="/v", priority=4, vars=[["http_x_ver", "~~", "^v2"]]),
    _r("v-cookie", uri="/v", priority=3, vars=[["cookie_team", "in", ["red", "blue"]]]),
    _r("v-not", uri="/v", priority=2, vars=[["arg_skip", "!", "==", "yes"]]),
    _r("v-fallback", uri="/v", priority=1),
    _r(
        "v-or",
        uri="/vor",
        vars=[["OR", ["arg_a", "==", "1"], ["http_x_b", "==", "2"]]],
    ),
    # uris lists
    _r("uris-list", uris=["/l/a", "/l/b/*"]),
    # path parameters
    _r("param", uri="/user/:id"),
    _r("param-posts", uri="/user/:id/posts"),
    # disabled: never matched, the next candidate serves
    _r("disabled", uri="/d", status=0, priority=10),
    _r("d-enabled", uri="/d"),
    _r("disabled-only", uri="/d-only", status=0),
    # service inheritance: hosts and upstream from the service
    {"id": "svc-route", "uri": "/s/*", "service_id": "svc"},
    # a service whose upstream has no node: 503 (a service with no upstream at all is refused
    # by validation until plugins exist that could answer by themselves)
    {"id": "no-upstream", "uri": "/nu", "service_id": "bare"},
]

H = "Host"
# (request id, method, path, headers, expected route id or None for 404)
CASES: list[tuple[str, str, str, dict[str, str], str | None]] = [
    ("exact-host", "GET", "/h/x", {H: "api.example.com"}, "host-exact"),
    ("exact-host-case-port", "GET", "/h/x", {H: "API.Example.COM:9080"}, "host-exact"),
    ("wildcard-host", "GET", "/h/x", {H: "www.example.com"}, "host-wild"),
    ("wildcard-multi-label", "GET", "/h/x", {H: "a.b.example.com"}, "host-wild"),
    ("wildcard-longest-suffix", "GET", "/h/x", {H: "a.deep.example.com"}, "host-wild-deep"),
    ("wildcard-not-bare-domain", "GET", "/h/x", {H: "example.com"}, "host-none"),
    ("other-host-hostless", "GET", "/h/x", {H: "other.org"}, "host-none"),
    ("host-table-before-hostless-exact", "GET", "/h/exact", {H: "www.example.com"}, "host-wild"),
    ("hostless-exact-uri", "GET", "/h/exact", {H: "example.com"}, "host-none-exact"),
    ("exact-uri-beats-prefix", "GET", "/p/foo", {}, "p-exact"),
    ("prefix", "GET", "/p/bar", {}, "p-prefix"),
    ("exact-only-exact", "GET", "/p/foo/x", {}, "p-prefix"),
    ("longer-prefix-first", "GET", "/p/long/x", {}, "p-long"),
    ("longer-prefix-trailing-slash", "GET", "/p/long/", {}, "p-long"),
    ("shorter-prefix-without-slash", "GET", "/p/long", {}, "p-prefix"),
    ("raw-prefix-bare", "GET", "/q/foo", {}, "q-raw"),
    ("raw-prefix-suffix", "GET", "/q/foobar", {}, "q-raw"),
    ("slash-prefix", "GET", "/q/foo/x", {}, "q-slash"),
    ("slash-prefix-empty-rest", "GET", "/q/foo/", {}, "q-slash"),
    ("priority-higher-first", "GET", "/prio", {}, "prio-high"),
    ("config-order", "GET", "/order", {}, "order-first"),
    ("method-get", "GET", "/m", {}, "m-get"),
    ("method-post", "POST", "/m", {}, "m-post"),
    ("method-put", "PUT", "/m", {}, "m-post"),
    ("method-none", "DELETE", "/m", {}, None),
    ("remote-addr-local", "GET", "/ra", {}, "ra-local"),
    ("remote-addr-refused", "GET", "/ra-only", {}, None),
    ("vars-arg-eq", "GET", "/v?mode=json", {}, "v-arg"),
    ("vars-arg-eq-other-value", "GET", "/v?mode=xml&skip=yes", {}, "v-fallback"),
    ("vars-http-regex", "GET", "/v?skip=yes", {"X-Ver": "v2.1"}, "v-http"),
    ("vars-http-regex-no", "GET", "/v?skip=yes", {"X-Ver": "v1"}, "v-fallback"),
    ("vars-cookie-in", "GET", "/v?skip=yes", {"Cookie": "a=1; team=blue"}, "v-cookie"),
    ("vars-cookie-not-in", "GET", "/v?skip=yes", {"Cookie": "team=green"}, "v-fallback"),
    ("vars-not-missing", "GET", "/v", {}, "v-not"),
    ("vars-not-other", "GET", "/v?skip=no", {}, "v-not"),
    ("vars-not-refused", "GET", "/v?skip=yes", {}, "v-fallback"),
    ("vars-or-arg", "GET", "/vor?a=1", {}, "v-or"),
    ("vars-or-header", "GET", "/vor", {"X-B": "2"}, "v-or"),
    ("vars-or-none", "GET", "/vor?a=2", {}, None),
    ("uris-first", "GET", "/l/a", {}, "uris-list"),
    ("uris-second", "GET", "/l/b/c", {}, "uris-list"),
    ("uris-none", "GET", "/l/c", {}, None),
    ("param-one-segment", "GET", "/user/42", {}, "param"),
    ("param-longer-pattern", "GET", "/user/42/posts", {}, "param-posts"),
    ("param-empty-segment", "GET", "/user/", {}, None),
    ("param-too-many-segments", "GET", "/user/42/x", {}, None),
    ("disabled-skipped", "GET", "/d", {}, "d-enabled"),
    ("disabled-only", "GET", "/d-only", {}, None),
    ("service-hosts-inherited", "GET", "/s/x", {H: "svc.example.com"}, "svc-route"),
    ("service-hosts-refuse-other", "GET", "/s/x", {H: "other.example.org"}, None),
    ("nothing", "GET", "/nothing/here", {}, None),
]

_ids = itertools.count()


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[GatewayProcess, UpstreamServer, UpstreamServer]]:
    with UpstreamServer("main") as main, UpstreamServer("svc") as svc:
        config = {
            "upstreams": [{"id": "main", "nodes": {main.addr: 1}}],
            "services": [
                {"id": "svc", "hosts": ["svc.example.com"], "upstream": {"nodes": {svc.addr: 1}}},
                {"id": "bare", "upstream": {"nodes": {}}},
            ],
            "routes": ROUTES,
        }
        with GatewayProcess(config, tmp_path_factory.mktemp("routing")) as gw:
            yield gw, main, svc


def send(
    gw: GatewayProcess, method: str, path: str, headers: dict[str, str]
) -> tuple[Response, dict]:
    """One request with a unique X-Request-Id, and its access log line."""
    rid = f"routing-{next(_ids)}"
    hdrs = {**headers, "X-Request-Id": rid}
    body = b"" if method in ("POST", "PUT") else None
    resp = request(gw.port, method, path, headers=hdrs, body=body)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gw.access_log_lines():
            if line.get("request_id") == rid:
                return resp, line
        time.sleep(0.02)
    raise AssertionError(f"no access log line for {rid}:\n{gw.stdout()[-2000:]}")


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_route_table(servers, method, path, headers, expected):
    gw, _, _ = servers
    resp, line = send(gw, method, path, headers)
    assert line["route_id"] == expected, (line, resp.body[:200])
    if expected is None:
        assert resp.status == 404
        assert resp.body == NOT_FOUND
        assert resp.header("Content-Type") == "application/json"
    else:
        assert resp.status == 200, resp.body


def test_cookie_variables_read_every_cookie_header(servers):
    """nginx's $http_cookie (and APISIX's cookie_* variables) join all Cookie headers: an HTTP/2
    hop in front of the gateway may send each cookie in a header of its own."""
    gw, _, _ = servers
    rid = "routing-two-cookies"
    cookies = [("Cookie", "a=1"), ("Cookie", "team=blue"), ("X-Request-Id", rid)]
    resp = request(gw.port, "GET", "/v?skip=yes", headers=cookies)
    assert resp.status == 200
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while not lines and time.monotonic() < deadline:
        lines = [ln for ln in gw.access_log_lines() if ln.get("request_id") == rid]
        time.sleep(0.02)
    assert lines and lines[0]["route_id"] == "v-cookie"


def test_service_route_goes_to_service_upstream(servers):
    gw, _, svc = servers
    resp, line = send(gw, "GET", "/s/abc", {"Host": "svc.example.com"})
    assert resp.status == 200
    assert resp.json()["server"] == "svc"
    assert line["upstream_addr"] == svc.addr
    assert line["service_id"] == "svc"


def test_main_routes_go_to_main_upstream(servers):
    gw, main, _ = servers
    resp, line = send(gw, "GET", "/p/foo", {})
    assert resp.json()["server"] == "main"
    assert resp.json()["path"] == "/p/foo"
    assert line["upstream_addr"] == main.addr


def test_service_without_upstream_is_503_json(servers):
    gw, _, _ = servers
    resp, line = send(gw, "GET", "/nu", {})
    assert resp.status == 503
    assert resp.header("Content-Type") == "application/json"
    body = resp.json()
    assert set(body) == {"error_msg"} and body["error_msg"].startswith("503")
    assert line["route_id"] == "no-upstream"
    assert line["status"] == 503


def test_404_keeps_the_connection_alive(servers):
    gw, _, _ = servers
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        for path in ("/nothing", "/p/foo", "/nothing/else"):
            r = request(gw.port, "GET", path, conn=c)
            assert r.status in (200, 404)
        assert r.body == NOT_FOUND
    finally:
        c.close()
