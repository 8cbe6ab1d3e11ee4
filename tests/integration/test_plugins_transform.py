"""proxy-rewrite, response-rewrite, request-id and redirect through a running gateway: what the
upstream received and what the client got, plus the header-injection and path attacks their
`$var` templates invite, and `ando validate`'s refusals of bad configurations."""

from __future__ import annotations

import http.client
import re
import ssl
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.certs import make_cert
from tests.support.client import request
from tests.support.config import UP, config_problems, snapshot
from tests.support.gateway import GatewayProcess
from tests.support.upstream import echoed_headers, free_port


def proxied(
    gw: GatewayProcess, path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None
) -> dict:
    """What the upstream received for a GET of `path` through the gateway (see `seen`)."""
    return seen(request(gw.port, path=path, headers=headers))


def seen(r) -> dict:
    """What the upstream echoed: method, url, path, query, headers (lower-case names)."""
    echo = r.json()
    echo["h"] = echoed_headers(r)
    return echo


def logged_ids(gw: GatewayProcess, path: str, want: set[str]) -> set[str]:
    """request_id of the access-log lines for `path`, once `want` are all there (the log is
    written asynchronously; bounded wait)."""
    deadline = time.monotonic() + 5
    while True:
        found = {line["request_id"] for line in gw.access_log_lines() if line["path"] == path}
        if want <= found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def one(echo: dict, name: str) -> str | None:
    values = echo["h"].get(name.lower())
    assert values is None or len(values) == 1, values
    return values[0] if values else None


@pytest.fixture(scope="module")
def tls_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(up, tls_port, tmp_path_factory) -> Iterator[GatewayProcess]:
    def route(uri: str, plugins: dict, **extra) -> dict:
        return {"uri": uri, "upstream": up, "plugins": plugins, **extra}

    cert, key = make_cert("127.0.0.1")
    config = {
        "ssls": [{"id": "local", "cert": cert, "key": key, "snis": ["127.0.0.1", "localhost"]}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        "routes": [
            # --- proxy-rewrite
            route("/pr/uri/*", {"proxy-rewrite": {"uri": "/new/$arg_id"}}),
            route("/pr/uriq", {"proxy-rewrite": {"uri": "/new?fixed=1"}}),
            route("/pr/trav", {"proxy-rewrite": {"uri": "/files/$arg_f"}}),
            route(
                "/pr/regex/*",
                {
                    "proxy-rewrite": {
                        "regex_uri": [
                            "^/pr/regex/a/(.*)",
                            "/A/$1",
                            "^/pr/regex/(\\w+)/(\\w+)$",
                            "/R/${2}/$1",
                        ],
                        "headers": {"set": {"X-Cap": "$1+$2", "X-Whole": "$0"}},
                    }
                },
            ),
            route("/pr/method", {"proxy-rewrite": {"method": "POST"}}),
            route(
                "/pr/fwd",
                {
                    "proxy-rewrite": {
                        "headers": {
                            "set": {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}
                        }
                    }
                },
            ),
            route("/pr/host", {"proxy-rewrite": {"host": "backend.internal:8080"}}),
            route(
                "/pr/hdr-old",
                {
                    "proxy-rewrite": {
                        "headers": {
                            "X-Api-Version": "v1",
                            "X-Client": "$remote_addr",
                            "X-Drop": "",
                            "X-Num": 7,
                        }
                    }
                },
            ),
            route(
                "/pr/hdr-new",
                {
                    "proxy-rewrite": {
                        "headers": {
                            "add": {"X-Add": "added"},
                            "set": {
                                "X-Set": "s-$arg_v",
                                "X-User": "${http_x_user ?? anon}",
                                "X-Missing": "$arg_nope",
                                "X-Text": "日本",
                            },
                            "remove": ["X-Remove"],
                        }
                    }
                },
            ),
            route("/pr/inject", {"proxy-rewrite": {"headers": {"set": {"X-From-Arg": "$arg_x"}}}}),
            route("/pr/raw/*", {"proxy-rewrite": {"use_real_request_uri_unsafe": True}}),
            # --- response-rewrite
            route(
                "/rr/basic",
                {
                    "response-rewrite": {
                        "status_code": 201,
                        "body": "new body",
                        "headers": {"X-Server": "ando", "X-Uri": "$uri"},
                    }
                },
            ),
            route("/rr/b64", {"response-rewrite": {"body": "aGVsbG8=", "body_base64": True}}),
            route(
                "/chunked",
                {
                    "response-rewrite": {
                        "filters": [{"regex": "b+", "scope": "global", "replace": "[$0]"}]
                    }
                },
            ),
            route(
                "/rr/once",
                {
                    "proxy-rewrite": {"uri": "/chunked"},
                    "response-rewrite": {
                        "filters": [
                            {"regex": "[A-C]", "replace": "X", "options": "ijo"},
                            {"regex": "c(c)", "scope": "global", "replace": "<$1>"},
                        ]
                    },
                },
            ),
            route(
                "/status/*",
                {
                    "response-rewrite": {
                        "vars": [["status", "==", 404]],
                        "status_code": 410,
                        "body": "custom 404 page",
                        "headers": {"X-Custom": "1"},
                    }
                },
            ),
            route("/rr/status", {"response-rewrite": {"status_code": 202}}),
            route(
                "/rr/headers",
                {
                    "response-rewrite": {
                        "headers": {
                            "add": ["Set-Cookie: a=1", "Set-Cookie: b=2"],
                            "set": {"X-Hello": "hi $arg_name", "Content-Type": "text/x-custom"},
                            "remove": ["X-Upstream-Secret"],
                        }
                    }
                },
            ),
            route(
                "/rr/auth",
                {
                    "key-auth": {},
                    "response-rewrite": {
                        "vars": [["status", "==", 401]],
                        "body": '{"message":"please log in"}',
                        "headers": {
                            "set": {"Content-Type": "application/json", "X-Hint": "apikey"}
                        },
                    },
                },
            ),
            # --- request-id
            route("/rid/uuid", {"request-id": {}}),
            route("/rid/nanoid", {"request-id": {"algorithm": "nanoid"}}),
            route(
                "/rid/range",
                {
                    "request-id": {
                        "algorithm": "range_id",
                        "range_id": {"length": 10, "char_set": "abcdef"},
                    }
                },
            ),
            route("/rid/ksuid", {"request-id": {"algorithm": "ksuid"}}),
            route(
                "/rid/quiet",
                {"request-id": {"header_name": "X-Trace", "include_in_response": False}},
            ),
            route("/rid/auth", {"request-id": {}, "key-auth": {}}),
            # the response already has the header: from the upstream, or from another plugin
            route("/rid/upstream-has", {"request-id": {"header_name": "Content-Type"}}),
            route(
                "/rid/plugin-has",
                {
                    "request-id": {"header_name": "X-RateLimit-Limit"},
                    "limit-count": {"count": 100, "time_window": 60},
                },
            ),
            # --- redirect
            route("/rd/uri/*", {"redirect": {"uri": "/new$uri?from=${arg_f}", "ret_code": 301}}),
            route("/rd/regex/*", {"redirect": {"regex_uri": ["^/rd/regex/(a.*)", "/moved/$1"]}}),
            route("/rd/https/*", {"redirect": {"http_to_https": True}}),
            route(
                "/rd/encode",
                {
                    "redirect": {
                        "uri": "/new path/$arg_a",
                        "encode_uri": True,
                        "append_query_string": True,
                    }
                },
            ),
            route("/rd/next", {"redirect": {"uri": "/go?to=$arg_next"}}),
        ],
    }
    g = GatewayProcess({}, tmp_path_factory.mktemp("transform"))
    config["ando"] = {
        "listen": [f"127.0.0.1:{g.port}", {"addr": f"127.0.0.1:{tls_port}", "tls": True}]
    }
    g.write_config(config)
    with g:
        yield g


@pytest.fixture(scope="module")
def upstream_secret(upstream) -> Iterator[None]:
    upstream.extra_headers.append(("X-Upstream-Secret", "s3cret"))
    yield
    upstream.extra_headers.clear()


# --------------------------------------------------------------------------- proxy-rewrite


def test_uri_with_a_var_keeps_the_clients_query(gw):
    e = proxied(gw, "/pr/uri/x?id=7&b=2")
    assert (e["path"], e["query"]) == ("/new/7", "id=7&b=2")
    e = proxied(gw, "/pr/uri/x")
    assert e["url"] == "/new/"  # a missing variable is empty


def test_a_uri_with_its_own_query_gets_the_clients_after_an_ampersand(gw):
    assert proxied(gw, "/pr/uriq?b=2")["url"] == "/new?fixed=1&b=2"
    assert proxied(gw, "/pr/uriq")["url"] == "/new?fixed=1"


def test_a_variables_value_is_encoded_so_it_cannot_add_a_query_or_dot_segments(gw):
    e = proxied(gw, "/pr/trav?f=%252e%252e%252fadmin")
    assert e["path"] == "/files/%252e%252e%252fadmin"
    e = proxied(gw, "/pr/trav?f=a%3Fb%23c%20d")
    assert e["url"] == "/files/a%3Fb%23c%20d?f=a%3Fb%23c%20d"


def test_regex_uri_first_matching_pair_wins_and_captures_reach_headers(gw):
    e = proxied(gw, "/pr/regex/a/zz/y?q=1")
    assert e["url"] == "/A/zz/y?q=1"
    assert (one(e, "x-cap"), one(e, "x-whole")) == ("zz/y+", "/pr/regex/a/zz/y")
    e = proxied(gw, "/pr/regex/foo/bar")
    assert e["url"] == "/R/bar/foo"
    assert one(e, "x-cap") == "foo+bar"
    e = proxied(gw, "/pr/regex/one/two/three")
    assert e["url"] == "/pr/regex/one/two/three"  # no pair matches: unchanged
    # without a match the captures are empty: "$1+$2" is "+", and "$0" alone is "" (removed)
    assert (one(e, "x-cap"), one(e, "x-whole")) == ("+", None)


def test_method_and_host(gw):
    e = proxied(gw, "/pr/method")
    assert e["method"] == "POST"
    e = proxied(gw, "/pr/host")
    assert one(e, "host") == "backend.internal:8080"


def test_x_forwarded_proto_and_port_set_by_proxy_rewrite_replace_the_gateways(gw):
    """TLS ended in front of the gateway: proxy-rewrite tells the upstream so (APISIX honours
    it). The values are the plugin's, once each; a client's own are never forwarded."""
    spoof = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Port": "1", "X-Forwarded-Host": "evil"}
    seen = echoed_headers(request(gw.port, path="/pr/fwd", headers=spoof))
    assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-port"] == ["443"]
    assert seen["x-forwarded-host"] == ["127.0.0.1"] and seen["x-real-ip"] == ["127.0.0.1"]
    seen = echoed_headers(request(gw.port, path="/pr/method", headers=spoof))
    assert seen["x-forwarded-proto"] == ["http"] and seen["x-forwarded-port"] == [str(gw.port)]
    assert seen["x-forwarded-host"] == ["127.0.0.1"]


def test_headers_in_the_old_form_are_set(gw):
    e = proxied(gw, "/pr/hdr-old", {"X-Api-Version": "v0", "X-Drop": "please", "X-Keep": "k"})
    assert one(e, "x-api-version") == "v1"
    assert one(e, "x-client") == "127.0.0.1"
    assert one(e, "x-num") == "7"
    assert "x-drop" not in e["h"]  # an empty value removes
    assert one(e, "x-keep") == "k"


def test_headers_add_set_remove(gw):
    e = proxied(
        gw,
        "/pr/hdr-new?v=9",
        [("X-Add", "client"), ("X-Set", "old"), ("X-Remove", "r"), ("X-Missing", "m")],
    )
    assert e["h"]["x-add"] == ["client", "added"]
    assert e["h"]["x-set"] == ["s-9"]
    assert e["h"]["x-user"] == ["anon"]  # ${var ?? default}
    assert "x-remove" not in e["h"] and "x-missing" not in e["h"]
    assert e["h"]["x-text"] == ["日本".encode().decode("latin-1")]  # UTF-8 on the wire
    e = proxied(gw, "/pr/hdr-new", {"X-User": "jill"})
    assert e["h"]["x-user"] == ["jill"]


@pytest.mark.parametrize("x", ["a%0D%0AX-Evil:%201", "a%0Ab", "a%0Db", "a%00b"])
def test_a_header_value_with_cr_lf_or_nul_never_reaches_the_upstream(gw, upstream, x):
    upstream.requests.clear()
    r = request(gw.port, path=f"/pr/inject?x={x}")
    assert r.status == 400
    assert r.json() == {
        "error_msg": "400 Bad Request: the value for header X-From-Arg holds CR, LF or NUL"
    }
    assert upstream.requests == []
    e = proxied(gw, "/pr/inject?x=fine%20value")
    assert one(e, "x-from-arg") == "fine value"


def test_use_real_request_uri_unsafe_sends_the_target_as_written(gw):
    e = proxied(gw, "/pr/raw/%7Efoo/./x?q=1")
    assert e["url"] == "/pr/raw/%7Efoo/./x?q=1"


# --------------------------------------------------------------------------- response-rewrite


def test_status_body_and_headers_replace_the_upstreams(gw):
    r = request(gw.port, path="/rr/basic?z=1")
    assert (r.status, r.body) == (201, b"new body")
    assert (r.header("x-server"), r.header("x-uri")) == ("ando", "/rr/basic")
    assert r.header("content-length") is None  # re-framed: the body changed
    r = request(gw.port, path="/rr/b64")
    assert (r.status, r.body) == (200, b"hello")


def test_filters_on_a_chunked_upstream_response(gw):
    r = request(gw.port, path="/chunked?n=3&size=5")
    assert (r.status, r.body, r.complete) == (200, b"aaaaa[bbbbb]ccccc", True)
    r = request(gw.port, path="/rr/once?n=3&size=5")
    # once + case-insensitive: the first a; then global: each "cc" -> "<c>"
    assert r.body == b"Xaaaabbbbb<c><c>c"


def test_vars_choose_which_responses_are_rewritten(gw):
    r = request(gw.port, path="/status/404")
    assert (r.status, r.body, r.header("x-custom")) == (410, b"custom 404 page", "1")
    r = request(gw.port, path="/status/200")
    assert (r.status, r.body, r.header("x-custom")) == (200, b"status 200", None)
    # A route with body filters is re-framed (they may change any body): chunked, and never
    # with the upstream's Content-Length beside it (RFC 9112 6.1).
    assert r.header("content-length") is None and r.header("transfer-encoding") == "chunked"


def test_a_status_only_rewrite_keeps_the_upstreams_framing(gw):
    r = request(gw.port, path="/rr/status")
    assert r.status == 202
    assert r.header("content-length") == str(len(r.body))
    assert r.json()["path"] == "/rr/status"


def test_response_headers_add_set_remove_and_no_splitting(gw, upstream_secret):
    r = request(gw.port, path="/rr/headers?name=jo")
    assert r.status == 200
    assert [v for k, v in r.headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert r.header("x-hello") == "hi jo"
    assert r.header("content-type") == "text/x-custom"
    assert r.header("x-upstream-secret") is None
    r = request(gw.port, path="/rr/headers?name=a%0D%0AX-Evil:%201")
    assert r.status == 200
    assert r.header("x-hello") is None  # dropped, not split
    assert r.header("x-evil") is None


def test_a_gateway_made_refusal_is_rewritten(gw):
    r = request(gw.port, path="/rr/auth")
    assert r.status == 401
    assert r.json() == {"message": "please log in"}
    assert (r.header("content-type"), r.header("x-hint")) == ("application/json", "apikey")
    r = request(gw.port, path="/rr/auth", headers={"apikey": "jack-key"})
    assert r.status == 200 and r.json()["path"] == "/rr/auth"  # vars: only the 401


def test_a_global_rule_rewrites_the_404_of_an_unmatched_request(upstream, tmp_path):
    config = {
        "global_rules": [
            {
                "id": "404",
                "plugins": {
                    "response-rewrite": {
                        "vars": [["status", "==", 404]],
                        "body": "nothing here",
                        "headers": {"set": {"X-Global": "1"}},
                    }
                },
            }
        ],
        "routes": [{"uri": "/here", "upstream": {"nodes": {upstream.addr: 1}}}],
    }
    with GatewayProcess(config, tmp_path, access_log=False) as g:
        r = request(g.port, path="/nowhere")
        assert (r.status, r.body, r.header("x-global")) == (404, b"nothing here", "1")
        r = request(g.port, path="/here")
        assert r.status == 200 and r.json()["path"] == "/here" and r.header("x-global") is None


# --------------------------------------------------------------------------- request-id


def test_uuid_ids_are_unique_and_the_same_for_upstream_client_and_access_log(gw):
    ids = set()
    for _ in range(50):
        r = request(gw.port, path="/rid/uuid")
        rid = r.header("x-request-id")
        assert str(uuid.UUID(rid)) == rid and uuid.UUID(rid).version == 4
        assert one(seen(r), "x-request-id") == rid
        ids.add(rid)
    assert len(ids) == 50
    assert ids <= logged_ids(gw, "/rid/uuid", ids)


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("/rid/nanoid", r"[A-Za-z0-9_-]{21}"),
        ("/rid/range", r"[abcdef]{10}"),
        ("/rid/ksuid", r"[0-9A-Za-z]{27}"),
    ],
)
def test_algorithm_formats(gw, path, pattern):
    ids = {request(gw.port, path=path).header("x-request-id") for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(pattern, i) for i in ids), ids


def test_an_id_the_client_sent_is_kept(gw):
    r = request(gw.port, path="/rid/uuid", headers={"X-Request-Id": "mine-123"})
    assert r.header("x-request-id") == "mine-123"
    assert one(seen(r), "x-request-id") == "mine-123"
    r = request(gw.port, path="/rid/uuid", headers={"X-Request-Id": ""})
    assert uuid.UUID(r.header("x-request-id"))  # an empty one is replaced


def test_a_response_that_has_the_header_keeps_its_own(gw):
    r = request(gw.port, path="/rid/upstream-has")
    assert [v for k, v in r.headers if k.lower() == "content-type"] == ["application/json"]
    assert uuid.UUID(one(seen(r), "content-type"))  # the upstream got the id
    r = request(gw.port, path="/rid/plugin-has")
    assert [v for k, v in r.headers if k.lower() == "x-ratelimit-limit"] == ["100"]


def test_custom_header_not_in_the_response(gw):
    r = request(gw.port, path="/rid/quiet")
    assert r.header("x-trace") is None
    assert uuid.UUID(one(seen(r), "x-trace"))


def test_a_refused_request_still_gets_its_id(gw):
    r = request(gw.port, path="/rid/auth")
    rid = r.header("x-request-id")
    assert r.status == 401 and uuid.UUID(rid)
    assert rid in logged_ids(gw, "/rid/auth", {rid})


# --------------------------------------------------------------------------- redirect


def test_redirect_to_a_uri_template(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, path="/rd/uri/x?f=home")
    assert r.status == 301
    assert r.header("location") == "/new/rd/uri/x?from=home"
    assert b"301 Moved Permanently" in r.body and r.header("content-type") == "text/html"
    assert upstream.requests == []


def test_redirect_by_regex_or_go_on_to_the_upstream(gw):
    r = request(gw.port, path="/rd/regex/abc")
    assert (r.status, r.header("location")) == (302, "/moved/abc")
    r = request(gw.port, path="/rd/regex/zzz")
    assert r.status == 200 and r.json()["path"] == "/rd/regex/zzz"


def test_http_to_https_uses_the_tls_listeners_port(gw, tls_port):
    r = request(gw.port, path="/rd/https/x?y=1")
    assert (r.status, r.header("location")) == (301, f"https://127.0.0.1:{tls_port}/rd/https/x?y=1")
    r = request(gw.port, "POST", path="/rd/https/x", body=b"data")
    assert r.status == 308
    r = request(gw.port, path="/rd/https/x", headers={"X-Forwarded-Proto": "HTTPS"})
    assert r.status == 200  # already https, as the proxy in front says
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", tls_port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/rd/https/x")
        resp = conn.getresponse()
        assert resp.status == 200 and b'"/rd/https/x"' in resp.read()
    finally:
        conn.close()


def test_encode_uri_and_append_query_string(gw):
    r = request(gw.port, path="/rd/encode?a=1")
    assert (r.status, r.header("location")) == (302, "/new%20path/1?a=1")


def test_a_location_cannot_split_the_response(gw):
    r = request(gw.port, path="/rd/next?next=%0D%0ASet-Cookie:%20x=1")
    assert r.status == 302
    assert r.header("set-cookie") is None
    assert r.header("location") == "/go?to=%0D%0ASet-Cookie: x=1"


# --------------------------------------------------------------------------- validation


def document(plugins_yaml: str) -> str:
    return f"routes:\n  - uri: /x\n    {UP}\n    plugins:\n{plugins_yaml}"


def problems(plugins_yaml: str) -> list[str]:
    return config_problems(document(plugins_yaml))


def valid(plugins_yaml: str) -> None:
    snapshot(document(plugins_yaml))


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        (
            "      proxy-rewrite:\n        regex_uri: ['^/a', '/b', '^/c']\n",
            "t.yaml:6:20: routes[0].plugins.proxy-rewrite.regex_uri: The length of regex_uri should be an even number",
        ),
        (
            "      proxy-rewrite:\n        regex_uri: ['^/a', '/b', '^/(c', '/d']\n",
            "t.yaml:6:34: routes[0].plugins.proxy-rewrite.regex_uri[2]: invalid regex '^/(c': missing ), unterminated subpattern at position 2",
        ),
        (
            "      proxy-rewrite:\n        regex_uri: ['^/a', '/$x']\n",
            "t.yaml:6:28: routes[0].plugins.proxy-rewrite.regex_uri[1]: invalid capturing variable name in '/$x'",
        ),
        (
            '      proxy-rewrite:\n        headers: {X-A: "a\\r\\nb"}\n',
            't.yaml:6:24: routes[0].plugins.proxy-rewrite.headers.X-A: "a\\r\\nb" is not a valid header value (no CR, LF or NUL)',
        ),
        (
            "      proxy-rewrite:\n        headers: {'X A': b}\n",
            't.yaml:6:26: routes[0].plugins.proxy-rewrite.headers["X A"]: invalid field character in header',
        ),
        (
            "      proxy-rewrite:\n        headers: {set: {X-A: a}, X-B: b}\n",
            "t.yaml:6:39: routes[0].plugins.proxy-rewrite.headers.X-B: header names cannot be mixed with add, set and remove; move it under set",
        ),
        (
            "      proxy-rewrite:\n        method: FETCH\n",
            't.yaml:6:17: routes[0].plugins.proxy-rewrite.method: "FETCH" is not one of',
        ),
        (
            "      response-rewrite:\n        body: x\n        filters: [{regex: a, replace: b}]\n",
            "t.yaml:7:18: routes[0].plugins.response-rewrite.filters: fields 'body' and 'filters' cannot be used together; choose one",
        ),
        (
            "      response-rewrite:\n        body: '!!!'\n        body_base64: true\n",
            "t.yaml:6:15: routes[0].plugins.response-rewrite.body: invalid base64 content",
        ),
        (
            "      response-rewrite:\n        filters: [{regex: '(', replace: b}]\n",
            "routes[0].plugins.response-rewrite.filters[0].regex: invalid regex '(': missing ), unterminated subpattern at position 0",
        ),
        (
            "      response-rewrite:\n        vars: [['status', '===', 404]]\n",
            "routes[0].plugins.response-rewrite.vars[0][1]:",
        ),
        (
            "      response-rewrite:\n        status_code: 600\n",
            "routes[0].plugins.response-rewrite.status_code: must be <= 598, got 600",
        ),
        (
            "      request-id:\n        range_id: {length: 3}\n",
            "routes[0].plugins.request-id.range_id.length: must be >= 6, got 3",
        ),
        (
            "      request-id:\n        algorithm: snowflake\n",
            'routes[0].plugins.request-id.algorithm: "snowflake" is not one of',
        ),
        (
            "      redirect:\n        uri: /a\n        http_to_https: true\n",
            "routes[0].plugins.redirect: fields 'uri' and 'http_to_https' cannot be used together; choose one",
        ),
        (
            "      redirect: {ret_code: 301}\n",
            "routes[0].plugins.redirect: needs one of: 'uri', 'regex_uri', 'http_to_https'",
        ),
        (
            "      redirect:\n        http_to_https: true\n        append_query_string: true\n",
            "t.yaml:7:30: routes[0].plugins.redirect.append_query_string: only one of `http_to_https` and `append_query_string` can be configured.",
        ),
        (
            "      redirect:\n        regex_uri: ['^/(a', '/b']\n",
            "routes[0].plugins.redirect.regex_uri[0]: invalid regex",
        ),
    ],
)
def test_bad_configurations_are_refused_at_their_line(yaml, expected):
    found = problems(yaml)
    assert any(expected in p for p in found), found


def test_valid_apisix_configurations_pass():
    valid("      proxy-rewrite: {uri: /a, host: 'a.example:8080', method: PUT}\n")
    valid("      proxy-rewrite:\n        regex_uri: ['^/a/(.*)', '/$1', '^/b', '/c']\n")
    valid("      proxy-rewrite:\n        headers: {add: {X-A: a}, set: {X-B: 1}, remove: [X-C]}\n")
    valid(
        "      response-rewrite:\n        headers: {add: ['X-A: a'], set: {X-B: b}, remove: [X-C]}\n"
    )
    valid("      response-rewrite: {status_code: 200, vars: [['status', '==', 500]]}\n")
    valid("      request-id: {algorithm: range_id, range_id: {char_set: abcdef}}\n")
    valid("      redirect: {regex_uri: ['^/a/(.*)', '/b/$1'], ret_code: 307}\n")
