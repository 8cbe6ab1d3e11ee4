"""`ando validate` on fault-injection, mocking and request-validation confs, through the real
built-in catalog: what the schemas and check_conf refuse, at the right line and column."""

from __future__ import annotations

import pytest

from ando.config.snapshot import Snapshot
from tests.support.config import config_problems, snapshot

UP = "    upstream: {nodes: {'127.0.0.1:1980': 1}}\n"


def document(plugins: str, upstream: bool = True) -> str:
    return "routes:\n  - uri: /a\n    plugins:\n" + plugins + (UP if upstream else "")


def build(plugins: str, upstream: bool = True) -> Snapshot:
    return snapshot(document(plugins, upstream))


def problems(plugins: str, upstream: bool = True) -> list[str]:
    return config_problems(document(plugins, upstream))


def test_valid_confs_get_apisix_defaults() -> None:
    snap = build(
        "      fault-injection: {delay: {duration: 0.5}}\n"
        "      request-validation: {body_schema: {type: object}}\n"
    )
    plugins = snap.routes[0].plugins
    assert plugins["request-validation"]["rejected_code"] == 400
    snap = build("      mocking: {response_example: hi}\n", upstream=False)  # no upstream needed
    mock = snap.routes[0].plugins["mocking"]
    assert (mock["delay"], mock["response_status"], mock["with_mock_header"]) == (0, 200, True)
    assert mock["content_type"] == "application/json;charset=utf8"


CASES = [
    # (plugins block line, text the column points at, message after "t.yaml:4:COL: ")
    (
        "      fault-injection: {}\n",
        "{}",
        "routes[0].plugins.fault-injection: needs one of: 'abort', 'delay'",
    ),
    (
        "      fault-injection: {abort: {body: x}}\n",
        "{body",
        "routes[0].plugins.fault-injection.abort: missing required field 'http_status'",
    ),
    (
        "      fault-injection: {abort: {http_status: 403, vars: [[[arg_x, '=~', y]]]}}\n",
        "'=~'",
        "routes[0].plugins.fault-injection.abort.vars[0][0][1]: unknown operator '=~'; did you "
        "mean '~~'?",
    ),
    (
        "      fault-injection: {abort: {http_status: 403, headers: {'a b': x}}}\n",
        "x}",
        "routes[0].plugins.fault-injection.abort.headers[\"a b\"]: 'a b' is not a valid HTTP "
        "header name",
    ),
    (
        "      fault-injection: {abort: {http_status: 403, headers: {Content-Length: 1}}}\n",
        "1}",
        "routes[0].plugins.fault-injection.abort.headers.Content-Length: Content-Length is set "
        "by the gateway itself and cannot be configured",
    ),
    (
        "      fault-injection: {delay: {duration: -1}}\n",
        "-1",
        "routes[0].plugins.fault-injection.delay.duration: must be >= 0, got -1",
    ),
    (
        "      mocking: {response_example: x, content_type: application/yaml}\n",
        "application/yaml",
        "routes[0].plugins.mocking.content_type: unsupported content type! (expected "
        "application/json, application/xml, text/plain, text/html or text/xml, optionally "
        "followed by ;parameters)",
    ),
    (
        "      mocking: {response_example: x, response_status: 101}\n",
        "101",
        "routes[0].plugins.mocking.response_status: 101 is an interim status: a mock must send "
        "a final one (200 or more)",
    ),
    (
        "      request-validation: {rejected_code: 400}\n",
        "{rejected_code",
        "routes[0].plugins.request-validation: needs one of: 'header_schema', 'body_schema'",
    ),
    (
        "      request-validation: {body_schema: {properties: {a: {type: test}}}}\n",
        "test",
        "routes[0].plugins.request-validation.body_schema.properties.a.type: invalid JSON "
        "Schema: 'test' is not valid under any of the given schemas",
    ),
    (
        "      request-validation: {header_schema: {required: x}}\n",
        "x}",
        "routes[0].plugins.request-validation.header_schema.required: invalid JSON Schema: 'x' "
        "is not of type 'array'",
    ),
    (
        "      request-validation: {body_schema: {$ref: 'http://169.254.169.254/x'}}\n",
        "'http",
        'routes[0].plugins.request-validation.body_schema["$ref"]: only references inside the '
        "schema (#...) are supported, got 'http://169.254.169.254/x'",
    ),
    (
        "      request-validation: {body_schema: {type: object}, rejected_msg: ''}\n",
        "''",
        "routes[0].plugins.request-validation.rejected_msg: must be at least 1 characters long",
    ),
]


@pytest.mark.parametrize(("plugins", "at", "message"), CASES)
def test_refusals_point_at_the_problem(plugins: str, at: str, message: str) -> None:
    column = plugins.index(at) + 1
    assert problems(plugins) == [f"t.yaml:4:{column}: {message}"]
