"""fault-injection, mocking and request-validation through a running gateway, as a client and an
upstream see them: APISIX's statuses, bodies and headers, bodies that reach the upstream intact,
and the tricks (response splitting through `$arg_x`, an oversized body, duplicate JSON keys)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from ando import __version__
from tests.support.client import request
from tests.support.gateway import GatewayProcess

MAX_BODY = 4096

BODY_SCHEMA = {
    "type": "object",
    "required": ["required_payload"],
    "properties": {
        "required_payload": {"type": "string"},
        "boolean_payload": {"type": "boolean"},
        "timeouts": {"type": "integer", "minimum": 1, "maximum": 254, "default": 3},
        "req_headers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
}

MOCK_SCHEMA = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {
        "id": {"type": "integer", "minimum": 100, "maximum": 200},
        "name": {"type": "string", "example": "abcd"},
        "price": {"type": "number", "example": 123.12},
        "score": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1},
        "nums": {"type": "array", "items": {"type": "integer", "example": 155.55}},
        "kind": {"type": "string", "enum": ["a", "b"]},
        "nested": {
            "type": "object",
            "properties": {"deep": {"type": "boolean", "example": True}, "s": {"type": "string"}},
        },
        "code": {"type": "string", "minLength": 12, "maxLength": 12},
    },
}


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "ando": {"limits": {"max_body_size": MAX_BODY}},
        "routes": [
            # --- fault-injection
            {
                "uri": "/fi/abort",
                "upstream": up,
                "plugins": {
                    "fault-injection": {
                        "abort": {
                            "http_status": 403,
                            "body": "Fault from $remote_addr for ${arg_who ?? nobody}\n",
                            "headers": {"X-Fault": "yes", "X-Who": "$arg_who", "X-Num": 7},
                        }
                    }
                },
            },
            {
                "uri": "/fi/delay",
                "upstream": up,
                "plugins": {"fault-injection": {"delay": {"duration": 0.3}}},
            },
            {
                "uri": "/fi/delay-abort",
                "upstream": up,
                "plugins": {
                    "fault-injection": {"delay": {"duration": 0.3}, "abort": {"http_status": 503}}
                },
            },
            {
                "uri": "/fi/vars",
                "upstream": up,
                "plugins": {
                    "fault-injection": {
                        "abort": {
                            "http_status": 418,
                            "body": "teapot",
                            "vars": [
                                [["arg_name", "==", "jack"]],
                                [["http_x_test", "==", "1"], ["arg_age", ">", 18]],
                            ],
                        },
                        "delay": {"duration": 0.3, "vars": [[["arg_slow", "==", "1"]]]},
                    }
                },
            },
            {
                "uri": "/fi/never",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 500, "percentage": 0}}},
            },
            {
                "uri": "/fi/always",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 502, "percentage": 100}}},
            },
            {
                "uri": "/fi/half",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 503, "percentage": 50}}},
            },
            {
                "uri": "/fi/empty-vars",
                "upstream": up,
                "plugins": {"fault-injection": {"abort": {"http_status": 500, "vars": []}}},
            },
            {
                # 11000 runs before key-auth's 2500: the fault is injected even without a key
                "uri": "/fi/before-auth",
                "upstream": up,
                "plugins": {
                    "key-auth": {},
                    "fault-injection": {"abort": {"http_status": 429, "body": "x"}},
                },
            },
            # --- mocking: no upstream at all
            {
                "uri": "/mock/example",
                "plugins": {
                    "mocking": {
                        "response_status": 201,
                        "response_example": '{"Lastname":"Brown","ip":"$remote_addr"}',
                        "response_headers": {"X-Foo": "bar", "X-Num": 5},
                    }
                },
            },
            {"uri": "/mock/schema", "plugins": {"mocking": {"response_schema": MOCK_SCHEMA}}},
            {
                "uri": "/mock/xml",
                "plugins": {
                    "mocking": {
                        "content_type": "application/xml",
                        "response_schema": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "example": "a<b"},
                                "items": {
                                    "type": "array",
                                    "items": {"type": "integer", "example": 7},
                                },
                            },
                        },
                    }
                },
            },
            {
                "uri": "/mock/plain",
                "plugins": {
                    "mocking": {
                        "content_type": "text/plain",
                        "with_mock_header": False,
                        "response_example": "hello ${arg_name ?? world}",
                    }
                },
            },
            {
                "uri": "/mock/delay",
                "plugins": {"mocking": {"delay": 1, "response_example": "late"}},
            },
            {
                # a route with an upstream: the mock still answers and the upstream hears nothing
                "uri": "/mock/upstream",
                "upstream": up,
                "plugins": {"mocking": {"response_example": "mocked"}},
            },
            # --- request-validation
            {
                "uri": "/rv/body",
                "upstream": up,
                "plugins": {"request-validation": {"body_schema": BODY_SCHEMA}},
            },
            {
                "uri": "/rv/header",
                "upstream": up,
                "plugins": {
                    "request-validation": {
                        "header_schema": {
                            "type": "object",
                            "required": ["x-api-version"],
                            "properties": {"x-api-version": {"type": "string", "enum": ["1", "2"]}},
                        }
                    }
                },
            },
            {
                "uri": "/rv/msg",
                "upstream": up,
                "plugins": {
                    "request-validation": {
                        "body_schema": BODY_SCHEMA,
                        "rejected_code": 422,
                        "rejected_msg": "customize reject message",
                    }
                },
            },
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k"}}}],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("transform2"), access_log=False) as g:
        yield g


# --- fault-injection --------------------------------------------------------------------------


def test_abort_answers_with_status_body_and_headers_and_interpolates_variables(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, path="/fi/abort?who=jill")
    assert r.status == 403
    assert r.body == b"Fault from 127.0.0.1 for jill\n"
    assert r.header("X-Fault") == "yes" and r.header("X-Who") == "jill" and r.header("X-Num") == "7"
    r = request(gw.port, path="/fi/abort")
    assert r.body == b"Fault from 127.0.0.1 for nobody\n"  # the ?? default
    assert r.header("X-Who") == ""  # a missing variable is ""
    assert upstream.requests == []


def test_a_variable_cannot_split_the_response_head(gw):
    r = request(gw.port, path="/fi/abort?who=a%0d%0aSet-Cookie:%20pwned=1")
    assert r.status == 403
    assert r.header("Set-Cookie") is None
    assert r.header("X-Who") == "a%0D%0ASet-Cookie: pwned=1"


def test_delay_holds_the_request_then_proxies_it(gw, upstream):
    upstream.requests.clear()
    start = time.monotonic()
    r = request(gw.port, path="/fi/delay")
    took = time.monotonic() - start
    assert r.status == 200 and r.json()["path"] == "/fi/delay"
    assert 0.3 <= took < 2.5
    assert len(upstream.requests) == 1


def test_delay_runs_before_the_abort(gw, upstream):
    upstream.requests.clear()
    start = time.monotonic()
    r = request(gw.port, path="/fi/delay-abort")
    took = time.monotonic() - start
    assert r.status == 503 and 0.3 <= took < 2.5
    assert upstream.requests == []


def test_vars_gate_the_abort_and_the_delay(gw):
    # no rule matches: proxied at once
    start = time.monotonic()
    assert request(gw.port, path="/fi/vars?name=jill").status == 200
    assert time.monotonic() - start < 0.3
    # first rule
    r = request(gw.port, path="/fi/vars?name=jack")
    assert (r.status, r.body) == (418, b"teapot")
    # second rule: both of its expressions must hold
    assert request(gw.port, path="/fi/vars?age=20", headers={"X-Test": "1"}).status == 418
    assert request(gw.port, path="/fi/vars?age=10", headers={"X-Test": "1"}).status == 200
    assert request(gw.port, path="/fi/vars?age=20").status == 200
    # the delay has its own vars
    start = time.monotonic()
    assert request(gw.port, path="/fi/vars?slow=1").status == 200
    assert time.monotonic() - start >= 0.3


def test_percentage_zero_never_aborts_and_hundred_always_does(gw):
    for _ in range(20):
        assert request(gw.port, path="/fi/never").status == 200
        assert request(gw.port, path="/fi/always").status == 502


def test_percentage_samples_each_request(gw):
    # 200 draws at 50%: outside [40, 160] has a probability below 1e-17
    aborted = sum(request(gw.port, path="/fi/half").status == 503 for _ in range(200))
    assert 40 <= aborted <= 160


def test_empty_vars_match_nothing(gw):
    assert request(gw.port, path="/fi/empty-vars").status == 200


def test_fault_injection_runs_before_authentication(gw):
    r = request(gw.port, path="/fi/before-auth")
    assert (r.status, r.body) == (429, b"x")


# --- mocking ----------------------------------------------------------------------------------


def test_mock_example_with_status_content_type_and_headers(gw):
    r = request(gw.port, path="/mock/example")
    assert r.status == 201
    assert r.json() == {"Lastname": "Brown", "ip": "127.0.0.1"}
    assert r.header("Content-Type") == "application/json;charset=utf8"
    assert r.header("x-mock-by") == f"Ando/{__version__}"
    assert r.header("X-Foo") == "bar" and r.header("X-Num") == "5"


def test_mock_schema_generates_a_valid_value_each_time(gw):
    seen = set()
    for _ in range(15):
        r = request(gw.port, path="/mock/schema")
        assert r.status == 200
        body = r.json()
        jsonschema.validate(body, MOCK_SCHEMA)
        assert body["name"] == "abcd" and body["price"] == 123.12  # the examples
        assert all(n == 155 for n in body["nums"])  # an integer example is floored
        assert body["nested"]["deep"] is True
        seen.add(body["id"])
    assert len(seen) > 1  # random per request


def test_mock_schema_as_xml(gw):
    r = request(gw.port, path="/mock/xml")
    assert r.status == 200 and r.header("Content-Type") == "application/xml"
    text = r.body.decode()
    assert text.startswith("<data>") and text.endswith("</data>")
    assert "<name>a&lt;b</name>" in text and "<items>7</items>" in text


def test_mock_without_mock_header_and_with_variables(gw):
    r = request(gw.port, path="/mock/plain?name=ando")
    assert (r.status, r.body) == (200, b"hello ando")
    assert r.header("Content-Type") == "text/plain"
    assert r.header("x-mock-by") is None
    assert request(gw.port, path="/mock/plain").body == b"hello world"


def test_mock_delay(gw):
    start = time.monotonic()
    r = request(gw.port, path="/mock/delay")
    assert (r.status, r.body) == (200, b"late")
    assert 1.0 <= time.monotonic() - start < 3.0


def test_mock_never_contacts_the_upstream(gw, upstream):
    upstream.requests.clear()
    r = request(gw.port, "POST", path="/mock/upstream", body=b"payload")
    assert (r.status, r.body) == (200, b"mocked")
    assert upstream.requests == []


# --- request-validation -----------------------------------------------------------------------


def post(gw, path: str, body: bytes, content_type: str = "application/json", **kw):
    headers = {"Content-Type": content_type, **kw.pop("headers", {})}
    return request(gw.port, "POST", path=path, body=body, headers=headers, **kw)


def test_a_valid_body_reaches_the_upstream_byte_for_byte(gw):
    body = b'{ "required_payload" : "hello",\n  "timeouts": 5, "req_headers": ["a"] }'
    r = post(gw, "/rv/body", body)
    assert r.status == 200
    got = r.json()
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"boolean_payload": true}', 'property "required_payload" is required'),
        (
            b'{"required_payload": "x", "boolean_payload": "yes"}',
            'property "boolean_payload" validation failed: wrong type: expected boolean, got string',
        ),
        (
            b'{"required_payload": "x", "timeouts": 1000}',
            'property "timeouts" validation failed: expected 1000 to be at most 254',
        ),
        (
            b'{"required_payload": "x", "req_headers": ["a", 2]}',
            'property "req_headers" validation failed: failed to validate item 2: '
            "wrong type: expected string, got number",
        ),
        (
            b'{"required_payload": "x", "req_headers": []}',
            'property "req_headers" validation failed: expect array to have at least 1 items',
        ),
        (b"[1, 2]", "wrong type: expected object, got table"),
        (b"not json", "Expected value but found invalid token at character 1"),
        (
            b'{"required_payload": 1, "required_payload": "x"}',
            'duplicate object key "required_payload"',
        ),
        (b'{"required_payload": "x", "timeouts": NaN}', "invalid number NaN"),
        (b'{"required_payload": "\xff"}', "invalid UTF-8 byte at character 23"),
    ],
)
def test_an_invalid_body_is_refused_with_apisix_wording(gw, upstream, body, message):
    upstream.requests.clear()
    r = post(gw, "/rv/body", body)
    assert (r.status, r.body.decode()) == (400, message)
    assert r.header("Content-Type").startswith("text/plain")
    assert upstream.requests == []


def test_a_request_without_a_body_is_refused(gw):
    r = request(gw.port, path="/rv/body")
    assert r.status == 400 and b"<title>400 Bad Request</title>" in r.body  # nginx's page


def test_form_bodies_are_validated_as_forms(gw):
    body = b"a=b&required_payload=101-hello"
    for ctype in (
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    ):
        r = post(gw, "/rv/body", body, ctype)
        assert r.status == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    r = post(gw, "/rv/body", b"a=b", "application/x-www-form-urlencoded")
    assert (r.status, r.body) == (400, b'property "required_payload" is required')
    # a flag without "=" is true, which is not a string
    r = post(gw, "/rv/body", b"required_payload", "application/x-www-form-urlencoded")
    assert (
        r.body
        == b'property "required_payload" validation failed: wrong type: expected string, got boolean'
    )


def test_two_content_types_are_refused(gw, upstream):
    upstream.requests.clear()
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Type", "application/json"),
    ]
    r = request(
        gw.port, "POST", path="/rv/body", body=b'{"required_payload": "x"}', headers=headers
    )
    assert (r.status, r.body) == (400, b"duplicated Content-Type header")
    assert upstream.requests == []


def test_a_chunked_body_is_validated_and_forwarded(gw):
    body = b'{"required_payload": "chunked"}'
    head = b"POST /rv/body HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:10], body[10:])) + b"0\r\n\r\n"
    raw = _exchange(gw.port, head + chunks)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    echo = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert echo["body_len"] == len(body)


def test_headers_are_validated(gw):
    r = request(gw.port, path="/rv/header")
    assert (r.status, r.body) == (400, b'property "x-api-version" is required')
    r = request(gw.port, path="/rv/header", headers={"X-API-Version": "3"})
    assert r.body == b'property "x-api-version" validation failed: matches none of the enum values'
    assert request(gw.port, path="/rv/header", headers={"X-API-Version": "2"}).status == 200
    # repeated, it is a list of values
    r = request(
        gw.port, path="/rv/header", headers=[("X-API-Version", "1"), ("X-API-Version", "2")]
    )
    assert (
        r.body
        == b'property "x-api-version" validation failed: wrong type: expected string, got table'
    )


def test_rejected_code_and_msg(gw):
    r = post(gw, "/rv/msg", b'{"timeouts": 3}')
    assert (r.status, r.body) == (422, b"customize reject message")
    r = request(gw.port, path="/rv/msg")
    assert (r.status, r.body) == (422, b"customize reject message")
    assert post(gw, "/rv/msg", b'{"required_payload": "x"}').status == 200


def test_a_body_over_the_node_limit_is_refused_413(gw, upstream):
    upstream.requests.clear()
    big = b'{"required_payload": "' + b"x" * MAX_BODY + b'"}'
    r = post(gw, "/rv/body", big)
    assert r.status == 413
    # the same body, chunked: no length to refuse up front, refused while it is read
    head = b"POST /rv/body HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (big[:1000], big[1000:])) + b"0\r\n\r\n"
    )
    raw = _exchange(gw.port, head + chunks)
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    assert upstream.requests == []


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send a whole request, read until the gateway closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the gateway may refuse before it read everything
            s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            out += chunk
        return out
