"""The pure parts of the security plugins, without sockets: Referer hosts, real-ip's address
parsing and X-Forwarded-For walk, the CSRF token (checked against APISIX's own test vector),
nginx's cookie date, and how cors picks the allowed origin."""

from __future__ import annotations

import base64
import calendar
from typing import Any

import orjson
import pytest

from ando.plugins.base import BuildContext
from ando.plugins.context import ResponseHead
from ando.plugins.pages import nginx_page
from ando.plugins.security.cors import ALL_METHODS, Cors, OriginRule
from ando.plugins.security.csrf import cookie_time, lua_number, make_token, verify_token
from ando.plugins.security.real_ip import forwarded_client, parse_addr
from ando.plugins.security.referer_restriction import HostMatcher, referer_host
from ando.plugins.shared import SharedDict
from ando.router.ipset import IPSet


@pytest.mark.parametrize(
    ("referer", "host"),
    [
        ("https://a.example.com/x", "a.example.com"),
        ("HTTP://A.Example.COM:8080?q", "a.example.com"),
        ("//cdn.example.com/x.js", "cdn.example.com"),
        ("http://user:pw@evil.com/", "evil.com"),
        ("http://good.com@evil.com@bad.net/", "bad.net"),
        ("http://evil.com#@good.com", "evil.com"),
        ("http://evil.com./", "evil.com"),
        ("http://[2001:db8::1]:80/", "[2001:db8::1]"),
        ("http://example.com:port/", None),
        ("ftp://example.com/", None),
        ("example.com", None),
        ("http:///path", None),
        ("", None),
    ],
)
def test_referer_host(referer, host):
    assert referer_host(referer) == host


def test_host_matcher_wildcards():
    m = HostMatcher(["*.Example.com", "exact.org"])
    assert m.matches("a.example.com") and m.matches("a.b.example.com")
    assert not m.matches("example.com") and not m.matches("badexample.com")
    assert m.matches("exact.org") and not m.matches("sub.exact.org")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1.2.3.4", ("1.2.3.4", None)),
        (" 1.2.3.4:5678 ", ("1.2.3.4", 5678)),
        ("::1", ("::1", None)),
        ("2001:db8::5", ("2001:db8::5", None)),
        ("[2001:db8::5]", ("2001:db8::5", None)),
        ("[2001:db8::5]:443", ("2001:db8::5", 443)),
        ("1.2.3.4:0", None),
        ("1.2.3.4:65536", None),
        ("1.2.3.4:", None),
        ("[::1]:", None),
        ("[::1]x", None),
        ("1.2.3", None),
        ("01.2.3.4", None),
        ("fe80::1%eth0", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_addr(text, parsed):
    assert parse_addr(text) == parsed


def test_forwarded_client():
    trusted = IPSet.parse(["127.0.0.1", "192.168.0.0/16"])
    assert forwarded_client([], None) is None
    assert forwarded_client(["6.6.6.6, 10.1.2.3"], None) == "10.1.2.3"
    assert forwarded_client(["6.6.6.6", "10.1.2.3 "], None) == "10.1.2.3"
    chain = ["6.6.6.6, 10.1.2.3, 192.168.1.1, 127.0.0.1"]
    assert forwarded_client(chain, trusted) == "10.1.2.3"
    assert forwarded_client(["192.168.1.2, 192.168.1.1"], trusted) == "192.168.1.2"
    assert forwarded_client(["garbage, 192.168.1.1"], trusted) == "garbage"


# APISIX's t/plugin/csrf.t: a token its csrf plugin accepts with key "userkey" (the random and
# the issue time, 7200, as Lua writes them).
APISIX_TOKEN = (
    "eyJzaWduIjoiZTlhNWVkOTBmZDc2YjRhMTYyMzg1ZDU2Y2ZhZDI1N2MxNmI0MWY1MjFjZWUwODczNzExM2NlYzZkZDQw"
    "MWJmNyIsInJhbmRvbSI6MC4zNjcxNDg2NDI2MjE0MywiZXhwaXJlcyI6NzIwMH0="
)


def test_csrf_token_format_is_apisix():
    assert verify_token(APISIX_TOKEN, "userkey", expires=0)
    assert not verify_token(APISIX_TOKEN, "otherkey", expires=0)
    assert not verify_token(APISIX_TOKEN, "userkey", expires=7200)  # issued in 1970
    assert verify_token(APISIX_TOKEN, "userkey", expires=7200, now=7200 + 7200)
    assert not verify_token(APISIX_TOKEN, "userkey", expires=7200, now=7200 + 7201)


def test_csrf_token_roundtrip_and_forgeries():
    token = make_token("k", now=1_700_000_000)
    body = orjson.loads(base64.b64decode(token))
    assert body["expires"] == 1_700_000_000
    assert lua_number(body["random"]) == format(body["random"], ".14g")
    assert verify_token(token, "k", expires=60, now=1_700_000_030)
    assert not verify_token(token, "k", expires=60, now=1_700_000_061)
    tampered = dict(body, expires=1_700_000_050)
    forged = base64.b64encode(orjson.dumps(tampered)).decode()
    assert not verify_token(forged, "k", expires=60, now=1_700_000_030)
    for junk in ("", "!!!", base64.b64encode(b"[1,2]").decode(), base64.b64encode(b"{}").decode()):
        assert not verify_token(junk, "k", expires=0)
    odd = base64.b64encode(orjson.dumps({"random": True, "expires": 1, "sign": "x"})).decode()
    assert not verify_token(odd, "k", expires=0)


def test_lua_number():
    assert lua_number(7200) == "7200"
    assert lua_number(0.36714864262143) == "0.36714864262143"
    assert lua_number(1e15) == "1e+15"
    assert lua_number("0.5") == "0.5"


def test_cookie_time_is_nginx_format():
    t = calendar.timegm((2025, 11, 18, 11, 27, 35, 0, 0, 0))
    assert cookie_time(t) == "Tue, 18-Nov-25 11:27:35 GMT"
    t = calendar.timegm((2040, 1, 2, 3, 4, 5, 0, 0, 0))
    assert cookie_time(t) == "Mon, 02-Jan-2040 03:04:05 GMT"


def test_error_page():
    # uri-blocker's refusal without rejected_msg: nginx's page, as APISIX's ngx.exit(code)
    page = nginx_page(403)
    assert page.status == 403 and page.content_type == "text/html"
    assert b"<title>403 Forbidden</title>" in page.body
    assert nginx_page(200).body == b"" and nginx_page(418).body == b""


def test_origin_rule():
    assert OriginRule("*").allowed("http://a.com") == "*"
    assert OriginRule("*").allowed(None) == "*"
    assert OriginRule("**").allowed("http://a.com") == "http://a.com"
    assert OriginRule("**").allowed(None) == "*"
    assert OriginRule("http://a.com").allowed("http://a.com") == "http://a.com"
    assert OriginRule("http://a.com").allowed("http://a.com:80") is None
    rule = OriginRule("http://a.com,https://b.com")
    assert rule.allowed("https://b.com") == "https://b.com"
    assert rule.allowed("https://c.com") is None and rule.allowed(None) is None


def make_cors(conf: dict[str, Any], metadata: dict[str, Any] | None = None) -> Cors:
    full = {
        "allow_origins": "*",
        "allow_methods": "*",
        "allow_headers": "*",
        "max_age": 5,
        "allow_credential": False,
        **conf,
    }
    build = BuildContext(
        owner="route:1", snapshot=None, shared=SharedDict(), cache={}, metadata=metadata
    )
    return Cors(full, build)


def test_cors_allowed_origin_order():
    meta = {"allow_origins": {"EX": "https://m.com", "ANY": "*"}}
    only_meta = make_cors({"allow_origins_by_metadata": ["EX"]}, meta)
    assert only_meta.allowed_origin("https://m.com") == "https://m.com"
    assert only_meta.allowed_origin("https://x.com") is None  # "*" default does not widen
    assert only_meta.allowed_origin(None) is None
    meta_then_list = make_cors(
        {"allow_origins_by_metadata": ["EX", "MISSING"], "allow_origins": "https://l.com"}, meta
    )
    assert meta_then_list.allowed_origin("https://l.com") == "https://l.com"
    assert meta_then_list.allowed_origin("https://m.com") == "https://m.com"
    assert meta_then_list.allowed_origin("https://x.com") is None
    any_meta = make_cors({"allow_origins_by_metadata": ["ANY"]}, meta)
    assert any_meta.allowed_origin("https://x.com") == "https://x.com"
    no_meta = make_cors({"allow_origins_by_metadata": ["EX"]}, None)
    assert no_meta.allowed_origin("https://m.com") is None
    regex = make_cors(
        {"allow_origins_by_regex": [r"\.test\.com$"], "allow_origins": "https://l.com"}
    )
    assert regex.allowed_origin("https://a.test.com") == "https://a.test.com"
    assert regex.allowed_origin("https://l.com") is None  # the regexes replace allow_origins
    assert regex.allowed_origin(None) is None
    fixed = dict(make_cors({"allow_methods": "**"}).fixed)
    assert fixed[b"Access-Control-Allow-Methods"] == ALL_METHODS.encode()


class _Ctx:
    """The two things cors's header_filter reads from a request context."""

    def __init__(self, origin: str | None, asked: str | None = None) -> None:
        self.data = {"cors:origin": origin}
        self.asked = asked

    def header(self, name: str) -> str | None:
        return self.asked if name == "Access-Control-Request-Headers" else None


def test_cors_replaces_only_the_headers_it_owns():
    upstream_head = [
        (b"Content-Type", b"text/plain"),
        (b"access-control-allow-origin", b"https://upstream.example"),
        (b"Access-Control-Expose-Headers", b"X-Upstream"),
        (b"Access-Control-Allow-Headers", b"X-Upstream"),
        (b"Vary", b"Accept-Encoding"),
    ]
    head = ResponseHead(200, list(upstream_head))
    make_cors({"allow_origins": "http://a.com", "allow_headers": "**"}).header_filter(
        _Ctx("http://a.com"), head
    )
    date_server = head.items()[:2]  # the gateway's, which every response carries
    assert [name for name, _ in date_server] == ["Date", "Server"]
    assert head.items()[2:] == [
        ("Content-Type", "text/plain"),
        ("Access-Control-Expose-Headers", "X-Upstream"),  # expose_headers unset: untouched
        ("Vary", "Accept-Encoding"),
        ("Access-Control-Allow-Origin", "http://a.com"),
        ("Vary", "Origin"),
        ("Access-Control-Allow-Methods", "*"),
        ("Access-Control-Max-Age", "5"),
        # "**" and no Access-Control-Request-Headers: the upstream's value is removed
    ]
    head = ResponseHead(200, list(upstream_head))
    make_cors({"allow_origins": "http://a.com"}).header_filter(_Ctx("http://evil.com"), head)
    assert head.headers == upstream_head  # a refused origin: nothing changes
