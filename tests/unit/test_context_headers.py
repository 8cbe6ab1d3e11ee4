"""The header helpers every plugin goes through: a name matches whole and in any case, the first
value wins, set replaces every value, and what is not named is left in its order."""

from __future__ import annotations

import pytest

from ando.plugins.context import RequestContext, ResponseHead, header_name_bytes
from ando.proxy.pipeline import _merge


class _Req:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers


def ctx_with(headers: list[tuple[bytes, bytes]]) -> RequestContext:
    return RequestContext(_Req(headers), lambda name: None, None)  # type: ignore[arg-type]


def test_header_is_the_first_value_of_a_whole_name_in_any_case() -> None:
    ctx = ctx_with([(b"X-Api-Key-Old", b"no"), (b"x-API-key", b"first"), (b"X-Api-Key", b"second")])
    assert ctx.header("X-Api-Key") == "first"
    assert ctx.header("x-api-key-old") == "no"
    assert ctx.header("Api-Key") is None  # a name's tail is not the name
    assert ctx.header("X-Api") is None  # nor is its head
    assert ctx_with([]).header("Host") is None


def test_set_header_replaces_every_value_and_keeps_the_others_in_order() -> None:
    headers = [(b"A", b"1"), (b"x-id", b"old"), (b"B", b"2"), (b"X-ID", b"older"), (b"C", b"3")]
    ctx = ctx_with(headers)
    ctx.set_header("X-Id", "new")
    assert headers == [(b"A", b"1"), (b"B", b"2"), (b"C", b"3"), (b"X-Id", b"new")]
    ctx.remove_header("b")
    ctx.remove_header("absent")
    assert headers == [(b"A", b"1"), (b"C", b"3"), (b"X-Id", b"new")]


def test_response_head_get_set_remove() -> None:
    head = ResponseHead(200, [(b"Content-Type", b"text/plain"), (b"X-Hello", b"a")])
    head.set("x-hello", "b")
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"x-hello", b"b")]
    assert head.get("X-HELLO") == "b" and head.get("Hello") is None
    head.add("X-Hello", "c")
    head.remove("X-Hello")
    assert head.headers == [(b"Content-Type", b"text/plain")]


@pytest.mark.parametrize("name", ["X-A\r\nSet-Cookie", "X-A\nB", "a b", "X:Y", "", "Ünï", "X\x7f"])
def test_a_name_no_header_can_have_is_refused_on_write_and_finds_nothing_on_read(name) -> None:
    """CR or LF in a name would end the header line early (response splitting, a header
    smuggled upstream): every way a plugin writes a header refuses it, reads find nothing."""
    head = ResponseHead(200, [(b"A", b"1")])
    ctx = ctx_with([(b"A", b"1")])
    for write in (
        lambda: head.set(name, "v"),
        lambda: head.add(name, "v"),
        lambda: ctx.set_header(name, "v"),
        lambda: ctx.add_header(name, "v"),
        lambda: ctx.set_response_header(name, "v"),
        lambda: ctx.add_response_header(name, "v"),
        lambda: ctx.default_response_header(name, "v"),
        lambda: header_name_bytes(name),
    ):
        with pytest.raises(ValueError, match="invalid header name"):
            write()
    assert head.headers == [(b"A", b"1")] and ctx.response_headers is None
    assert head.get(name) is None and ctx.header(name) is None and ctx.header_values(name) == []
    head.remove(name)
    ctx.remove_header(name)
    assert head.headers == [(b"A", b"1")] and ctx._req.headers == [(b"A", b"1")]
    # every visible ASCII character but ':' is allowed (APISIX's validate_header_field)
    assert header_name_bytes("!#$%&'*+-.^_`|~X_1") == b"!#$%&'*+-.^_`|~X_1"


def test_plugins_cannot_change_the_framing_headers() -> None:
    """Content-Length and Transfer-Encoding are the gateway's (it frames the body it sends):
    a plugin's set, add or remove of them is ignored; reading them still works."""
    upstream = [(b"Content-Length", b"13"), (b"X-A", b"1")]
    head = ResponseHead(200, list(upstream))
    head.set("Content-Length", "5")
    head.add("content-length", "7")
    head.set("Transfer-Encoding", "chunked")
    head.remove("CONTENT-LENGTH")
    assert head.headers == upstream and head.get("content-length") == "13"
    ctx = ctx_with([])
    ctx.set_response_header("Content-Length", "5")
    ctx.add_response_header("Transfer-Encoding", "chunked")
    ctx.default_response_header("Content-Length", "5")
    ctx.set_response_headers([("X-B", "2"), ("Content-Length", "5")])
    assert [e[0] for e in ctx.response_headers or ()] == [b"X-B"]


def test_forwarded_headers_a_plugin_sets_are_kept_apart_until_it_removes_them() -> None:
    """The exchange sends these instead of its own X-Forwarded-* values; a remove gives the
    gateway's own back. Other names are not recorded."""
    ctx = ctx_with([(b"X-Forwarded-Proto", b"gopher")])  # a client's, never recorded
    assert ctx.forwarded is None
    ctx.set_header("x-forwarded-proto", "https")
    ctx.add_header("X-Forwarded-Port", "443")
    ctx.set_header("X-Other", "1")
    assert ctx.forwarded == {b"x-forwarded-proto": b"https", b"x-forwarded-port": b"443"}
    ctx.remove_header("X-Forwarded-Proto")
    assert ctx.forwarded == {b"x-forwarded-port": b"443"}


def test_merged_response_headers_set_then_add_then_default() -> None:
    upstream = [(b"X-RateLimit-Limit", b"9"), (b"X-Request-Id", b"from-upstream"), (b"Vary", b"x")]
    extra = [
        (b"X-Request-Id", b"x-request-id", b"default", None),  # the response has one: skipped
        (b"X-RateLimit-Limit", b"x-ratelimit-limit", b"10", False),  # replaces the upstream's
        (b"X-Trace", b"x-trace", b"default", None),  # absent, but a later add brings it
        (b"Vary", b"vary", b"Origin", True),  # added beside the upstream's
        (b"X-Trace", b"x-trace", b"added", True),
        (b"X-New", b"x-new", b"default", None),
    ]
    assert _merge(upstream, extra) == [
        (b"X-Request-Id", b"from-upstream"),
        (b"Vary", b"x"),
        (b"X-RateLimit-Limit", b"10"),
        (b"Vary", b"Origin"),
        (b"X-Trace", b"added"),
        (b"X-New", b"default"),
    ]
