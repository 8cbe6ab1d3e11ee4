"""APISIX-compatibility checks of the transformation and security plugins through a running
gateway: what a client sees where Ando used to answer differently from APISIX 3.x."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess


def nginx_page(title: str) -> bytes:
    """nginx's page for a bare status, as OpenResty (so APISIX) sends it."""
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n"
        "<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "routes": [
            {
                "uri": "/fi/no-body",
                "upstream": up,
                "plugins": {
                    "fault-injection": {
                        "abort": {"http_status": 503, "headers": {"X-Fault": "$arg_who"}}
                    }
                },
            },
            {
                "uri": "/fi/no-page",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 418}}},
            },
            {
                "uri": "/fi/empty-body",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 503, "body": ""}}},
            },
            {
                "uri": "/ub/*",
                "upstream": up,
                "plugins": {"uri-blocker": {"block_rules": ["^/ub/deny"]}},
            },
            {
                "uri": "/ub418/*",
                "upstream": up,
                "plugins": {"uri-blocker": {"block_rules": ["deny"], "rejected_code": 418}},
            },
            {
                "uri": "/rd/*",
                "upstream": up,
                "plugins": {"redirect": {"regex_uri": ["^/rd/(.*)", "/new/$1"], "ret_code": 301}},
            },
            {
                "uri": "/rd300/*",
                "upstream": up,
                "plugins": {"redirect": {"uri": "/new/x", "ret_code": 300}},
            },
            {
                "uri": "/rv",
                "upstream": up,
                "plugins": {"request-validation": {"body_schema": {"type": "object"}}},
            },
            {
                "uri": "/rv-msg",
                "upstream": up,
                "plugins": {
                    "request-validation": {"body_schema": {"type": "object"}, "rejected_msg": "no"}
                },
            },
        ]
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("transform-compat")) as g:
        yield g


# --- fault-injection --------------------------------------------------------------------------


def test_fault_abort_without_body_is_nginx_page(gw, upstream):
    # APISIX: core.response.exit(503) with no body is ngx.exit(503): nginx's HTML page
    r = request(gw.port, path="/fi/no-body?who=me")
    assert r.status == 503
    assert r.body == nginx_page("503 Service Temporarily Unavailable")
    assert r.header("content-type") == "text/html"
    assert r.header("x-fault") == "me"


def test_fault_abort_status_nginx_has_no_page_for_is_empty(gw):
    r = request(gw.port, path="/fi/no-page")
    assert (r.status, r.body) == (418, b"")


def test_fault_abort_with_empty_body_stays_empty(gw):
    # an empty string is a body: APISIX prints it (nothing), no error page
    r = request(gw.port, path="/fi/empty-body")
    assert (r.status, r.body) == (503, b"")


# --- uri-blocker ------------------------------------------------------------------------------


def test_uri_blocker_without_message_is_nginx_page(gw):
    r = request(gw.port, path="/ub/deny")
    assert r.status == 403
    assert r.body == nginx_page("403 Forbidden")
    assert r.header("content-type") == "text/html"


def test_uri_blocker_status_nginx_has_no_page_for_is_empty(gw):
    # ngx.exit(418): nginx has no page for 418, the body is empty
    r = request(gw.port, path="/ub418/deny")
    assert (r.status, r.body) == (418, b"")


# --- redirect ---------------------------------------------------------------------------------


def test_redirect_page_has_nginx_footer(gw):
    # APISIX's redirect ends with ngx.exit(ret_code): nginx's page, footer included
    r = request(gw.port, path="/rd/x")
    assert r.status == 301 and r.header("location") == "/new/x"
    assert r.body == nginx_page("301 Moved Permanently")


def test_redirect_with_status_nginx_has_no_page_for(gw):
    r = request(gw.port, path="/rd300/x")
    assert r.status == 300 and r.header("location") == "/new/x"
    assert r.body == b""


# --- request-validation -----------------------------------------------------------------------


def test_request_validation_without_body_or_message_is_nginx_page(gw, upstream):
    # APISIX: `return conf.rejected_code, conf.rejected_msg` with no msg: ngx.exit(400)
    upstream.requests.clear()
    r = request(gw.port, "POST", "/rv")
    assert r.status == 400
    assert r.body == nginx_page("400 Bad Request")
    assert r.header("content-type") == "text/html"
    assert upstream.requests == []


def test_request_validation_without_body_sends_rejected_msg(gw):
    r = request(gw.port, "POST", "/rv-msg")
    assert (r.status, r.body) == (400, b"no")
