"""serverless-pre-function and serverless-post-function through a running gateway: each phase,
the order of functions and plugins, answering, the shared ctx, validation, and failures (runtime
error, runaway loop, forbidden call) each contained to its request."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.source import snapshot_from_text
from tests.support.client import request
from tests.support.gateway import GatewayProcess, failed_request_event
from tests.support.upstream import echoed_headers


def fn(body: str) -> str:
    """A serverless function's source: Lua that returns function(conf, ctx)."""
    return f"return function(conf, ctx)\n{body}\nend"


def route(rid: str, uri: str, up: dict[str, Any], **plugins: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "uri": uri,
        "upstream": up,
        "plugins": {k.replace("_", "-"): v for k, v in plugins.items()},
    }


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("serverless")
    config = {
        "routes": [
            route(
                "phases",
                "/phases",
                up,
                serverless_pre_function={
                    "phase": "rewrite",
                    "functions": [
                        fn("ando.request.set_header('X-Rewrite', conf.phase); ctx.trail = 'rw'"),
                    ],
                },
                serverless_post_function={
                    "phase": "before_proxy",
                    "functions": [fn("ando.request.set_header('X-Trail', ctx.trail .. ',bp')")],
                },
            ),
            route(
                "default",
                "/default",
                up,
                serverless_pre_function={
                    "functions": [
                        # the outer chunk runs once per configuration; upvalues persist
                        "local calls = 0\nreturn function(conf, ctx)\n"
                        "calls = calls + 1\n"
                        "ando.request.set_header('X-Phase', conf.phase)\n"
                        "ando.request.set_header('X-Calls', calls)\nend",
                        fn("ando.request.set_header('X-Second', 'ran')"),
                    ]
                },
            ),
            route(
                "order",
                "/order",
                up,
                serverless_post_function={
                    "phase": "access",
                    "functions": [fn("ando.request.set_header('X-Order', ctx.order .. ',post')")],
                },
                serverless_pre_function={
                    "phase": "access",
                    "functions": [fn("ctx.order = 'pre'")],
                },
            ),
            route(
                "answer",
                "/answer",
                up,
                serverless_pre_function={
                    "functions": [
                        fn(
                            "local m = ando.request.get_arg('m')\n"
                            "if m == 'ret' then return 403, {message = 'forbidden here'} end\n"
                            "if m == 'text' then return 429, 'slow', {['X-Why'] = 'text'} end\n"
                            "if m == 'exit' then ando.response.exit(418, {tea = true}) end"
                        ),
                        fn("ando.request.set_header('X-Reached', 'second')"),
                    ]
                },
            ),
            route(
                "filters",
                "/filters",
                up,
                serverless_post_function={
                    "phase": "header_filter",
                    "functions": [
                        fn(
                            "ando.response.set_header('X-Status-Seen', ando.response.get_status())\n"
                            "ando.response.set_status(202)"
                        )
                    ],
                },
                serverless_pre_function={
                    "phase": "log",
                    "functions": [fn("ando.log.warn('serverless log', ctx.var.uri)")],
                },
            ),
            route(
                "pdk",
                "/pdk",
                up,
                serverless_pre_function={
                    "functions": [
                        fn(
                            "return 200, {n = ando.shared.incr('sl-hits', 1), "
                            "t = ando.time.now(), m = ando.time.monotonic()}"
                        )
                    ]
                },
            ),
            route(
                "fail",
                "/fail",
                up,
                serverless_pre_function={
                    "functions": [
                        fn(
                            "local m = ando.request.get_arg('mode')\n"
                            "if m == 'error' then error('boom from serverless') end\n"
                            "if m == 'loop' then while true do end end\n"
                            "if m == 'exec' then os.execute('touch /tmp/ando-sl-pwned') end\n"
                            "if m == 'status' then return 99, 'bad' end"
                        )
                    ]
                },
            ),
            route(
                "bodyf",
                "/chunked",
                up,
                serverless_post_function={
                    "phase": "body_filter",
                    "functions": [
                        fn("ando.response.set_body(ando.response.get_body_chunk():upper())"),
                        # sees what the first one set
                        fn(
                            "if ando.response.is_last_chunk() then\n"
                            "ando.response.set_body(ando.response.get_body_chunk() .. '!')\nend"
                        ),
                    ],
                },
            ),
            route(
                "reqbody",
                "/reqbody",
                up,
                serverless_pre_function={
                    "phase": "access",
                    "functions": [
                        fn("ctx.n = #ando.request.get_body()"),
                        # runs after the first one waited for the body
                        fn(
                            "if ctx.n == 0 then return 400, {message = 'empty'} end\n"
                            "ando.request.set_header('X-N', ctx.n)"
                        ),
                    ],
                },
            ),
        ]
    }
    with GatewayProcess(config, tmp) as g:
        yield g


def test_rewrite_and_before_proxy_share_ctx(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/phases")
    assert r.status == 200, r.body
    h = echoed_headers(r)
    assert h["x-rewrite"] == ["rewrite"]
    assert h["x-trail"] == ["rw,bp"]


def test_default_phase_is_access_and_functions_run_in_order(gw: GatewayProcess) -> None:
    h = echoed_headers(request(gw.port, "GET", "/default"))
    assert h["x-phase"] == ["access"]
    assert h["x-second"] == ["ran"]
    first = int(h["x-calls"][0])
    again = echoed_headers(request(gw.port, "GET", "/default"))
    assert int(again["x-calls"][0]) == first + 1  # compiled once, not per request


def test_pre_runs_before_post(gw: GatewayProcess) -> None:
    h = echoed_headers(request(gw.port, "GET", "/order"))
    assert h["x-order"] == ["pre,post"]


def test_returning_status_ends_the_request(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/answer?m=ret")
    assert r.status == 403
    assert r.json() == {"message": "forbidden here"}
    t = request(gw.port, "GET", "/answer?m=text")
    assert t.status == 429
    assert t.body == b"slow"
    assert t.header("X-Why") == "text"
    e = request(gw.port, "GET", "/answer?m=exit")
    assert e.status == 418
    assert e.json() == {"tea": True}
    on = request(gw.port, "GET", "/answer")
    assert on.status == 200
    assert echoed_headers(on)["x-reached"] == ["second"]


def test_header_filter_and_log_phases(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/filters")
    assert r.status == 202
    assert r.header("X-Status-Seen") == "200"
    found = gw.wait_events("lua_log", lambda e: e.get("message") == "serverless log /filters")
    assert found, gw.stderr()[-2000:]
    assert found[0]["plugin"] == "serverless-pre-function"
    assert found[0]["route_id"] == "filters"
    assert found[0]["level"] == "warn"


def test_pdk_shared_and_time_in_functions(gw: GatewayProcess) -> None:
    first = request(gw.port, "GET", "/pdk").json()
    second = request(gw.port, "GET", "/pdk").json()
    assert second["n"] == first["n"] + 1
    assert abs(first["t"] - time.time()) < 5
    assert second["m"] >= first["m"]


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("error", "boom from serverless"),
        ("loop", "instruction budget exceeded"),
        ("exec", "attempt to call field 'execute' (a nil value)"),
        ("status", "answered with status 99"),
    ],
)
def test_failures_are_500_and_logged(gw: GatewayProcess, mode: str, expect: str) -> None:
    ev = failed_request_event(gw, f"/fail?mode={mode}", expect)
    assert ev["plugin"] == "serverless-pre-function"
    assert ev["route_id"] == "fail"
    if mode != "status":
        # the Lua traceback names the function by its place in the configuration
        assert "serverless-pre-function.functions[0]:" in ev["traceback"]
    assert request(gw.port, "GET", "/fail?mode=none").status == 200
    assert not Path("/tmp/ando-sl-pwned").exists()


# --- validation ------------------------------------------------------------------------------


def problems(plugin_conf: str) -> list[str]:
    text = (
        "routes:\n"
        "  - uri: /a\n"
        '    upstream: {nodes: {"127.0.0.1:1980": 1}}\n'
        "    plugins:\n"
        "      serverless-post-function:\n" + plugin_conf
    )
    try:
        snapshot_from_text(text, "t.yaml", environ={})
    except ConfigError as e:
        return [d.format() for d in e.diagnostics]
    return []


def test_body_filter_phase(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/chunked?n=3&size=4")
    assert r.status == 200
    assert r.body == b"AAAABBBBCCCC!"


def test_request_body_in_a_function(gw: GatewayProcess) -> None:
    body = bytes(range(256)) * 1000  # binary, not UTF-8
    r = request(gw.port, "POST", "/reqbody", body=body)
    assert r.status == 200, r.body
    echoed = r.json()
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echoed_headers(r)["x-n"] == [str(len(body))]
    empty = request(gw.port, "POST", "/reqbody", body=b"")
    assert empty.status == 400 and empty.json() == {"message": "empty"}


def test_validate_reports_lua_errors_at_the_function() -> None:
    found = problems(
        "        functions:\n"
        '          - "return function(conf, ctx) end"\n'
        '          - "return function(conf, ctx) x = = 1 end"\n'
        '          - "return 42"\n'
        "          - \"error('at load')\"\n"
    )
    assert found == [
        "t.yaml:8:13: routes[0].plugins.serverless-post-function.functions[1]: Lua syntax error: "
        "serverless-post-function.functions[1]:1: unexpected symbol near '='",
        "t.yaml:9:13: routes[0].plugins.serverless-post-function.functions[2]: "
        "the code must return a function, not a number",
        "t.yaml:10:13: routes[0].plugins.serverless-post-function.functions[3]: "
        "Lua error while loading it: serverless-post-function.functions[3]:1: at load",
    ]


def test_validate_schema() -> None:
    assert problems('        functions: ["return function() end"]\n') == []
    assert problems("        phase: rewrite\n") != []  # functions is required
    assert problems("        functions: []\n") != []
    body = problems('        phase: body_filter\n        functions: ["return function() end"]\n')
    assert body == []
    other = problems('        phase: balancer\n        functions: ["return function() end"]\n')
    assert len(other) == 1 and "phase" in other[0]
    loop = problems('        functions: ["while true do end"]\n')
    assert len(loop) == 1 and "instruction budget exceeded" in loop[0]


def test_enabled_like_any_built_in() -> None:
    text = (
        "ando:\n"
        "  plugins: [key-auth]\n"
        "routes:\n"
        "  - uri: /a\n"
        '    upstream: {nodes: {"127.0.0.1:1980": 1}}\n'
        "    plugins:\n"
        '      serverless-pre-function: {functions: ["return function() end"]}\n'
    )
    with pytest.raises(ConfigError) as e:
        snapshot_from_text(text, "t.yaml", environ={})
    assert "not enabled on this node" in str(e.value)
    listed = text.replace("[key-auth]", "[key-auth, serverless-pre-function]")
    assert snapshot_from_text(listed, "t.yaml", environ={}) is not None
