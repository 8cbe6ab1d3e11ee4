"""APISIX-compatibility of the router, driven directly (no sockets).

Each test names what APISIX 3.x (radixtree_host_uri over lua-resty-radixtree) does with the
same route, and fails on the router as it was before the fix it covers.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.source import snapshot_from_text
from ando.http.path import split_target
from ando.router.router import RouteEntry, Router


def entry(
    route_id: str,
    *uris: str,
    hosts: Iterable[str] | None = None,
    priority: int = 0,
    order: int = 0,
) -> RouteEntry:
    return RouteEntry(
        payload=route_id,
        route_id=route_id,
        uris=uris,
        hosts=tuple(hosts) if hosts is not None else None,
        priority=priority,
        order=order,
    )


def routed(router: Router, target: bytes, host: str = "example.com") -> str | None:
    """The route a request for ``target`` lands on, the path normalized as the gateway does."""
    path, _ = split_target(target)
    found = router.match("GET", host, path, "127.0.0.1", {}.get)
    return None if found is None else found.entry.route_id


# --- route uris are compared with the decoded request path, as nginx's $uri ---------------------
#
# APISIX matches a route's uri against ngx.var.uri, which nginx has percent-decoded: a route
# written "/café" or "/a b" serves "/caf%C3%A9" and "/a%20b". Ando's path keeps escapes of
# anything outside the unreserved set (ando/http/path.py), so the route's uri is put into that
# same form once, when the router is built.


def test_non_ascii_uri_matches_its_percent_encoded_request() -> None:
    router = Router([entry("cafe", "/café"), entry("zh", "/api/用户/*", order=1)])
    assert routed(router, b"/caf%C3%A9") == "cafe"
    assert routed(router, b"/caf%c3%a9") == "cafe"
    assert routed(router, b"/api/%E7%94%A8%E6%88%B7/1") == "zh"
    assert routed(router, b"/cafe") is None


def test_space_and_question_mark_in_uri_match_their_escapes() -> None:
    router = Router([entry("space", "/a b"), entry("qm", "/what?/*", order=1)])
    assert routed(router, b"/a%20b") == "space"
    assert routed(router, b"/what%3F/x") == "qm"
    # a real query string is not part of the path: "/what?/x" is the path "/what"
    assert routed(router, b"/what?/x") is None


def test_bare_percent_in_uri_is_a_literal_percent() -> None:
    router = Router([entry("pct", "/100%")])
    assert routed(router, b"/100%25") == "pct"


def test_escapes_in_uri_follow_the_request_normalization() -> None:
    # Lower-case hex and escaped unreserved characters are spelled as the normalized path spells
    # them, so the route is not dead; an escaped "*" or ":" stays literal text, not a pattern.
    router = Router(
        [
            entry("lower", "/caf%c3%a9"),
            entry("unres", "/%7Euser", order=1),
            entry("star", "/a%2A", order=2),
            entry("colon", "/b/%3aid", order=3),
        ]
    )
    assert routed(router, b"/caf%C3%A9") == "lower"
    assert routed(router, b"/~user") == "unres"
    assert routed(router, b"/a%2A") == "star"
    assert routed(router, b"/a-anything") is None
    assert routed(router, b"/b/%3Aid") == "colon"
    assert routed(router, b"/b/42") is None


def test_matched_uri_is_the_pattern_as_written() -> None:
    # The matched uri labels metrics (APISIX's matched _path is the route's own text).
    router = Router([entry("cafe", "/café/*")])
    found = router.match("GET", "example.com", "/caf%C3%A9/x", "127.0.0.1", {}.get)
    assert found is not None and found.uri == "/café/*"


def test_pattern_length_ranks_by_bytes_as_radixtree() -> None:
    # Same tree key, same priority: radixtree tries the longer path_org first, measured in bytes
    # (Lua's #). "/k/*aa" and "/k/*é" are both 6 bytes, so config order decides.
    first_e = Router([entry("e", "/k/*é"), entry("aa", "/k/*aa", order=1)])
    first_aa = Router([entry("aa", "/k/*aa"), entry("e", "/k/*é", order=1)])
    assert routed(first_e, b"/k/x") == "e"
    assert routed(first_aa, b"/k/x") == "aa"


# --- filter_func: APISIX runs a Lua function string as one more route predicate ---------------
#
# apisix/http/router/radixtree_host_uri.lua loads route.filter_func with loadstring and
# lua-resty-radixtree calls it after vars; a route whose function returns false does not match.
# Ando runs no Lua in the router, so a config with one must be refused, and say why.


def test_filter_func_is_refused_with_a_reason() -> None:
    text = (
        "routes:\n"
        "  - id: r\n"
        "    uri: /a\n"
        "    filter_func: \"function(vars) return vars.arg_x == 'y' end\"\n"
        "    upstream: {nodes: {'127.0.0.1:1980': 1}}\n"
    )
    with pytest.raises(ConfigError) as e:
        snapshot_from_text(text, "t.yaml", environ={})
    messages = [d.format() for d in e.value.diagnostics]
    assert len(messages) == 1, messages
    assert messages[0].startswith("t.yaml:4:5: routes[0].filter_func: ")
    assert "Lua" in messages[0] and "vars" in messages[0]
    assert "unknown field" not in messages[0]


# --- a ":" inside a segment is text, not the start of a parameter ------------------------------
#
# APISIX's default router (radixtree_host_uri; apisix/utils/router.lua builds every tree with
# no_param_match = true) keeps "/v1/things:batchGet" an exact uri. Ando adds ":name" segments
# (radixtree_uri_with_parameter's syntax), whose tree key stops at the first ":"; a colon that
# does not start a segment must not cut the uri down to a prefix "/v1/things".


def test_colon_inside_a_segment_keeps_the_uri_exact() -> None:
    router = Router([entry("get", "/v1/things:batchGet"), entry("t", "/time/12:30", order=1)])
    assert routed(router, b"/v1/things:batchGet") == "get"
    assert routed(router, b"/v1/things:batchDelete") is None
    assert routed(router, b"/v1/things") is None
    assert routed(router, b"/v1/thingsXYZ/secret") is None
    assert routed(router, b"/time/12:30") == "t"
    assert routed(router, b"/time/12:45") is None


def test_colon_inside_a_segment_of_a_prefix_uri_is_text() -> None:
    # "/v1/x:list/*" is the prefix "/v1/x:list/", longer than the prefix "/v1/x", so it is tried
    # first whatever the priorities (a longer tree key always wins); cut at the colon, both were
    # under "/v1/x" and the higher priority took the request.
    router = Router([entry("x", "/v1/x*", priority=10), entry("list", "/v1/x:list/*", order=1)])
    assert routed(router, b"/v1/x:list/p") == "list"
    assert routed(router, b"/v1/x:other/p") == "x"
