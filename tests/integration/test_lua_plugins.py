"""Lua plugins through a running gateway: the two examples, every PDK function, and failures
(runtime error, runaway loop, forbidden call) each contained to its request."""

from __future__ import annotations

import hashlib
import http.client
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess, failed_request_event
from tests.support.upstream import echoed_headers

PROBE = """
return {
    name = "pdk-probe",
    priority = 500,
    schema = {type = "object", properties = {tag = {type = "string", default = "t"}}},
    rewrite = function(conf, ctx)
        local r = ando.request
        r.set_header("X-Method", r.get_method())
        r.set_header("X-Uri", r.get_uri())
        r.set_header("X-Path", r.get_path())
        r.set_header("X-Query", r.get_query())
        r.set_header("X-Arg", r.get_arg("a") or "none")
        r.set_header("X-In", r.get_header("x-in") or "none")
        r.set_header("X-In-Underscore", r.get_header("X_In") or "none")
        local hs = r.get_headers()
        r.set_header("X-Multi", type(hs["x-multi"]) == "table" and table.concat(hs["x-multi"], ",")
            or tostring(hs["x-multi"]))
        r.set_header("X-Remote", r.get_remote_addr())
        r.set_header("X-Host", r.get_host())
        r.set_header("X-Scheme", r.get_scheme())
        r.set_header("X-Var-Uri", ando.var("uri"))
        r.set_header("X-Ctx-Var", ctx.var.request_method)
        r.set_header("X-Tag", conf.tag)
        r.add_header("X-Added", "1")
        r.add_header("X-Added", "2")
        r.remove_header("x-remove-me")
        r.set_header("X-Json", ando.json.encode({list = {1, 2}, ok = true}))
        r.set_header("X-Decoded", tostring(ando.json.decode('{"b": [10, 20]}').b[2]))
        ando.ctx.seen = "from-rewrite"
        ando.log.warn("probe saw", r.get_path())
    end,
    access = function(conf, ctx)
        ando.request.set_header("X-Ctx", ctx.seen)
        ando.request.set_header("X-Same", tostring(ando.ctx == ctx))
        if ando.request.get_arg("setarg") then
            ando.request.set_uri("/rewritten")
            ando.request.set_arg("added", "yes")
        end
        ando.response.set_header("X-Early", "set-in-access")
    end,
    header_filter = function(conf, ctx)
        ando.response.set_header("X-Old-Status", ando.response.get_status())
        ando.response.set_header("X-Up-Type", ando.response.get_header("content-type") or "none")
        ando.response.set_header("X-Up-Type-Underscore",
            ando.response.get_header("content_type") or "none")
        local s = ando.request.get_arg("status")
        if s then
            ando.response.set_status(tonumber(s))
        end
        ando.response.add_header("X-Resp", "a")
        ando.response.add_header("X-Resp", "b")
    end,
    log = function(conf, ctx)
        ando.log.info("logged", ando.response.get_status())
    end,
}
"""

SECOND = """
return {
    name = "pdk-second",
    priority = 400,
    access = function(conf, ctx)
        ando.request.set_header("X-Second-Sees", tostring(ctx.seen))
    end,
}
"""

EXIT = """
return {
    name = "exit-probe",
    priority = 500,
    access = function(conf, ctx)
        if ando.request.get_arg("pcall") then
            -- plugin code cannot swallow exit with pcall
            pcall(ando.response.exit, 403, "denied")
            return
        end
        if ando.request.get_arg("text") then
            return 429, "slow down", {["X-Why"] = "text"}
        end
        ando.response.exit(418, {message = "teapot", list = {1, 2}}, {["X-Exit"] = "1"})
    end,
}
"""

FAIL = """
return {
    name = "fail-probe",
    priority = 500,
    access = function(conf, ctx)
        local mode = ando.request.get_arg("mode")
        if mode == "error" then
            error("boom from lua")
        elseif mode == "loop" then
            while true do end
        elseif mode == "swallow" then
            while true do pcall(function() while true do end end) end
        elseif mode == "exec" then
            os.execute("touch /tmp/ando-lua-pwned")
        elseif mode == "io" then
            io.open("/etc/passwd")
        elseif mode == "ffi" then
            require("ffi")
        elseif mode == "bytecode" then
            load(string.dump(function() end))
        elseif mode == "smuggle" then  -- a name that would end the line: a header smuggled up
            ando.request.set_header("X-A\\r\\nX-Smuggled", "1")
        elseif mode == "split-answer" then
            return 200, "x", {["X-A\\r\\nSet-Cookie"] = "evil=1"}
        elseif mode == "interim" then  -- a 1xx would announce another response
            return 101, "x"
        elseif mode == "memory" then  -- 1 MB a step: past ando.lua.max_memory in ~64 steps
            local t = {}
            for i = 1, 1e6 do
                t[i] = string.rep("x", 1e6) .. i
            end
        elseif mode == "alloc" then  -- 4 MB, let go at once: fits unless garbage fills the state
            local s = string.rep("y", 4e6)
            ando.request.set_header("X-Alloc", tostring(#s))
        end
    end,
}
"""


SHARED = """
local mine = 0   -- this worker's own count (each worker has its own Lua state)
return {
    name = "shared-probe",
    priority = 500,
    access = function(conf, ctx)
        local arg = ando.request.get_arg
        local op, key = arg("op"), arg("key") or "k"
        if op == "incr" then
            mine = mine + 1
            return 200, {node = ando.shared.incr(key, 1), worker = mine}
        elseif op == "incr-ttl" then
            return 200, {value = ando.shared.incr(key, tonumber(arg("delta")), tonumber(arg("ttl")))}
        elseif op == "set" then
            ando.shared.set(key, tonumber(arg("v")), tonumber(arg("ttl")))
            return 200, {done = true}
        elseif op == "get" then
            return 200, {value = ando.shared.get(key) or "none"}
        elseif op == "delete" then
            ando.shared.delete(key)
            return 200, {done = true}
        elseif op == "bad-value" then
            ando.shared.set(key, "text")
        elseif op == "bad-incr" then
            ando.shared.incr(key, {})
        elseif op == "time" then
            local m0 = ando.time.monotonic()
            local now = ando.time.now()
            return 200, {now = now, m0 = m0, m1 = ando.time.monotonic(), os = os.time()}
        end
    end,
}
"""

BODY = r"""
-- body_filter: the chunk, the last-chunk flag and its replacement, binary-safe.
local BINARY = "\255\254\0ok\128\192"   -- not valid UTF-8
return {
    name = "body-probe",
    priority = 450,
    access = function(conf, ctx)
        if ando.request.get_arg("mode") == "binary" then
            return 200, BINARY, {["Content-Type"] = "application/octet-stream"}
        end
    end,
    body_filter = function(conf, ctx)
        local mode = ando.request.get_arg("mode")
        local chunk = ando.response.get_body_chunk()
        ctx.calls = (ctx.calls or 0) + 1
        ctx.seen = (ctx.seen or 0) + #chunk
        if mode == "upper" then
            ando.response.set_body(chunk:upper())
        elseif mode == "status" and ando.response.is_last_chunk() then
            ando.response.set_body(chunk .. "|status=" .. ando.response.get_status())
        elseif mode == "count" and ando.response.is_last_chunk() then
            ando.response.set_body(chunk .. "|" .. ctx.seen .. "|" .. ctx.calls)
        elseif mode == "binary" then
            -- the exact bytes reach Lua, and go back out unchanged
            assert(chunk == BINARY and #chunk == 7 and chunk:byte(1) == 255, "bytes changed")
            if ando.request.get_arg("touch") then
                ando.response.set_body(chunk)
            end
        end
    end,
}
"""

GUARD = """
-- Refuses a JSON body without conf.field (400); lets a good one through, intact.
return {
    name = "body-guard",
    priority = 450,
    schema = {type = "object", properties = {field = {type = "string", default = "name"}}},
    access = function(conf, ctx)
        local body = ando.request.get_body()
        if body == "boom" then
            error("guard failed after the body")  -- after waiting for it: the awaited path
        end
        local ok, doc = pcall(ando.json.decode, body)
        if not ok or type(doc) ~= "table" or doc[conf.field] == nil then
            return 400, {message = "missing " .. conf.field}
        end
        ando.request.set_header("X-Field", tostring(doc[conf.field]))
        ando.request.set_header("X-Again", tostring(ando.request.get_body() == body))
        ctx.len = #body
    end,
    header_filter = function(conf, ctx)
        -- read in access: later phases see it too
        ando.response.set_header("X-Len-Seen", #ando.request.get_body() .. "/" .. (ctx.len or 0))
    end,
}
"""

HEAD = r"""
-- header_filter's header changes: reads see earlier writes of the same call, order holds.
return {
    name = "head-probe",
    priority = 450,
    header_filter = function(conf, ctx)
        local r = ando.response
        local mode = ando.request.get_arg("mode")
        if mode == "split" then
            r.set_header("X-Split", "a\r\nX-Injected: 1")
            return
        end
        if mode == "split-name" then
            r.set_header("X-Split\r\nX-Injected", "1")
            return
        end
        if mode == "length" then  -- a wrong length: the body that follows is the upstream's
            r.set_header("Content-Length", "5")
            return
        end
        if mode == "echo" then  -- a value per request, and a header the upstream sent
            r.set_header("X-Echo", ando.request.get_arg("v"))
            r.set_header("content-type", "text/x-probe")
            r.set_header("X-Echo-Seen", r.get_header("x-echo") or "none")
            return
        end
        if mode == "exit" then  -- exit() does nothing in header_filter; what was set stands
            r.set_header("X-Before-Exit", "1")
            r.exit(403, "no")
        end
        r.set_header("X-First", "1")
        r.set_header("X-Seen-First", r.get_header("x-first") or "none")
        r.add_header("X-Multi", "a")
        r.add_header("X-Multi", "b")
        r.set_header("X-Replaced", "old")
        r.set_header("X-Replaced", "new")
        r.remove_header("Content-Type")
        r.set_header("X-Type-After-Remove", r.get_header("content-type") or "gone")
        r.set_header("X-Number", 42)
        r.add_header("X-Late", "kept")
        r.remove_header("X-Late")
        r.add_header("X-Late", "again")
    end,
}
"""

LATE = """
-- get_body in header_filter, when no earlier phase read it: a Lua error (500).
return {
    name = "late-body",
    priority = 450,
    header_filter = function(conf, ctx) ando.request.get_body() end,
}
"""


def edited(version: int) -> str:
    return f"""
return {{
    name = "edit-probe",
    priority = 1,
    header_filter = function(conf, ctx) ando.response.set_header("X-Version", "{version}") end,
}}
"""


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("lua")
    lua_dir = tmp / "lua"
    (lua_dir / "probes").mkdir(parents=True)
    files = {"probe": PROBE, "second": SECOND, "exit": EXIT, "fail": FAIL, "edit": edited(1)}
    files["shared"] = SHARED
    files.update(body=BODY, guard=GUARD, late=LATE, head=HEAD)
    for name, src in files.items():
        (lua_dir / "probes" / f"{name}.lua").write_text(src)
    config = {
        "ando": {
            "lua": {
                "paths": [str(lua_dir)],
                "plugins": [
                    "examples.hello_world",
                    "examples.custom_auth",
                    "probes.probe",
                    "probes.second",
                    "probes.exit",
                    "probes.fail",
                    "probes.edit",
                    "probes.shared",
                    "probes.body",
                    "probes.guard",
                    "probes.late",
                    "probes.head",
                ],
                "max_memory": 64,
            }
        },
        "routes": [
            {
                "id": "hello",
                "uri": "/hello",
                "upstream": up,
                "plugins": {"hello-world": {"headers": {"X-Hello": "world", "X-Two": "2"}}},
            },
            {
                "id": "auth",
                "uri": "/auth/*",
                "upstream": up,
                "plugins": {"custom-auth": {"tokens": ["s3cret", "other"]}, "hello-world": {}},
            },
            {
                "id": "probe",
                "uri": "/probe*",
                "upstream": up,
                "plugins": {"pdk-probe": {"tag": "tagged"}, "pdk-second": {}},
            },
            {"id": "probe-rw", "uri": "/rewritten", "upstream": up},
            {"id": "exit", "uri": "/exit", "upstream": up, "plugins": {"exit-probe": {}}},
            {"id": "fail", "uri": "/fail", "upstream": up, "plugins": {"fail-probe": {}}},
            {"id": "edit", "uri": "/edit", "upstream": up, "plugins": {"edit-probe": {}}},
            {"id": "shared", "uri": "/shared", "upstream": up, "plugins": {"shared-probe": {}}},
            {"id": "body", "uri": "/chunked", "upstream": up, "plugins": {"body-probe": {}}},
            {"id": "body-cl", "uri": "/body-cl", "upstream": up, "plugins": {"body-probe": {}}},
            {"id": "guard", "uri": "/guarded", "upstream": up, "plugins": {"body-guard": {}}},
            {"id": "late", "uri": "/late", "upstream": up, "plugins": {"late-body": {}}},
            {"id": "head", "uri": "/head-probe", "upstream": up, "plugins": {"head-probe": {}}},
        ],
    }
    with GatewayProcess(config, tmp, workers=2) as g:  # each worker has its own Lua state
        yield g


# --- the examples -------------------------------------------------------------------------


def test_hello_world_adds_configured_headers(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/hello")
    assert r.status == 200
    assert r.header("X-Hello") == "world"
    assert r.header("X-Two") == "2"


def test_hello_world_default_conf(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/auth/x", headers={"x-token": "s3cret"})
    assert r.header("X-Hello") == "world"  # the schema's default


def test_custom_auth(gw: GatewayProcess) -> None:
    ok = request(gw.port, "GET", "/auth/x", headers={"x-token": "other"})
    assert ok.status == 200
    assert ok.json()["path"] == "/auth/x"
    missing = request(gw.port, "GET", "/auth/x")
    assert missing.status == 401
    assert missing.json() == {"message": "Missing token"}
    assert missing.header("content-type") == "application/json"
    assert missing.header("X-Hello") == "world"  # header_filter runs on gateway-made answers
    bad = request(gw.port, "GET", "/auth/x", headers={"x-token": "nope"})
    assert bad.status == 401
    assert bad.json() == {"message": "Invalid token"}


# --- the PDK --------------------------------------------------------------------------------


def test_pdk_request_functions(gw: GatewayProcess) -> None:
    r = request(
        gw.port,
        "POST",
        "/probe/x?a=1&b=two",
        headers=[("x-in", "hello"), ("x-multi", "m1"), ("x-multi", "m2"), ("x-remove-me", "1")],
        body=b"",
    )
    assert r.status == 200, r.body
    h = echoed_headers(r)
    assert h["x-method"] == ["POST"]
    assert h["x-uri"] == ["/probe/x?a=1&b=two"]
    assert h["x-path"] == ["/probe/x"]
    assert h["x-query"] == ["a=1&b=two"]
    assert h["x-arg"] == ["1"]
    assert h["x-in"] == ["hello"]
    assert h["x-in-underscore"] == ["hello"]  # `_` for `-`, as core.request.header finds it
    assert h["x-multi"] == ["m1,m2"] or h["x-multi"][-1] == "m1,m2"
    assert h["x-remote"] == ["127.0.0.1"]
    assert h["x-host"] == ["127.0.0.1"]
    assert h["x-scheme"] == ["http"]
    assert h["x-var-uri"] == ["/probe/x"]
    assert h["x-ctx-var"] == ["POST"]
    assert h["x-tag"] == ["tagged"]
    assert h["x-added"] == ["1", "2"]
    assert "x-remove-me" not in h
    assert json.loads(h["x-json"][0]) == {"list": [1, 2], "ok": True}
    assert h["x-decoded"] == ["20"]


def test_pdk_ctx_shared_by_phases_and_plugins(gw: GatewayProcess) -> None:
    h = echoed_headers(request(gw.port, "GET", "/probe"))
    assert h["x-ctx"] == ["from-rewrite"]
    assert h["x-same"] == ["true"]
    assert h["x-second-sees"] == ["from-rewrite"]
    # a new request gets a new ctx: nothing leaks from the previous one
    assert request(gw.port, "GET", "/probe").status == 200


def test_pdk_set_uri_and_arg(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/probe?setarg=1")
    body = r.json()
    assert body["path"] == "/rewritten"
    assert "added=yes" in body["url"]


def test_pdk_response_functions(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/probe?status=203")
    assert r.status == 203
    assert r.header("X-Old-Status") == "200"
    assert r.header("X-Up-Type") == "application/json"
    assert r.header("X-Up-Type-Underscore") == "application/json"  # as ngx.header.content_type
    assert r.header("X-Early") == "set-in-access"
    assert [v for k, v in r.headers if k.lower() == "x-resp"] == ["a", "b"]


def test_header_filter_changes_apply_in_order_and_reads_see_them(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/head-probe")
    assert r.status == 200
    assert r.header("X-First") == "1"
    assert r.header("X-Seen-First") == "1"  # a read after a write sees it
    assert [v for k, v in r.headers if k.lower() == "x-multi"] == ["a", "b"]
    assert [v for k, v in r.headers if k.lower() == "x-replaced"] == ["new"]
    assert r.header("Content-Type") is None
    assert r.header("X-Type-After-Remove") == "gone"
    assert r.header("X-Number") == "42"
    assert [v for k, v in r.headers if k.lower() == "x-late"] == ["again"]
    assert r.json()["path"] == "/head-probe"  # the body is the upstream's, untouched


def test_header_filter_set_header_with_a_value_per_request(gw: GatewayProcess) -> None:
    """pdk.lua keeps the headers a plugin sets, checked once, up to 1,024 (name, value) pairs,
    then starts again: 1,100 different values on one connection (one worker) each reach their
    own response, and a set of a header the upstream sent replaces it in any spelling."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for i in range(1100):
            conn.request("GET", f"/head-probe?mode=echo&v=value-{i}")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            assert resp.getheader("X-Echo") == f"value-{i}"
            assert resp.getheader("X-Echo-Seen") == f"value-{i}"
            assert [v for k, v in resp.getheaders() if k.lower() == "content-type"] == [
                "text/x-probe"
            ]
    finally:
        conn.close()


def test_exit_in_header_filter_changes_nothing_but_what_was_set_stands(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/head-probe?mode=exit")
    assert r.status == 200
    assert r.header("X-Before-Exit") == "1"
    assert r.json()["path"] == "/head-probe"


def test_header_filter_value_that_would_split_the_response_fails_the_request(
    gw: GatewayProcess,
) -> None:
    ev = failed_request_event(gw, "/head-probe?mode=split", "header value with CR, LF or NUL")
    assert ev["plugin"] == "head-probe"
    assert "head.lua:" in ev["traceback"]  # refused at the plugin's own line


def test_header_names_that_would_split_a_head_fail_the_request(gw: GatewayProcess) -> None:
    """A header name with CR or LF, set in header_filter or sent with an answer, would end its
    line early (an injected header): the request fails with a 500 instead. (A request header
    with one: test_failures_are_500_and_logged's `smuggle`.)"""
    ev = failed_request_event(gw, "/head-probe?mode=split-name", "invalid header name")
    assert ev["plugin"] == "head-probe"
    ev = failed_request_event(gw, "/fail?mode=split-answer", "invalid header name")
    assert ev["route_id"] == "fail"
    # and an answer with a 1xx status would announce another response
    ev = failed_request_event(gw, "/fail?mode=interim", "answered with status 101")
    assert ev["plugin"] == "fail-probe"
    assert request(gw.port, "GET", "/fail?mode=none").status == 200


@pytest.mark.parametrize("status", ["100", "101", "99", "1000"])
def test_header_filter_cannot_turn_a_response_into_an_interim_or_invalid_one(
    gw: GatewayProcess, status: str
) -> None:
    """set_status(101) would tell the client the connection switched protocols (and 100, that
    the response is still to come): what followed would be read wrongly. A 500 instead."""
    ev = failed_request_event(gw, f"/probe?status={status}", "is not a final HTTP status")
    assert ev["plugin"] == "pdk-probe" and ev["phase"] == "header_filter"
    assert request(gw.port, "GET", "/probe?status=599").status == 599  # the range's end


def test_pdk_log(gw: GatewayProcess) -> None:
    request(gw.port, "GET", "/probe/logged")
    found = gw.wait_events("lua_log", lambda e: e.get("message") == "probe saw /probe/logged")
    assert found and found[0]["level"] == "warn"
    assert found[0]["plugin"] == "pdk-probe"
    assert found[0]["route_id"] == "probe"
    assert gw.wait_events("lua_log", lambda e: e.get("message") == "logged 200")


def test_response_exit(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/exit")
    assert r.status == 418
    assert r.json() == {"message": "teapot", "list": [1, 2]}
    assert r.header("X-Exit") == "1"
    text = request(gw.port, "GET", "/exit?text=1")
    assert text.status == 429
    assert text.body == b"slow down"
    assert text.header("X-Why") == "text"
    swallowed = request(gw.port, "GET", "/exit?pcall=1")
    assert swallowed.status == 403
    assert swallowed.body == b"denied"


# --- failures are contained -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("error", "boom from lua"),
        ("loop", "instruction budget exceeded"),
        ("swallow", "instruction budget exceeded"),
        ("exec", "attempt to call field 'execute' (a nil value)"),
        ("io", "attempt to index global 'io' (a nil value)"),
        ("ffi", "module 'ffi' not found"),
        ("bytecode", "attempt to call field 'dump' (a nil value)"),
        ("smuggle", "invalid header name: 'X-A\\r\\nX-Smuggled'"),
    ],
)
def test_failures_are_500_and_logged(gw: GatewayProcess, mode: str, expect: str) -> None:
    ev = failed_request_event(gw, f"/fail?mode={mode}", expect)
    assert ev["plugin"] == "fail-probe"
    assert ev["phase"] == "access"  # the plugin's phase, not the pipeline's stage
    assert ev["route_id"] == "fail"
    assert "fail.lua:" in ev["traceback"]  # the Lua traceback names the file and line
    # the worker keeps serving, Lua plugins included
    assert request(gw.port, "GET", "/fail?mode=none").status == 200
    assert request(gw.port, "GET", "/hello").header("X-Hello") == "world"
    assert not Path("/tmp/ando-lua-pwned").exists()


def test_lua_memory_past_the_limit_fails_the_request_not_the_worker(gw: GatewayProcess) -> None:
    """1 MB strings kept in a loop reach ando.lua.max_memory (64 MiB here) long before the
    instruction budget: each such request fails with a 500, and the Lua plugins of the next
    requests run as before (the failed call's garbage is collected at once)."""
    for _ in range(3):
        ev = failed_request_event(gw, "/fail?mode=memory", "not enough memory")
        assert ev["plugin"] == "fail-probe"
        assert "ando.lua.max_memory" in ev["error"]
        for _ in range(4):  # both workers
            assert request(gw.port, "GET", "/hello").header("X-Hello") == "world"
            assert request(gw.port, "GET", "/fail?mode=none").status == 200
    # On one connection (one worker): right after the failure, a call that needs 4 MB gets
    # them (the failed call's garbage was collected at once, not left to fill the state).
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        for mode, status in (("memory", 500), ("alloc", 200), ("memory", 500), ("alloc", 200)):
            conn.request("GET", f"/fail?mode={mode}")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, mode
    finally:
        conn.close()
    assert not gw.events("worker_exited") and not gw.events("worker_crashed")


def test_changed_lua_file_reloads_on_sighup(gw: GatewayProcess) -> None:
    assert request(gw.port, "GET", "/edit").header("X-Version") == "1"
    (gw.tmp_path / "lua" / "probes" / "edit.lua").write_text(edited(2))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while request(gw.port, "GET", "/edit").header("X-Version") != "2":
        assert time.monotonic() < deadline, gw.stderr()[-2000:]
        time.sleep(0.05)


# --- ando.time and ando.shared ----------------------------------------------------------------


def test_pdk_time(gw: GatewayProcess) -> None:
    before = time.time()
    body = request(gw.port, "GET", "/shared?op=time").json()
    after = time.time()
    assert before - 0.01 <= body["now"] <= after + 0.01
    assert isinstance(body["now"], float)  # sub-second precision, unlike os.time()
    assert abs(body["os"] - body["now"]) < 2
    assert body["m1"] >= body["m0"] > 0


def test_pdk_shared_counter_is_node_wide(gw: GatewayProcess) -> None:
    # 2 workers, each with its own Lua state: the counter is the node's, not the worker's
    seen = []
    for _ in range(40):
        r = request(gw.port, "GET", "/shared?op=incr&key=hits")
        assert r.status == 200, r.body
        seen.append(r.json())
    assert [b["node"] for b in seen] == list(range(1, 41))
    # some request was answered by a worker that had not counted every earlier one itself
    assert any(b["worker"] < b["node"] for b in seen), seen


def test_pdk_shared_get_set_delete_ttl(gw: GatewayProcess) -> None:
    def op(query: str) -> Any:
        r = request(gw.port, "GET", f"/shared?{query}")
        assert r.status == 200, r.body
        return r.json()

    assert op("op=get&key=missing") == {"value": "none"}
    op("op=set&key=s&v=2.5")
    assert op("op=get&key=s") == {"value": 2.5}
    assert op("op=incr-ttl&key=s&delta=-1") == {"value": 1.5}
    op("op=delete&key=s")
    assert op("op=get&key=s") == {"value": "none"}
    op("op=set&key=t&v=7&ttl=0.3")
    assert op("op=get&key=t") == {"value": 7}
    assert op("op=incr-ttl&key=w&delta=3&ttl=0.3") == {"value": 3}
    assert op("op=incr-ttl&key=w&delta=3") == {"value": 6}  # the window keeps its expiry
    time.sleep(0.4)
    assert op("op=get&key=t") == {"value": "none"}
    assert op("op=get&key=w") == {"value": "none"}


@pytest.mark.parametrize(
    ("mode", "expect"),
    [
        ("bad-value", "ando.shared.set: the value must be a number"),
        ("bad-incr", "ando.shared.incr: the delta must be a number"),
    ],
)
def test_pdk_shared_numbers_only(gw: GatewayProcess, mode: str, expect: str) -> None:
    r = request(gw.port, "GET", f"/shared?op={mode}")
    assert r.status == 500
    found = gw.wait_events("plugin_error", lambda e: expect in e.get("traceback", ""))
    assert found, gw.stderr()[-3000:]
    assert "shared.lua:" in found[-1]["traceback"]  # reported at the plugin's own line


# --- body_filter and the request body ----------------------------------------------------


def test_the_gateway_frames_a_filtered_response_itself(gw: GatewayProcess) -> None:
    """The framing is the gateway's: a body_filter changes the body, so the upstream's
    Content-Length must not go out with it (and never next to Transfer-Encoding); a header_filter
    that sets a wrong Content-Length must not cut the body short, leaving the rest to be read as
    the next response on the connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        upper = request(gw.port, "GET", "/body-cl?mode=upper", conn=conn)
        assert upper.status == 200
        names = [k.lower() for k, _ in upper.headers]
        assert "content-length" not in names and "transfer-encoding" in names
        assert json.loads(upper.body.lower())["path"] == "/body-cl"  # the whole body, upper-cased
        lied = request(gw.port, "GET", "/head-probe?mode=length", conn=conn)
        assert lied.status == 200 and lied.json()["path"] == "/head-probe"  # not cut at 5 bytes
        length = [v for k, v in lied.headers if k.lower() == "content-length"]
        assert length in ([], [str(len(lied.body))])
        again = request(gw.port, "GET", "/head-probe", conn=conn)  # the same connection
        assert again.status == 200 and again.json()["path"] == "/head-probe"
    finally:
        conn.close()


def test_body_filter_rewrites_chunks(gw: GatewayProcess) -> None:
    plain = request(gw.port, "GET", "/chunked?n=3&size=5")
    assert plain.status == 200 and plain.body == b"aaaaabbbbbccccc"  # untouched
    upper = request(gw.port, "GET", "/chunked?n=3&size=5&mode=upper")
    assert upper.status == 200 and upper.body == b"AAAAABBBBBCCCCC"
    count = request(gw.port, "GET", "/chunked?n=3&size=5&mode=count")
    body, seen, calls = count.body.split(b"|")
    assert body.startswith(b"aaaaa") and body.endswith(b"ccccc") and seen == b"15"
    assert int(calls) >= 2  # chunks, then the last call (eof)


def test_body_filter_sees_the_status_without_a_header_filter(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/chunked?n=2&size=3&mode=status")
    assert r.status == 200
    assert r.body == b"aaabbb|status=200"


@pytest.mark.parametrize("touch", ["", "&touch=1"])
def test_body_filter_is_binary_safe(gw: GatewayProcess, touch: str) -> None:
    r = request(gw.port, "GET", "/chunked?mode=binary" + touch)
    assert r.status == 200, r.body
    assert r.body == b"\xff\xfe\x00ok\x80\xc0"
    assert r.header("content-type") == "application/octet-stream"


def test_request_body_guard(gw: GatewayProcess) -> None:
    doc = {"name": "alice", "pad": "x" * 200_000}
    good = json.dumps(doc).encode()
    r = request(gw.port, "POST", "/guarded", body=good)
    assert r.status == 200, r.body
    echoed = r.json()
    assert echoed["body_len"] == len(good)
    assert echoed["body_sha256"] == hashlib.sha256(good).hexdigest()
    h = echoed_headers(r)
    assert h["x-field"] == ["alice"] and h["x-again"] == ["true"]
    assert r.header("X-Len-Seen") == f"{len(good)}/{len(good)}"
    for bad in (b'{"other": 1}', b"not json", b"[1, 2]", b""):
        r = request(gw.port, "POST", "/guarded", body=bad)
        assert r.status == 400, bad
        assert r.json() == {"message": "missing name"}
        assert r.header("X-Len-Seen") == f"{len(bad)}/0"
    r = request(gw.port, "GET", "/guarded")
    assert r.status == 400


def test_a_failure_after_waiting_for_the_body_names_its_phase(gw: GatewayProcess) -> None:
    r = request(gw.port, "POST", "/guarded", body=b"boom")
    assert r.status == 500
    found = gw.wait_events("plugin_error", lambda e: "guard failed after" in e.get("error", ""))
    assert found, gw.stderr()[-3000:]
    assert found[-1]["plugin"] == "body-guard"
    assert found[-1]["phase"] == "access"  # not the pipeline's stage (after_consumer)


def test_request_body_not_available_after_the_request_went(gw: GatewayProcess) -> None:
    r = request(gw.port, "POST", "/late", body=b"{}")
    assert r.status == 500
    found = gw.wait_events("plugin_error", lambda e: e.get("plugin") == "late-body")
    assert found and "the body is read in rewrite, access or before_proxy" in found[-1]["error"]
