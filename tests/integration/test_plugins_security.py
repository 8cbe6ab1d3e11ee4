"""The security plugins through a running gateway, as a client and an upstream see them:
ip-restriction, ua-restriction, referer-restriction, uri-blocker, cors, csrf and real-ip, with
APISIX's statuses and bodies, and the attacks each one exists for (a spoofed X-Forwarded-For,
another spelling of a blocked path, a second User-Agent or Referer, a forged CSRF token).
"""

from __future__ import annotations

import base64
import http.client
import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ando.plugins.security.csrf import make_token, sign
from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import closed_port, echoed_headers

IP_REFUSED = {"message": "Your IP address is not allowed"}
UA_REFUSED = {"message": "Not allowed"}
REFERER_REFUSED = {"message": "Your referer host is not allowed"}
CSRF_KEY = "s3cret-key"


def cors_headers(r) -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in r.headers
        if k.lower().startswith("access-control-") or k.lower() in ("vary", "timing-allow-origin")
    }


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def route(rid: str, uri: str, plugins: dict, upstream_: dict = up) -> dict:
        return {"id": rid, "uri": uri, "upstream": upstream_, "plugins": plugins}

    only_10123 = {"whitelist": ["10.1.2.3"]}
    config = {
        "routes": [
            # ip-restriction
            route("ip-w", "/ip/white", {"ip-restriction": {"whitelist": ["127.0.0.1", "::1"]}}),
            route(
                "ip-w-other",
                "/ip/white-other",
                {"ip-restriction": {"whitelist": ["10.0.0.0/8", "2001:db8::/32"]}},
            ),
            route(
                "ip-b",
                "/ip/black",
                {
                    "ip-restriction": {
                        "blacklist": ["127.0.0.0/24"],
                        "message": "go away",
                        "response_code": 404,
                    }
                },
            ),
            route("ip-b-other", "/ip/black-other", {"ip-restriction": {"blacklist": ["10.0.0.1"]}}),
            # ua-restriction
            route(
                "ua-deny",
                "/ua/deny",
                {"ua-restriction": {"denylist": [r"(Baiduspider)/(\d+)\.(\d+)", "bad-bot"]}},
            ),
            route(
                "ua-allow",
                "/ua/allow",
                {
                    "ua-restriction": {
                        "allowlist": ["^my-app/"],
                        "bypass_missing": True,
                        "message": "unknown client",
                    }
                },
            ),
            # referer-restriction
            route(
                "ref-w",
                "/referer/white",
                {"referer-restriction": {"whitelist": ["*.example.com", "example.org"]}},
            ),
            route(
                "ref-b",
                "/referer/black",
                {"referer-restriction": {"blacklist": ["evil.com"], "bypass_missing": True}},
            ),
            # uri-blocker
            route(
                "ub",
                "/blocked/*",
                {
                    "uri-blocker": {
                        "block_rules": ["root.exe", "^/blocked/adm"],
                        "rejected_msg": "access is not allowed",
                    }
                },
            ),
            route(
                "ub2",
                "/blocked2/*",
                {
                    "uri-blocker": {
                        "block_rules": ["secret"],
                        "case_insensitive": True,
                        "rejected_code": 404,
                    }
                },
            ),
            # cors
            route("cors-default", "/cors/default", {"cors": {}}),
            route(
                "cors-list",
                "/cors/list",
                {
                    "cors": {
                        "allow_origins": "http://a.com,https://b.com:8443",
                        "allow_methods": "GET,POST",
                        "allow_headers": "**",
                        "expose_headers": "X-Request-Id",
                        "max_age": 60,
                        "allow_credential": True,
                        "timing_allow_origins": "https://b.com:8443",
                    }
                },
            ),
            route(
                "cors-regex",
                "/cors/regex",
                {"cors": {"allow_origins_by_regex": [r"^https://[a-z]+\.example\.com$"]}},
            ),
            route("cors-meta", "/cors/meta", {"cors": {"allow_origins_by_metadata": ["EX"]}}),
            route(
                "cors-auth",
                "/cors/auth",
                {"cors": {"allow_origins": "http://a.com"}, "key-auth": {}},
            ),
            route(
                "cors-down",
                "/cors/down",
                {"cors": {"allow_origins": "http://a.com"}},
                {"nodes": {f"127.0.0.1:{closed_port()}": 1}},
            ),
            # csrf
            route("csrf", "/csrf", {"csrf": {"key": CSRF_KEY}}),
            # real-ip + ip-restriction
            route(
                "rip-untrusted",
                "/rip/untrusted",
                {
                    "real-ip": {
                        "source": "http_x_forwarded_for",
                        "trusted_addresses": ["10.0.0.0/8", "2001:db8::/32"],
                    },
                    "ip-restriction": only_10123,
                },
            ),
            route(
                "rip-trusted",
                "/rip/trusted",
                {
                    "real-ip": {
                        "source": "http_x_forwarded_for",
                        "trusted_addresses": ["127.0.0.1"],
                    },
                    "ip-restriction": only_10123,
                },
            ),
            route(
                "rip-recursive",
                "/rip/recursive",
                {
                    "real-ip": {
                        "source": "http_x_forwarded_for",
                        "trusted_addresses": ["127.0.0.1", "192.168.0.0/16"],
                        "recursive": True,
                    },
                    "ip-restriction": only_10123,
                },
            ),
            route(
                "rip-header",
                "/rip/header",
                {"real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.0/8"]}},
            ),
            route(
                "rip-arg",
                "/rip/arg",
                {
                    "real-ip": {"source": "arg_realip", "trusted_addresses": ["127.0.0.1"]},
                    "ip-restriction": {"blacklist": ["6.6.6.6"]},
                },
            ),
            route(
                "rip-none",
                "/rip/none",
                {"real-ip": {"source": "http_x_forwarded_for"}, "ip-restriction": only_10123},
            ),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        "plugin_metadata": [
            {
                "id": "cors",
                "allow_origins": {"EX": "https://meta.example.com,https://other.example.com"},
            }
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("security"), access_log=False) as g:
        yield g


# --- ip-restriction -------------------------------------------------------------------------


def test_ip_restriction_whitelist_and_blacklist(gw):
    assert request(gw.port, path="/ip/white").status == 200
    r = request(gw.port, path="/ip/white-other")
    assert (r.status, r.json()) == (403, IP_REFUSED)
    r = request(gw.port, path="/ip/black")
    assert (r.status, r.json()) == (404, {"message": "go away"})
    assert request(gw.port, path="/ip/black-other").status == 200


def test_ip_restriction_refusal_never_reaches_the_upstream(gw, upstream):
    upstream.requests.clear()
    assert request(gw.port, path="/ip/white-other").status == 403
    assert upstream.requests == []


# --- ua-restriction -------------------------------------------------------------------------


def test_ua_denylist(gw):
    r = request(gw.port, path="/ua/deny")  # no User-Agent, bypass_missing false
    assert (r.status, r.json()) == (403, UA_REFUSED)
    r = request(gw.port, path="/ua/deny", headers={"User-Agent": "Baiduspider/5.0"})
    assert (r.status, r.json()) == (403, UA_REFUSED)
    r = request(gw.port, path="/ua/deny", headers={"User-Agent": "curl/8.0"})
    assert r.status == 200
    # a denied agent cannot hide behind a harmless one sent first
    r = request(
        gw.port, path="/ua/deny", headers=[("User-Agent", "curl/8.0"), ("User-Agent", "bad-bot")]
    )
    assert (r.status, r.json()) == (403, UA_REFUSED)


def test_ua_allowlist_with_bypass_missing(gw):
    assert request(gw.port, path="/ua/allow").status == 200  # missing: bypassed
    r = request(gw.port, path="/ua/allow", headers={"User-Agent": "  my-app/1.2 "})
    assert r.status == 200  # surrounding spaces stripped, as APISIX does
    r = request(gw.port, path="/ua/allow", headers={"User-Agent": "other/1"})
    assert (r.status, r.json()) == (403, {"message": "unknown client"})
    # APISIX: with an allowlist, one allowed agent among several lets the request through
    r = request(
        gw.port, path="/ua/allow", headers=[("User-Agent", "other/1"), ("User-Agent", "my-app/2")]
    )
    assert r.status == 200


# --- referer-restriction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("referer", "status"),
    [
        ("https://a.example.com/page", 200),
        ("HTTPS://A.EXAMPLE.COM", 200),
        ("http://example.org:8080/x?y", 200),
        ("//example.org/scheme-relative", 200),
        ("https://example.com/", 403),  # *.example.com does not cover example.com
        ("https://a.example.com.evil.net/", 403),
        ("http://a.example.com@evil.net/", 403),  # the host is evil.net
        ("ftp://a.example.com/", 403),
        ("not a url", 403),
        (None, 403),
    ],
)
def test_referer_whitelist(gw, referer, status):
    r = request(gw.port, path="/referer/white", headers={"Referer": referer} if referer else {})
    assert r.status == status
    if status == 403:
        assert r.json() == REFERER_REFUSED


@pytest.mark.parametrize(
    ("referers", "status"),
    [
        ([], 200),  # bypass_missing
        (["garbage"], 200),  # not a URL counts as missing
        (["http://good.com/"], 200),
        (["http://evil.com/"], 403),
        (["https://EVIL.com.:443/"], 403),
        (["http://good.com@evil.com/"], 403),
        (["http://evil.com#@good.com"], 403),
        (["http://good.com/", "http://evil.com/"], 403),
    ],
)
def test_referer_blacklist(gw, referers, status):
    r = request(gw.port, path="/referer/black", headers=[("Referer", v) for v in referers])
    assert r.status == status
    if status == 403:
        assert r.json() == REFERER_REFUSED


# --- uri-blocker ----------------------------------------------------------------------------


BLOCKED = {"error_msg": "access is not allowed"}


@pytest.mark.parametrize(
    "path",
    [
        "/blocked/root.exe?a=a",
        "/blocked/ok?file=root.exe",  # the query is part of request_uri
        "/blocked/admin",
        "/blocked/%61dmin",  # percent-encoded spelling of /blocked/admin
        "/blocked/x/../admin",  # dot segments
        "/blocked//./admin/",
        "/blocked/root%2Eexe",
    ],
)
def test_uri_blocker_blocks_every_spelling(gw, upstream, path):
    upstream.requests.clear()
    r = request(gw.port, path=path)
    assert (r.status, r.json()) == (403, BLOCKED)
    assert upstream.requests == []


def test_uri_blocker_lets_other_uris_through(gw):
    assert request(gw.port, path="/blocked/fine").status == 200
    assert request(gw.port, path="/blocked/ROOT.EXE").status == 200  # case-sensitive by default


def test_uri_blocker_case_insensitive_without_message(gw):
    r = request(gw.port, path="/blocked2/a/SeCrEt")
    assert r.status == 404
    assert r.header("content-type") == "text/html"
    assert b"<title>404 Not Found</title>" in r.body
    assert request(gw.port, path="/blocked2/a/public").status == 200


# --- cors -----------------------------------------------------------------------------------


def test_cors_defaults(gw):
    r = request(gw.port, path="/cors/default", headers={"Origin": "http://a.com"})
    assert r.status == 200
    assert cors_headers(r) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "*",
        "access-control-allow-headers": "*",
        "access-control-max-age": "5",
    }


def test_cors_preflight_is_answered_by_the_gateway(gw, upstream):
    upstream.requests.clear()
    r = request(
        gw.port,
        "OPTIONS",
        "/cors/list",
        headers={
            "Origin": "https://b.com:8443",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Token, Content-Type",
        },
    )
    assert (r.status, r.body) == (200, b"")
    assert cors_headers(r) == {
        "access-control-allow-origin": "https://b.com:8443",
        "vary": "Origin",
        "access-control-allow-methods": "GET,POST",
        "access-control-max-age": "60",
        "access-control-expose-headers": "X-Request-Id",
        "access-control-allow-headers": "X-Token, Content-Type",  # "**": what was asked
        "access-control-allow-credentials": "true",
        "timing-allow-origin": "https://b.com:8443",
    }
    r = request(
        gw.port,
        "OPTIONS",
        "/cors/default",
        headers={"Origin": "http://x.com", "Access-Control-Request-Method": "PUT"},
    )
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "*"
    assert upstream.requests == []


def test_cors_origin_not_allowed_gets_no_cors_headers(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, path="/cors/list", headers={"Origin": "http://evil.com"})
    assert r.status == 200 and cors_headers(r) == {}
    r = request(
        gw.port,
        "OPTIONS",
        "/cors/list",
        headers={"Origin": "http://evil.com", "Access-Control-Request-Method": "POST"},
    )
    assert r.status == 200 and cors_headers(r) == {}
    assert len(upstream.requests) == 1  # only the GET went upstream
    r = request(gw.port, path="/cors/list")  # no Origin at all
    assert cors_headers(r) == {}


def test_cors_regex_and_metadata(gw):
    ok = request(gw.port, path="/cors/regex", headers={"Origin": "https://app.example.com"})
    assert ok.header("access-control-allow-origin") == "https://app.example.com"
    assert ok.header("vary") == "Origin"
    for origin in ("https://example.com", "https://app.example.com.evil.net"):
        r = request(gw.port, path="/cors/regex", headers={"Origin": origin})
        assert cors_headers(r) == {}
    r = request(gw.port, path="/cors/meta", headers={"Origin": "https://other.example.com"})
    assert r.header("access-control-allow-origin") == "https://other.example.com"
    # the default allow_origins "*" does not widen a metadata list to every origin
    r = request(gw.port, path="/cors/meta", headers={"Origin": "http://a.com"})
    assert cors_headers(r) == {}


def test_cors_headers_on_gateway_made_responses(gw, upstream):
    origin = {"Origin": "http://a.com"}
    r = request(gw.port, path="/cors/auth", headers=origin)  # key-auth refuses
    assert (r.status, r.json()) == (401, {"message": "Missing API key in request"})
    assert r.header("access-control-allow-origin") == "http://a.com"
    # the preflight is answered before authentication (cors 4000 > key-auth 2500)
    upstream.requests.clear()
    r = request(
        gw.port,
        "OPTIONS",
        "/cors/auth",
        headers={**origin, "Access-Control-Request-Method": "GET"},
    )
    assert r.status == 200 and r.header("access-control-allow-origin") == "http://a.com"
    assert upstream.requests == []
    r = request(gw.port, path="/cors/auth", headers={**origin, "apikey": "jack-key"})
    assert r.status == 200 and r.header("access-control-allow-origin") == "http://a.com"
    r = request(gw.port, path="/cors/down", headers=origin)  # upstream refuses connections
    assert r.status == 502
    assert r.header("access-control-allow-origin") == "http://a.com"


# --- csrf -----------------------------------------------------------------------------------


COOKIE_RE = re.compile(
    r"^apisix-csrf-token=([A-Za-z0-9+/=]+);path=/;SameSite=Lax;"
    r"Expires=(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d-[A-Z][a-z]{2}-\d\d \d\d:\d\d:\d\d GMT$"
)


def csrf_post(gw, header: str | None, cookie: str | None):
    headers = []
    if header is not None:
        headers.append(("apisix-csrf-token", header))
    if cookie is not None:
        headers.append(("Cookie", f"other=1; apisix-csrf-token={cookie}"))
    return request(gw.port, "POST", "/csrf", headers=headers, body=b"x=1")


def test_csrf_safe_methods_get_a_token_cookie(gw):
    for method in ("GET", "HEAD", "OPTIONS"):
        r = request(gw.port, method, "/csrf")
        assert r.status == 200, method
        m = COOKIE_RE.match(r.header("set-cookie") or "")
        assert m, r.header("set-cookie")
        token = orjson.loads(base64.b64decode(m.group(1)))
        assert set(token) == {"random", "expires", "sign"}
        assert abs(token["expires"] - time.time()) < 60  # the issue time
        assert token["sign"] == sign(token["random"], token["expires"], CSRF_KEY)


def test_csrf_unsafe_method_with_the_cookie_token_passes(gw):
    cookie = COOKIE_RE.match(request(gw.port, path="/csrf").header("set-cookie")).group(1)
    r = csrf_post(gw, cookie, cookie)
    assert r.status == 200
    assert COOKIE_RE.match(r.header("set-cookie"))  # a fresh token every response


def test_csrf_refusals(gw, upstream):
    good = make_token(CSRF_KEY)
    forged = make_token("not-the-key")
    expired = make_token(CSRF_KEY, now=int(time.time()) - 7300)
    upstream.requests.clear()
    cases = [
        (None, None, "no csrf token in headers"),
        ("", good, "no csrf token in headers"),
        (good, None, "no csrf cookie"),
        (good, make_token(CSRF_KEY), "csrf token mismatch"),
        (forged, forged, "Failed to verify the csrf token signature"),
        (expired, expired, "Failed to verify the csrf token signature"),
        ("bm90IGpzb24=", "bm90IGpzb24=", "Failed to verify the csrf token signature"),
    ]
    for header, cookie, message in cases:
        r = csrf_post(gw, header, cookie)
        assert (r.status, r.json()) == (401, {"error_msg": message}), (header, cookie)
        assert COOKIE_RE.match(r.header("set-cookie"))  # refusals get a token too (APISIX)
    assert upstream.requests == []


# --- real-ip --------------------------------------------------------------------------------


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(gw, upstream):
    """The attack: a client claims a whitelisted address; its peer (127.0.0.1) is no proxy."""
    upstream.requests.clear()
    r = request(gw.port, path="/rip/untrusted", headers={"X-Forwarded-For": "10.1.2.3"})
    assert (r.status, r.json()) == (403, IP_REFUSED)
    assert upstream.requests == []


def test_forwarded_for_from_a_trusted_peer_sets_the_client(gw):
    r = request(gw.port, path="/rip/trusted", headers={"X-Forwarded-For": "10.1.2.3"})
    assert r.status == 200
    seen = echoed_headers(r)
    # What APISIX sends: X-Real-IP is the new address; X-Forwarded-For appends it.
    assert seen["x-real-ip"] == ["10.1.2.3"]
    assert seen["x-forwarded-for"] == ["10.1.2.3, 10.1.2.3"]
    r = request(gw.port, path="/rip/trusted", headers={"X-Forwarded-For": "10.9.9.9"})
    assert (r.status, r.json()) == (403, IP_REFUSED)
    # not recursive: the last address is the client, whatever is left of it
    r = request(gw.port, path="/rip/trusted", headers={"X-Forwarded-For": "10.1.2.3, 6.6.6.6"})
    assert r.status == 403


def test_real_ip_lasts_one_request_on_a_kept_alive_connection(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        first = request(
            gw.port, path="/rip/trusted", headers={"X-Forwarded-For": "10.1.2.3"}, conn=conn
        )
        assert first.status == 200
        second = request(gw.port, path="/rip/trusted", conn=conn)
        assert (second.status, second.json()) == (403, IP_REFUSED)
        third = request(gw.port, path="/ip/white", conn=conn)
        assert third.status == 200 and echoed_headers(third)["x-real-ip"] == ["127.0.0.1"]
    finally:
        conn.close()


def test_recursive_walks_past_trusted_proxies(gw):
    xff = {"X-Forwarded-For": "6.6.6.6, 10.1.2.3, 192.168.1.1"}
    r = request(gw.port, path="/rip/recursive", headers=xff)
    assert r.status == 200
    assert echoed_headers(r)["x-real-ip"] == ["10.1.2.3"]
    # the client named by the first untrusted hop, not by what it wrote further left
    xff = {"X-Forwarded-For": "10.1.2.3, 6.6.6.6, 192.168.1.1"}
    assert request(gw.port, path="/rip/recursive", headers=xff).status == 403
    # several header lines are one list
    lines = [("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-For", "192.168.7.7")]
    assert request(gw.port, path="/rip/recursive", headers=lines).status == 200


def test_real_ip_from_another_header_and_from_an_argument(gw):
    r = request(gw.port, path="/rip/header", headers={"X-Real-IP": "[2001:db8::5]:4321"})
    assert r.status == 200 and echoed_headers(r)["x-real-ip"] == ["2001:db8::5"]
    r = request(gw.port, path="/rip/header", headers={"X-Real-IP": "not-an-ip"})
    assert echoed_headers(r)["x-real-ip"] == ["127.0.0.1"]  # left as it was
    r = request(gw.port, path="/rip/arg?realip=6.6.6.6")
    assert (r.status, r.json()) == (403, IP_REFUSED)
    assert request(gw.port, path="/rip/arg?realip=7.7.7.7").status == 200


def test_real_ip_without_trusted_addresses_trusts_no_one(gw):
    r = request(gw.port, path="/rip/none", headers={"X-Forwarded-For": "10.1.2.3"})
    assert (r.status, r.json()) == (403, IP_REFUSED)
    assert "real-ip has no trusted_addresses" in gw.stderr()
