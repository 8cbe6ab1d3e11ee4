"""key-auth and the merging rules, through a running gateway, as a client and an upstream see them.

Also the attacks DESIGN.md's "one path for everything" exists for: no spelling of a URL reaches
an authenticated route through an unauthenticated one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess, raw_request
from tests.support.upstream import echoed_headers

MISSING = {"message": "Missing API key in request"}
INVALID = {"message": "Invalid API key in request"}


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "services": [
            {"id": "svc", "upstream": up, "plugins": {"key-auth": {"header": "x-svc-key"}}},
        ],
        "routes": [
            {"id": "public", "uri": "/public/*", "upstream": up},
            {"id": "admin", "uri": "/admin/*", "upstream": up, "plugins": {"key-auth": {}}},
            {
                "id": "hidden",
                "uri": "/hidden/*",
                "upstream": up,
                "plugins": {"key-auth": {"hide_credentials": True}},
            },
            # the route's own key-auth replaces the service's (another header)
            {"id": "svc-own", "uri": "/svc/own", "service_id": "svc", "plugins": {"key-auth": {}}},
            {"id": "svc-inherit", "uri": "/svc/inherit", "service_id": "svc"},
            {
                "id": "svc-off",
                "uri": "/svc/off",
                "service_id": "svc",
                "plugins": {"key-auth": {"_meta": {"disable": True}}},
            },
            {
                "id": "custom-error",
                "uri": "/custom",
                "upstream": up,
                "plugins": {"key-auth": {"_meta": {"error_response": {"msg": "go away"}}}},
            },
        ],
        "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}},
            {"username": "jill", "plugins": {"key-auth": {"key": "jill-key"}}},
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("keyauth"), access_log=False) as g:
        yield g


def test_no_key_and_a_wrong_key_are_refused_with_apisix_messages(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, path="/admin/x")
    assert (r.status, r.json()) == (401, MISSING)
    r = request(gw.port, path="/admin/x", headers={"apikey": "nope"})
    assert (r.status, r.json()) == (401, INVALID)
    assert upstream.requests == []


def test_the_consumer_name_reaches_the_upstream_and_a_client_cannot_forge_it(gw):
    r = request(
        gw.port, path="/admin/x", headers={"apikey": "jill-key", "X-Consumer-Username": "jack"}
    )
    assert r.status == 200
    got = echoed_headers(r)
    assert got["x-consumer-username"] == ["jill"]
    assert got["apikey"] == ["jill-key"]  # not hidden unless configured
    # on a route without auth, a client-sent consumer name never reaches the upstream
    r = request(gw.port, path="/public/x", headers={"X-Consumer-Username": "jack"})
    assert "x-consumer-username" not in echoed_headers(r)


def test_whitespace_after_the_key_is_not_part_of_it(gw):
    """llhttp leaves the whitespace after a header value in it; it is not part of the value
    (RFC 9110 5.5) and nginx trims it, so a key followed by spaces or a tab still matches."""
    for sent in (b"jill-key   ", b"jill-key\t "):
        reply = raw_request(
            gw.port,
            b"GET /admin/x HTTP/1.1\r\nHost: a\r\napikey: " + sent + b"\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        echo = json.loads(reply.partition(b"\r\n\r\n")[2])
        names = {k.lower(): v for k, v in echo["headers"]}
        assert names["x-consumer-username"] == "jill"


def test_key_in_the_query_and_hide_credentials(gw):
    r = request(gw.port, path="/admin/x?apikey=jack-key&a=1")
    assert r.status == 200 and r.json()["query"] == "apikey=jack-key&a=1"
    r = request(gw.port, path="/hidden/x?apikey=jack-key&a=1")
    assert r.status == 200 and r.json()["query"] == "a=1"
    r = request(gw.port, path="/hidden/x", headers={"apikey": "jack-key"})
    headers = echoed_headers(r)
    assert "apikey" not in headers and headers["x-consumer-username"] == ["jack"]


def test_merging_route_over_service_and_meta(gw):
    # the service's key-auth reads x-svc-key; the route's own reads apikey
    assert request(gw.port, path="/svc/inherit", headers={"x-svc-key": "jack-key"}).status == 200
    assert request(gw.port, path="/svc/inherit", headers={"apikey": "jack-key"}).status == 401
    assert request(gw.port, path="/svc/own", headers={"apikey": "jack-key"}).status == 200
    assert request(gw.port, path="/svc/own", headers={"x-svc-key": "jack-key"}).status == 401
    # _meta.disable on the route turns the service's key-auth off for that route
    assert request(gw.port, path="/svc/off").status == 200
    # _meta.error_response replaces the refusal's body, keeps its status
    r = request(gw.port, path="/custom")
    assert (r.status, r.json()) == (401, {"msg": "go away"})


@pytest.mark.parametrize(
    "target",
    [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/.%2E/admin/x",
        "//admin/x",
        "/public/./../admin/x",
        "/./admin/x",
        "/%61dmin/x",
    ],
)
def test_no_spelling_of_a_path_reaches_the_authenticated_route_without_a_key(gw, upstream, target):
    upstream.requests.clear()
    raw = raw_request(
        gw.port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n", read_all=False
    )
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 401), raw[:200]
    assert upstream.requests == []


@pytest.mark.parametrize(
    "target", ["/public/..%2fadmin/x", "/public/%2F../admin/x", "/public/..\\admin/x"]
)
def test_encoded_separators_are_refused_outright(gw, upstream, target):
    upstream.requests.clear()
    raw = raw_request(
        gw.port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n", read_all=False
    )
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
    assert upstream.requests == []


def test_a_global_rule_authenticates_even_requests_that_match_no_route(upstream, tmp_path: Path):
    config = {
        "global_rules": [{"id": "auth-all", "plugins": {"key-auth": {}}}],
        "routes": [{"uri": "/open", "upstream": {"nodes": {upstream.addr: 1}}}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k"}}}],
    }
    with GatewayProcess(config, tmp_path, access_log=False) as g:
        assert request(g.port, path="/open").status == 401
        assert request(g.port, path="/nowhere").status == 401
        r = request(g.port, path="/nowhere", headers={"apikey": "k"})
        assert (r.status, r.json()) == (404, {"error_msg": "404 Route Not Found"})
        r = request(g.port, path="/open", headers={"apikey": "k"})
        assert echoed_headers(r)["x-consumer-username"] == ["jack"]
