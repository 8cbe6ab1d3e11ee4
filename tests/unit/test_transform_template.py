"""The transform plugins' shared pieces, without sockets: `$var` templates (APISIX's
resolve_var and redirect's parser), ngx.re.sub templates, PCRE options, percent-encoding, the
request-id algorithms, and the four schema files (dialect, and both validators agreeing)."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator

from ando.plugins.transform.proxy_rewrite import _escape_var, check_headers
from ando.plugins.transform.redirect import _page
from ando.plugins.transform.request_id import _BASE62, _KSUID_EPOCH, _ksuid, _nanoid, _range_id
from ando.plugins.transform.template import (
    SubTemplate,
    compile_regex,
    encode_location,
    encode_path,
    encode_query,
    encode_value,
    header_wire,
    substitute,
    unsafe_header_value,
)
from ando.plugins.vartemplate import RedirectTemplate, VarTemplate, lua_tostring, resolve_var

VARS = {
    "arg_id": "42",
    "uri": "/a%20b",
    "remote_addr": "10.0.0.1",
    "arg_q": "x?y z%",
    "host": "example.com",
    "remote_port": "5555",
    "a.b": "dotted",
    "empty": "",
}.get


# --- $var templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("/v2/$arg_id", "/v2/42"),
        ("/v2/${arg_id}x", "/v2/42x"),
        ("/v2/${ arg_id }", "/v2/42"),
        ("/$missing/", "//"),
        ("${missing ?? fallback}", "fallback"),
        ("${arg_id ?? fallback}", "42"),
        ("$host.json", ""),  # APISIX: names may hold dots, so this is one (missing) variable
        ("${host}.json", "example.com.json"),
        ("\\$arg_id", "\\$arg_id"),  # escaped: not a reference, the backslash stays
        ("no refs", "no refs"),
        ("$", "$"),
        ("$1", ""),  # without captures, a variable named "1"
        ("$remote_addr:$remote_port", "10.0.0.1:5555"),
        ("${ missing ?? fallback }", "fallback"),
        ("${missing ?? a ?? b}", "a"),  # resolve_var keeps the second `??` segment
        ("$a.b", "dotted"),  # `.` belongs to the name, as upstream's [\w.]+
        ("$$arg_id", "$42"),
        ("${}", "${}"),
        ("cost: $", "cost: $"),
        ("$héllo", "éllo"),  # ngx.re without `u`: names are ASCII
    ],
)
def test_var_template(text, out):
    assert VarTemplate(text).render(VARS) == out
    assert resolve_var(text, VARS) == out


@pytest.mark.parametrize(
    ("text", "out", "resolved"),
    [
        ("no refs", "no refs", 0),
        ("\\$arg_id", "\\$arg_id", 0),
        ("$arg_id-$missing", "42-", 1),
        ("$empty|$missing", "|", 1),  # an empty value counts, as resolve_var's n_resolved
        ("${missing ?? d}", "d", 1),  # so does a default
        ("$missing/$other", "/", 0),
    ],
)
def test_resolve_counts_what_resolved(text, out, resolved):
    assert VarTemplate(text).resolve(VARS) == (out, resolved)


def test_var_template_with_captures():
    t = VarTemplate("$1-${2}-$remote_addr-$0-$9", captures=True)
    assert t.render(VARS, None, ("/x/a/b", "a", "b")) == "a-b-10.0.0.1-/x/a/b-"
    assert t.render(VARS, None, None) == "--10.0.0.1--"  # no match: empty captures


def test_static_templates_cost_nothing():
    t = VarTemplate("plain")
    assert t.static == "plain" and t.render(lambda n: pytest.fail("looked up")) == "plain"


def test_escaping_of_values_in_a_path():
    t = VarTemplate("/p/$arg_q$uri")
    assert t.render(VARS, _escape_var) == "/p/x%3Fy%20z%25/a%20b"  # uri is already encoded


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("https://x.example$uri", "https://x.example/a%20b"),
        ("/${host}/$arg_id", "/example.com/42"),
        ("/\\$host", "/\\$host"),  # kept as written
        ("/a\\b", "/ab"),  # a lone backslash matches nothing in redirect.lua: dropped
        ("/cost$", "/cost$"),
        ("/$host.json", "/example.com.json"),  # redirect's names hold no dots
        ("/$nope/x", "//x"),
    ],
)
def test_redirect_template(text, out):
    assert RedirectTemplate(text).render(VARS) == out


# --- ngx.re templates and options ---------------------------------------------------------------


def test_sub_template_expands_captures():
    m = compile_regex("^/iresty/(.*)/(.*)").pattern.search("/iresty/a/b")
    assert SubTemplate("/$1-${2}$$x$0").expand(m) == "/a-b$x/iresty/a/b"
    assert SubTemplate("/$7").expand(m) == "/"  # beyond the groups: empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$x", "invalid capturing variable name"),
        ("${a}", "invalid capturing variable name"),
        ("${1", "the closing bracket"),
        ("a$", "invalid capturing variable name"),
    ],
)
def test_bad_sub_templates(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SubTemplate(text)


def test_regex_options_and_pcre_named_groups():
    assert compile_regex("(?<name>a)b").pattern.match("ab").group("name") == "a"
    assert compile_regex("A", "ijo").pattern.search("xa")
    assert not compile_regex("A", "jo").pattern.search("xa")
    assert not compile_regex("\\w", "jo").pattern.search("é")  # PCRE without UCP: ASCII
    with pytest.raises(ValueError, match="unknown regex option 'q'"):
        compile_regex("a", "jq")
    with pytest.raises(ValueError, match="invalid regex"):
        compile_regex("(")


def test_substitute_once_global_and_anchored_on_bytes_and_text():
    once = compile_regex("o", binary=True)
    t = SubTemplate("0")
    assert substitute(once, b"foo boo", t, all=True) == b"f00 b00"
    assert substitute(once, b"foo boo", t, all=False) == b"f0o boo"
    anchored = compile_regex("o", "ajo", binary=True)
    assert substitute(anchored, b"oox", t, all=True) == b"00x"
    assert substitute(anchored, b"xoo", t, all=True) == b"xoo"
    utf8 = compile_regex("é", "ju", binary=True)
    assert utf8.text
    assert substitute(utf8, "café", SubTemplate("e"), all=True) == "cafe"


# --- encoding -----------------------------------------------------------------------------------


def test_encoders():
    assert encode_path("/a b/%zz/%41/é?#") == "/a%20b/%25zz/%41/%C3%A9%3F%23"
    assert encode_value("a/b?c%d#e é") == "a/b%3Fc%25d%23e%20%C3%A9"
    assert encode_query("a=1&b=c d#") == "a=1&b=c%20d%23"
    assert encode_location("/x\r\nSet-Cookie: a é") == "/x%0D%0ASet-Cookie: a %C3%A9"
    assert encode_path("/plain") == "/plain"


def test_header_values():
    assert [unsafe_header_value(v) for v in ("a\rb", "a\nb", "a\x00b", "a\tb")] == [
        True,
        True,
        True,
        False,
    ]
    assert header_wire("日本") == "日本".encode().decode("latin-1")
    assert header_wire("ascii") == "ascii"
    assert [lua_tostring(v) for v in (1, 1.0, 1.5, True, "x")] == ["1", "1", "1.5", "true", "x"]


def test_header_checks():
    assert check_headers({}) == [((), "must have at least 1 field(s)")]
    assert check_headers({"X-A": "é"}) == [(("X-A",), "invalid value character in header")]
    assert check_headers({"X-A": "é"}, strict_values=False) == []
    assert check_headers({"add": {"X-A": "a"}, "X-B": "b"}) == [
        (("X-B",), "header names cannot be mixed with add, set and remove; move it under set")
    ]
    assert check_headers({"add": "plain value"}) == []  # a header called "add"
    assert check_headers({"set": {"X A": "1"}}) == [
        (("set", "X A"), "invalid field character in header")
    ]


# --- request-id algorithms and the redirect page --------------------------------------------------


def _base62(text: str) -> int:
    return sum(_BASE62.index(c) * 62**i for i, c in enumerate(reversed(text)))


def test_id_algorithms():
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}", _nanoid())
    assert re.fullmatch(r"[0-9A-Za-z]{27}", _ksuid())
    make = _range_id("abcdef", 10)
    assert re.fullmatch(r"[a-f]{10}", make())
    assert len({_nanoid() for _ in range(1000)}) == 1000
    # Time first: the top 32 of the 160 bits are the creation second (KSUID's epoch). A prefix of
    # the text is not: base62 digits straddle the timestamp and the random payload.
    first, second = _ksuid(), _ksuid()
    now = int(time.time()) - _KSUID_EPOCH
    stamps = [_base62(k) >> 128 for k in (first, second)]
    assert now - 2 <= stamps[0] <= stamps[1] <= now + 1


def test_nginx_pages():
    assert _page(302) == (
        b"<html>\r\n<head><title>302 Moved Temporarily</title></head>\r\n<body>\r\n"
        b"<center><h1>302 Moved Temporarily</h1></center>\r\n"
        b"<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n"
    )
    assert b"308 Permanent Redirect" in _page(308)
    assert _page(200) == b"" and _page(300) == b""


# --- the schema files ---------------------------------------------------------------------------

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "plugins"
NAMES = ["proxy-rewrite", "response-rewrite", "request-id", "redirect"]


def _walk(schema, where, out, in_properties=False):
    if not isinstance(schema, dict):
        return
    out.append((where, schema, in_properties))
    for name, sub in schema.get("properties", {}).items():
        _walk(sub, f"{where}/properties/{name}", out, True)
    for kw in ("anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(kw, [])):
            _walk(sub, f"{where}/{kw}/{i}", out)
    for kw in ("additionalProperties", "items"):
        if isinstance(schema.get(kw), dict):
            _walk(schema[kw], f"{where}/{kw}", out)


@pytest.mark.parametrize("name", NAMES)
def test_schema_file_dialect(name):
    doc = json.loads((SCHEMAS / f"{name}.json").read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["title"] == name and doc["description"] and "$id" not in doc
    nodes: list = []
    _walk(doc, name, nodes)
    for where, schema, in_properties in nodes:
        if in_properties:
            assert schema.get("description"), f"{where}: no description"
        if "pattern" in schema:
            p = schema["pattern"]
            assert p.startswith("^(?!.*\\n)") and p.endswith("$"), where
        if schema.get("type") == "object" and "properties" in schema:
            assert "additionalProperties" in schema, where


CASES = {
    "proxy-rewrite": [
        ({"uri": "/a/$arg_x"}, True),
        ({"uri": "a"}, False),
        ({"uri": "/a\n"}, False),
        ({"host": "a.example:8080"}, True),
        ({"host": "a.example\n"}, False),
        ({"host": "a b"}, False),
        ({"method": "GET"}, True),
        ({"method": "get"}, False),
        ({"regex_uri": ["^/a"]}, False),
        ({"headers": {"X-A": "a", "X-B": 1}}, True),
        ({"headers": {"X-A": "a\r\nb"}}, False),
        ({"headers": {"X-A": "a\n"}}, False),
        ({"headers": {"X-A": "a\x00"}}, False),
        ({"headers": {"add": {"X-A": "1"}, "set": {"X-B": "2"}, "remove": ["X-C"]}}, True),
        ({"headers": {"set": {"X-B": "\n"}}}, False),
        ({"headers": {"remove": ["X:C"]}}, False),
        ({"headers": {"X-A": ["x"]}}, False),
        ({"scheme": "https"}, False),
        ({}, True),
    ],
    "response-rewrite": [
        ({"status_code": 200, "body": "x"}, True),
        ({"status_code": 199}, False),
        ({"status_code": 599}, False),
        ({"headers": {"add": ["X-A: 1"], "set": {"X-B": "2"}, "remove": ["X-C"]}}, True),
        ({"headers": {"add": ["X-A: http://x"]}}, False),  # APISIX: the value holds no ':'
        ({"headers": {"add": ["X-A: a\r\nX-B: b"]}}, False),
        ({"headers": {"add": ["X-A: a/"]}}, False),
        ({"filters": [{"regex": "a", "replace": "b"}]}, True),
        ({"filters": [{"regex": "", "replace": "b"}]}, False),
        ({"filters": [{"regex": "a"}]}, False),
        ({"filters": [{"regex": "a", "replace": "b", "scope": "all"}]}, False),
        ({"filters": []}, False),
        ({"vars": [["status", "==", 200]]}, True),
    ],
    "request-id": [
        ({}, True),
        ({"algorithm": "ksuid"}, True),
        ({"algorithm": "snowflake"}, False),
        ({"range_id": {"length": 6, "char_set": "abcdef"}}, True),
        ({"range_id": {"length": 5}}, False),
        ({"range_id": {"char_set": "abc"}}, False),
        ({"header_name": "X-Id: x"}, False),
        ({"header_name": "X-Id\n"}, False),
    ],
    "redirect": [
        ({"uri": "/a"}, True),
        ({"uri": "/"}, False),  # minLength 2
        ({"regex_uri": ["^/a", "/b"]}, True),
        ({"regex_uri": ["^/a", "/b", "^/c", "/d"]}, False),
        ({"http_to_https": True}, True),
        ({"http_to_https": True, "uri": "/a"}, False),
        ({"http_to_https": False, "uri": "/a"}, False),  # oneOf: present counts
        ({"ret_code": 301}, False),
        ({"uri": "/a", "ret_code": 199}, False),
        ({"uri": "/a\r\nX: y"}, False),
    ],
}


@pytest.mark.parametrize(
    ("name", "instance", "ok"),
    [(n, i, ok) for n, cases in CASES.items() for i, ok in cases],
)
def test_both_validators_agree_and_follow_apisix(name, instance, ok):
    doc = json.loads((SCHEMAS / f"{name}.json").read_text())
    slow = Draft202012Validator(doc).is_valid(instance)
    try:
        fastjsonschema.compile(doc)(copy.deepcopy(instance))
        fast = True
    except fastjsonschema.JsonSchemaValueException:
        fast = False
    assert slow == fast, f"jsonschema={slow} fastjsonschema={fast}"
    assert slow == ok
