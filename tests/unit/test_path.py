"""ando.http.path: the one normalization every route, plugin and upstream request sees."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ando.http.path import BadTarget, split_target

# (target, expected path, expected query)
GOOD: list[tuple[bytes, str, bytes]] = [
    # plain origin-form, the fast path
    (b"/", "/", b""),
    (b"/api/v1/users/123?x=1", "/api/v1/users/123", b"x=1"),
    (b"/static/app.min.js", "/static/app.min.js", b""),
    (b"/a/b/", "/a/b/", b""),
    (b"/a?", "/a", b""),
    (b"/a+b/c:d@e!$&'()*,=", "/a+b/c:d@e!$&'()*,=", b""),
    # every spelling of /public/.. that does resolve lands on /admin, so /admin's auth applies
    (b"/public/../admin", "/admin", b""),
    (b"/public/%2e%2e/admin", "/admin", b""),
    (b"/public/%2E%2e/admin", "/admin", b""),
    (b"/public/.%2e/admin", "/admin", b""),
    (b"/public/%2e./admin", "/admin", b""),
    (b"//admin", "/admin", b""),
    (b"///admin//", "/admin/", b""),
    (b"/%61dmin", "/admin", b""),
    (b"/%61%64%6D%69%6e", "/admin", b""),
    (b"/public/./../admin", "/admin", b""),
    (b"/public/%2e/../admin", "/admin", b""),
    # empty segments are merged before ".." walks back, as nginx does
    (b"/a//../b", "/b", b""),
    # RFC 3986 5.4 examples, resolved against base http://a/b/c/d;p?q and written as the absolute
    # paths a client would send (5.4.1 normal, 5.4.2 abnormal that stay under the root)
    (b"/b/c/g", "/b/c/g", b""),
    (b"/b/c/./g", "/b/c/g", b""),
    (b"/b/c/g/", "/b/c/g/", b""),
    (b"/g", "/g", b""),
    (b"/b/c/g?y", "/b/c/g", b"y"),
    (b"/b/c/d;p?y", "/b/c/d;p", b"y"),
    (b"/b/c/g;x", "/b/c/g;x", b""),
    (b"/b/c/g;x?y", "/b/c/g;x", b"y"),
    (b"/b/c/.", "/b/c/", b""),
    (b"/b/c/./", "/b/c/", b""),
    (b"/b/c/..", "/b/", b""),
    (b"/b/c/../", "/b/", b""),
    (b"/b/c/../g", "/b/g", b""),
    (b"/b/c/../..", "/", b""),
    (b"/b/c/../../", "/", b""),
    (b"/b/c/../../g", "/g", b""),
    (b"/b/c/g.", "/b/c/g.", b""),
    (b"/b/c/.g", "/b/c/.g", b""),
    (b"/b/c/g..", "/b/c/g..", b""),
    (b"/b/c/..g", "/b/c/..g", b""),
    (b"/b/c/./../g", "/b/g", b""),
    (b"/b/c/./g/.", "/b/c/g/", b""),
    (b"/b/c/g/./h", "/b/c/g/h", b""),
    (b"/b/c/g/../h", "/b/c/h", b""),
    (b"/b/c/g;x=1/./y", "/b/c/g;x=1/y", b""),
    (b"/b/c/g;x=1/../y", "/b/c/y", b""),
    # escapes: unreserved decoded, the rest kept with uppercase hex
    (b"/a%2db%5fc%7ed%2E", "/a-b_c~d.", b""),
    (b"/caf%c3%a9", "/caf%C3%A9", b""),
    (b"/a%20b%3f%23%25", "/a%20b%3F%23%25", b""),
    (b"/a%3b/b", "/a%3B/b", b""),
    (b"/%252e%252e/x", "/%252e%252e/x", b""),
    (b"/.well-known/acme", "/.well-known/acme", b""),
    # the query is returned raw, untouched
    (b"/a?x=%2F&y=..", "/a", b"x=%2F&y=.."),
    (b"/a/../b?%2e%2e/../..;//x", "/b", b"%2e%2e/../..;//x"),
    (b"/a?q=C:\\dir", "/a", b"q=C:\\dir"),
    (b"/a?x=1?y=2", "/a", b"x=1?y=2"),
    # absolute-form: the path of it; the caller compares the host
    (b"http://example.com/a/b?x=1", "/a/b", b"x=1"),
    (b"https://example.com:8443/a/./b", "/a/b", b""),
    (b"HTTP://example.com", "/", b""),
    (b"http://example.com?x", "/", b"x"),
    (b"http://[::1]:80//a/%2e%2e/b", "/b", b""),
    # asterisk-form (the caller checks that the method is OPTIONS)
    (b"*", "*", b""),
]

# (target, substring of the reason)
BAD: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"a/b", "origin-form"),
    (b"example.com:443", "origin-form"),
    (b"ftp://example.com/a", "origin-form"),
    (b"http:///a", "empty host"),
    (b"http://user:pw@example.com/a", "userinfo"),
    (b"*?x", "origin-form"),
    (b"/a#frag", "forbidden byte"),
    (b"/a?x#frag", "forbidden byte in query"),
    # attack spellings of /public/.. that must not resolve at all
    (b"/public/..;/admin", "dot segment"),
    (b"/public/..;x=1/admin", "dot segment"),
    (b"/public/%2e%2e;/admin", "dot segment"),
    (b"/public/.;/admin", "dot segment"),
    (b"/public/..%2fadmin", "encoded slash"),
    (b"/public%2f..%2fadmin", "encoded slash"),
    (b"/public%2F..%2Fadmin", "encoded slash"),
    (b"/public/..\\admin", "forbidden byte"),
    (b"/public/..%5cadmin", "encoded backslash"),
    (b"/admin%00", "encoded NUL"),
    (b"/admin%00.json", "encoded NUL"),
    (b"/admin%0a", "encoded control"),
    (b"/admin%1F", "encoded control"),
    (b"/admin%7f", "encoded control"),
    # climbing above the root: 400, as nginx does
    (b"/..", "above the root"),
    (b"/../admin", "above the root"),
    (b"/%2e%2e/admin", "above the root"),
    (b"/a/../../admin", "above the root"),
    (b"//../admin", "above the root"),
    (b"http://example.com/../admin", "above the root"),
    # malformed escapes
    (b"/a%", "malformed"),
    (b"/a%4", "malformed"),
    (b"/a%zz", "malformed"),
    (b"/a%4g/b", "malformed"),
    (b"/a%%41", "malformed"),
    # raw non-ASCII and control bytes, in the path or the query
    (b"/caf\xc3\xa9", "forbidden byte"),
    (b"/a?q=\xff", "forbidden byte in query"),
    (b"/a b", "forbidden byte"),
    (b"/a\tb", "forbidden byte"),
    (b"/a\x00", "forbidden byte"),
    (b"/a\x7f", "forbidden byte"),
    (b"/a\r\nX: y", "forbidden byte"),
    (b"/a?x=\x01", "forbidden byte in query"),
    (b"/a?x= y", "forbidden byte in query"),
    (b"http://exa\\mple.com/a", "forbidden byte"),
]


@pytest.mark.parametrize(("target", "path", "query"), GOOD)
def test_normalizes(target: bytes, path: str, query: bytes) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize(("target", "path", "query"), GOOD)
def test_output_is_a_fixed_point(target: bytes, path: str, query: bytes) -> None:
    assert split_target(path.encode("ascii"))[0] == path


@pytest.mark.parametrize(("target", "reason"), BAD)
def test_refuses(target: bytes, reason: str) -> None:
    with pytest.raises(BadTarget) as info:
        split_target(target)
    assert info.value.status == 400
    assert reason in info.value.reason


def test_bad_target_carries_status_and_reason() -> None:
    err = BadTarget(400, "nope")
    assert isinstance(err, Exception)
    assert (err.status, err.reason, str(err)) == (400, "nope", "400 nope")


def test_hex_case_does_not_matter() -> None:
    assert split_target(b"/a%c3%a9")[0] == split_target(b"/a%C3%A9")[0]


# Pieces that exercise every branch far more often than uniform random bytes would.
_PIECES = st.sampled_from(
    [
        *rb"/ // . .. a Z9 ~ -_ %2e %2E %2f %5c %00 %41 %c3 % %4 %zz %25 %3B ; ;x \ ? #".split(),
        *(b" ", b"\x00", b"\x7f", b"\xff"),
    ]
)
_TARGETS = st.one_of(
    st.binary(max_size=40).map(lambda b: b"/" + b),
    st.lists(_PIECES, max_size=16).map(lambda p: b"/" + b"".join(p)),
)


@settings(max_examples=2000, deadline=None)
@given(_TARGETS)
@example(b"/a/..")
@example(b"/%2e%2e%2f")
@example(b"/.%2e/")
def test_property_refused_or_normal(target: bytes) -> None:
    try:
        path, _query = split_target(target)
    except BadTarget as err:
        assert err.status == 400
        return
    assert path.startswith("/")
    assert "//" not in path
    assert "/./" not in path and not path.endswith("/.")
    assert "/../" not in path and not path.endswith("/..")
    upper = path.upper()
    assert "%2F" not in upper and "%5C" not in upper and "\\" not in path
    assert split_target(path.encode("ascii")) == (path, b"")
