"""The socket-free parts of fault-injection, mocking and request-validation: variable
interpolation, value generation from a schema, APISIX's validation wording, form decoding, and
which requests leave the synchronous fast path."""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import Any

import jsonschema
import pytest

from ando.plugins.base import Response
from ando.plugins.transform.fault_injection import FaultInjection, header_value
from ando.plugins.transform.mocking import Mocking, generate, media_type, to_xml
from ando.plugins.transform.request_validation import (
    RequestValidation,
    SchemaValidator,
    decode_form,
    decode_json,
    lua_q,
)

VARS = {"remote_addr": "10.0.0.1", "arg_a": "x", "http_x_id": "42", "a.b": "dotted"}


class Ctx:
    """What these phases read of a request."""

    def __init__(self, **vars: str) -> None:
        self.var = {**VARS, **vars}.get


# --- response header values ----------------------------------------------------------------


def test_header_values_cannot_carry_control_characters() -> None:
    assert header_value("a\r\nSet-Cookie: x") == "a%0D%0ASet-Cookie: x"
    assert header_value("tab\tok") == "tab\tok"
    assert header_value("€").encode("latin-1") == "€".encode()


# --- fault-injection: the fast path -------------------------------------------------------------


def fault(**conf: Any) -> FaultInjection:
    return FaultInjection(conf, None)  # type: ignore[arg-type]


def test_requests_that_are_not_delayed_stay_synchronous() -> None:
    plugin = fault(delay={"duration": 0.01, "vars": [[["arg_slow", "==", "1"]]]})
    assert plugin.rewrite(Ctx()) is None  # type: ignore[arg-type]
    pending = plugin.rewrite(Ctx(arg_slow="1"))  # type: ignore[arg-type]
    assert inspect.isawaitable(pending)
    assert asyncio.run(pending) is None
    plugin = fault(abort={"http_status": 403, "body": "$arg_a"})
    resp = plugin.rewrite(Ctx())  # type: ignore[arg-type]
    assert isinstance(resp, Response) and (resp.status, resp.body) == (403, b"x")
    assert fault(delay={"duration": 0}).rewrite(Ctx()) is None  # type: ignore[arg-type]


def test_delay_then_abort_in_one_coroutine() -> None:
    plugin = fault(delay={"duration": 0.01}, abort={"http_status": 503})
    pending = plugin.rewrite(Ctx())  # type: ignore[arg-type]
    resp = asyncio.run(pending)  # type: ignore[arg-type]
    assert isinstance(resp, Response) and resp.status == 503


def test_an_abort_without_body_and_a_no_content_status() -> None:
    resp = fault(abort={"http_status": 204, "body": "dropped"}).rewrite(Ctx())  # type: ignore[arg-type]
    assert isinstance(resp, Response) and (resp.status, resp.body) == (204, b"")


# --- mocking: generated values ------------------------------------------------------------------

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
    {"type": "object", "required": ["x", "y"], "properties": {"x": {"type": "boolean"}}},
    {"type": "object", "properties": {"n": {"type": "number", "minimum": -5, "maximum": -1}}},
    {
        "type": "object",
        "properties": {"n": {"type": "integer", "exclusiveMinimum": 0, "maximum": 1}},
    },
    {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 7, "maximum": 100}}},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 20}}},
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 2}}},
    {"type": "object", "properties": {"e": {"enum": [1, "two", None]}, "c": {"const": {"k": 1}}}},
    {
        "type": "object",
        "properties": {"l": {"type": "array", "items": {"type": "integer"}, "minItems": 4}},
    },
    {
        "type": "object",
        "properties": {"l": {"type": "array", "items": {"type": "string"}, "maxItems": 1}},
    },
    {"type": "object", "properties": {"l": {"type": "array"}}},
    {
        "type": "object",
        "properties": {"o": {"properties": {"deep": {"type": "array", "items": {}}}}},
    },
    {"type": "object", "properties": {"d": {"type": "string", "default": "dflt"}}},
    {"type": "object", "properties": {"t": {"type": ["null", "string"]}}},
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}}}},
    {"properties": {"x": {"type": "integer", "example": 3.9}}},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_generated_values_validate(schema: dict[str, Any]) -> None:
    random.seed(1234)
    for _ in range(30):
        jsonschema.validate(generate(schema), schema)


def test_examples_are_used_as_apisix_does() -> None:
    value = generate(
        {
            "properties": {
                "s": {"type": "string", "example": "abcd"},
                "f": {"type": "number", "example": 123.12},
                "i": {"type": "integer", "example": 155.55},
                "b": {"type": "boolean", "example": True},
                "wrong": {"type": "string", "example": 5},  # not a string: ignored
            }
        }
    )
    assert (value["s"], value["f"], value["i"], value["b"]) == ("abcd", 123.12, 155, True)
    assert isinstance(value["wrong"], str)


def test_media_type_and_xml() -> None:
    assert media_type("application/json;charset=utf8") == "application/json"
    assert media_type("text/plain") == "text/plain"
    assert media_type("a;b;c") == "a;b"  # greedy, as upstream's regex
    xml = to_xml({"name": "a&b", "list": [1, 2], "o": {"k": True}})
    assert xml == (
        "<data>\n  <name>a&amp;b</name>\n  <list>1</list>\n  <list>2</list>\n"
        "  <o>\n    <k>true</k>\n  </o>\n</data>"
    )


def test_mocking_without_delay_answers_synchronously() -> None:
    conf = {
        "delay": 0,
        "response_status": 200,
        "content_type": "text/html",
        "with_mock_header": True,
        "response_schema": {"properties": {"a": {"type": "string"}}},
    }
    resp = Mocking(conf, None).access(Ctx())  # type: ignore[arg-type]
    assert isinstance(resp, Response) and resp.body == b""  # html: APISIX sends no body
    assert resp.content_type == "text/html"


# --- request-validation: wording and decoding ---------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value", "message"),
    [
        ({"type": "string"}, 1, "wrong type: expected string, got number"),
        ({"type": ["string", "null"]}, 1, "wrong type: expected one of string, null, got number"),
        ({"type": "object", "required": ["a", "b"]}, {"a": 1}, 'property "b" is required'),
        (
            {"properties": {"a": {"properties": {"b": {"type": "integer"}}}}},
            {"a": {"b": "x"}},
            'property "a" validation failed: property "b" validation failed: '
            "wrong type: expected integer, got string",
        ),
        (
            {"properties": {"a": {"type": "string"}}, "additionalProperties": False},
            {"a": "x", "zz": 1},
            "additional properties forbidden, found zz",
        ),
        (
            {"additionalProperties": {"type": "string"}},
            {"k": 1},
            "failed to validate additional property k: wrong type: expected string, got number",
        ),
        ({"minLength": 3}, "ab", "string too short, expected at least 3, got 2"),
        ({"maxLength": 1}, "ab", "string too long, expected at most 1, got 2"),
        ({"pattern": "^a"}, "b", 'failed to match pattern "^a" with "b"'),
        ({"minimum": 1}, 0, "expected 0 to be at least 1"),
        ({"exclusiveMaximum": 1.5}, 2.25, "expected 2.25 to be smaller than 1.5"),
        ({"multipleOf": 3}, 4, "expected 4 to be a multiple of 3"),
        ({"enum": ["a"]}, "b", "matches none of the enum values"),
        ({"const": 1}, 2, "failed to check const value"),
        ({"maxItems": 1}, [1, 2], "expect array to have at most 1 items"),
        ({"uniqueItems": True}, [1, 2, 1], "expected unique items but items 1 and 3 are equal"),
        (
            {"items": [{"type": "string"}]},
            [1],
            "failed to validate item 1: wrong type: expected string, got number",
        ),
        ({"minProperties": 2}, {"a": 1}, "expect object to have at least 2 properties"),
        (
            {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
            {},
            'object matches none of the required: ["a"] or ["b"]',
        ),
        (
            {"oneOf": [{"type": "integer"}, {"minimum": 0}]},
            1,
            "value should match only one schema, but matches both schemas 1 and 2",
        ),
        ({"not": {"type": "integer"}}, 1, "value wasn't supposed to match schema"),
        (
            {"allOf": [{"type": "integer"}]},
            "x",
            "allOf 1 failed: wrong type: expected integer, got string",
        ),
        (
            {"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}},
            [],
            "wrong type: expected object, got table",  # the type is checked first
        ),
    ],
)
def test_apisix_wording(schema: dict[str, Any], value: Any, message: str) -> None:
    assert SchemaValidator(schema).check(value) == message


def test_valid_values_pass_both_validators() -> None:
    v = SchemaValidator({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert v.check({"a": 1}) is None and v.check({"a": 1.0}) is None


def test_lua_q() -> None:
    assert lua_q('a"b\\c\nd') == '"a\\"b\\\\c\\\nd"'


def test_decode_form_like_ngx_decode_args() -> None:
    assert decode_form(b"a=1&b=x+y&c&a=2&&d=%41%2B&=skip") == {
        "a": ["1", "2"],
        "b": "x y",
        "c": True,
        "d": "A+",
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "Expected value but found T_END at character 1"),
        (b"{", "Expected object key string but found T_END at character 2"),
        (b"{} x", "Expected the end but found invalid token at character 4"),
        (b'{"a":1,"a":2}', 'duplicate object key "a"'),
        (b"[Infinity]", "invalid number Infinity"),
        (b"[" * 100000, "Found too many nested data structures"),
    ],
)
def test_decode_json_refusals(body: bytes, why: str) -> None:
    assert decode_json(body) == (None, why)


class Req:
    """What request-validation reads of a request."""

    def __init__(self, headers: list[tuple[str, str]], has_body: bool) -> None:
        self.headers = headers
        self.has_body = has_body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def test_only_a_body_to_validate_leaves_the_fast_path() -> None:
    headers_only = RequestValidation(
        {"rejected_code": 400, "header_schema": {"required": ["x-v"]}},
        None,  # type: ignore[arg-type]
    )
    assert headers_only.rewrite(Req([("X-V", "1")], has_body=True)) is None  # type: ignore[arg-type]
    resp = headers_only.rewrite(Req([], has_body=False))  # type: ignore[arg-type]
    assert isinstance(resp, Response) and resp.body == b'property "x-v" is required'
    body = RequestValidation(
        {"rejected_code": 400, "body_schema": {"type": "object"}},
        None,  # type: ignore[arg-type]
    )
    resp = body.rewrite(Req([], has_body=False))  # type: ignore[arg-type]
    assert isinstance(resp, Response) and resp.status == 400
    assert b"<title>400 Bad Request</title>" in resp.body  # nginx's page, as ngx.exit(400)
    pending = body.rewrite(Req([], has_body=True))  # type: ignore[arg-type]
    assert inspect.isawaitable(pending)
    pending.close()  # type: ignore[union-attr]
