"""APISIX's request variables as nginx computes them: `http_NAME` of a header sent more than
once joins the values (", ", or "; " for Cookie, as nginx does since 1.23), cookies are read from
every Cookie header, and no value keeps the whitespace after it."""

from __future__ import annotations

from ando.proxy.variables import Vars


def vars_with(headers: list[tuple[bytes, bytes]]) -> Vars:
    v = Vars()
    v.headers = headers
    return v


def test_a_header_sent_twice_is_both_values_joined() -> None:
    v = vars_with([(b"X-B", b"1"), (b"Accept", b"*/*"), (b"x-b", b"2 \t")])
    assert v.get("http_x_b") == "1, 2"
    assert v.get("http_accept") == "*/*"
    assert v.get("http_x_missing") is None


def test_cookies_come_from_every_cookie_header() -> None:
    v = vars_with([(b"Cookie", b"a=1; team=red"), (b"cookie", b"b=2"), (b"Cookie", b"team=blue")])
    assert v.get("http_cookie") == "a=1; team=red; b=2; team=blue"
    assert (v.get("cookie_a"), v.get("cookie_b")) == ("1", "2")
    assert v.get("cookie_team") == "red"  # the first one, as nginx's $cookie_team
    assert vars_with([]).get("cookie_a") is None


def test_the_whitespace_after_a_value_is_not_part_of_it() -> None:
    assert vars_with([(b"X-One", b"v  ")]).get("http_x_one") == "v"


def test_nginx_variables_that_are_a_header_or_the_path_by_another_name() -> None:
    """$content_type, $content_length, $is_args, $document_uri and $hostname, which route `vars`
    written for APISIX use (they read as absent before)."""
    import socket

    v = vars_with([(b"Content-Type", b"application/json "), (b"Content-Length", b"12")])
    v.path, v.query = "/a/b", b"x=1"
    assert v.get("content_type") == "application/json"
    assert v.get("content_length") == "12"
    assert v.get("is_args") == "?"
    assert v.get("document_uri") == "/a/b"
    assert v.get("hostname") == socket.gethostname()
    bare = vars_with([])
    bare.path, bare.query = "/", b""
    assert bare.get("content_type") is None and bare.get("content_length") is None
    assert bare.get("is_args") == ""
