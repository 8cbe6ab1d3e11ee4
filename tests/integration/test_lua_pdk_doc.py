"""docs/lua-pdk.md against a running gateway: each Lua and YAML example of the document, taken
from the document itself (so an edit that breaks one fails here), and what the document promises
about values a plugin author hands the PDK (nil, booleans, tables) and reads from it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ando.config.yamlload import load_yaml
from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import echoed_headers

DOC = Path(__file__).resolve().parents[2] / "docs" / "lua-pdk.md"


def doc_blocks(lang: str) -> list[str]:
    """The document's fenced `lang` blocks, in order, without their indentation."""
    text = DOC.read_text()
    out = []
    for m in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", text, re.S | re.M):
        if m.group(2) == lang:
            indent = len(m.group(1))
            out.append("".join(line[indent:] + "\n" for line in m.group(3).splitlines()))
    return out


def lua_example(first_line: str) -> str:
    """The Lua block of the document that starts with `first_line`."""
    found = [b for b in doc_blocks("lua") if b.startswith(first_line)]
    assert len(found) == 1, f"no single Lua example starting with {first_line!r} in {DOC}"
    return found[0]


def yaml_example(containing: str) -> Any:
    found = [b for b in doc_blocks("yaml") if containing in b]
    assert len(found) == 1, f"no single YAML example containing {containing!r} in {DOC}"
    doc, problems = load_yaml(found[0], str(DOC))
    assert not problems, problems
    return doc.data


def module(name: str, phases: str, priority: int = 500) -> str:
    """A plugin module around the document's phase functions (`access = function ... end,`)."""
    return f'return {{\n    name = "{name}",\n    priority = {priority},\n{phases}}}\n'


def statements(name: str, body: str) -> str:
    """A plugin module running the document's statements in `access`."""
    return module(name, f"access = function(conf, ctx)\n{body}\nend,\n")


# The examples, as the document has them.
EXAMPLES = {
    # the module of "A plugin module", under another name than the shipped custom-auth
    "doc_module": lua_example("return {\n    name = ").replace(
        'name = "custom-auth"', 'name = "doc-module"', 1
    ),
    "doc_request": module("doc-request", lua_example("rewrite = function(conf, ctx)\n    local r")),
    "doc_get_body": module("doc-get-body", lua_example('-- refuse a JSON body without "name"')),
    "doc_response": module("doc-response", lua_example("access = function(conf, ctx)\n    if not")),
    "doc_upper": module("doc-upper", lua_example("-- upper-case the whole body")),
    "doc_whole": module(
        "doc-whole", lua_example("body_filter = function(conf, ctx)\n    ctx.parts")
    ),
    "doc_ctx": module("doc-ctx", lua_example("rewrite = function(conf, ctx) ando.ctx.started")),
    "doc_var": module("doc-var", lua_example('access = function(conf, ctx)\n    if ando.var("arg')),
    "doc_log": statements("doc-log", lua_example('ando.log.warn("rejected"')),
    "doc_json": statements("doc-json", lua_example("local body = ando.json.decode(")),
    "doc_time": module("doc-time", lua_example("rewrite = function(conf, ctx) ctx.t0")),
    "doc_shared": module("doc-shared", lua_example("access = function(conf, ctx)\n    -- at most")),
}

# A plugin whose phases run the Lua code a request header carries (x-access, x-header-filter):
# one gateway answers every question about a PDK function.
EVAL = """
local function run(code, conf, ctx)
    return assert(load("local conf, ctx = ...\\n" .. code, "=probe"))(conf, ctx)
end
return {
    name = "eval-probe",
    priority = 500,
    access = function(conf, ctx)
        local code = ando.request.get_header("x-access")
        if code then return run(code, conf, ctx) end
    end,
    header_filter = function(conf, ctx)
        local code = ando.request.get_header("x-header-filter")
        if code then return run(code, conf, ctx) end
    end,
}
"""


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("lua-doc")
    lua_dir = tmp / "lua" / "doc"
    lua_dir.mkdir(parents=True)
    for name, src in {**EXAMPLES, "eval": EVAL}.items():
        (lua_dir / f"{name}.lua").write_text(src)
    serverless = yaml_example("serverless-pre-function:")["routes"][0]
    serverless.update(id="serverless", uri="/api/*", upstream=up)
    upper = yaml_example("serverless-post-function:\n  phase: body_filter")

    def rt(rid: str, uri: str, plugins: dict[str, Any]) -> dict[str, Any]:
        return {"id": rid, "uri": uri, "upstream": up, "plugins": plugins}

    config = {
        "ando": {
            "lua": {
                "paths": [str(tmp / "lua")],
                "plugins": [f"doc.{name}" for name in EXAMPLES] + ["doc.eval"],
            }
        },
        "routes": [
            rt("module", "/module", {"doc-module": {"tokens": ["s3cret"]}}),
            rt("request", "/req/*", {"doc-request": {}}),
            rt("get-body", "/get-body", {"doc-get-body": {}}),
            rt("response", "/status/*", {"doc-response": {}}),
            rt("upper", "/upper", {"doc-upper": {}}),
            rt("whole", "/whole", {"doc-whole": {}}),
            rt("ctx", "/ctx", {"doc-ctx": {}}),
            rt("var", "/var", {"doc-var": {"token": "t0k"}}),
            rt("log", "/log", {"doc-log": {}}),
            rt("json", "/json", {"doc-json": {}}),
            rt("time", "/time", {"doc-time": {}}),
            rt("shared", "/shared", {"doc-shared": {}}),
            serverless,
            rt("serverless-upper", "/sl-upper", upper),
            rt("eval", "/eval", {"eval-probe": {}}),
        ],
    }
    with GatewayProcess(config, tmp, workers=2) as g:
        yield g


def upstream_saw(r: Any) -> dict[str, Any]:
    assert r.status == 200, (r.status, r.body)
    return r.json()


# --- the document's examples --------------------------------------------------------------


def test_doc_module_example(gw: GatewayProcess) -> None:
    assert request(gw.port, "GET", "/module", headers={"x-token": "s3cret"}).status == 200
    bad = request(gw.port, "GET", "/module", headers={"x-token": "nope"})
    assert (bad.status, bad.json()) == (401, {"message": "Invalid token"})


def test_doc_request_example(gw: GatewayProcess) -> None:
    r = request(
        gw.port,
        "POST",
        "/req/p?debug=1",
        headers={"X-Tenant": "acme", "X-Internal": "secret"},
        body=b"",
    )
    seen = upstream_saw(r)
    h = echoed_headers(r)
    assert seen["path"] == "/acme/req/p"
    assert seen["query"] == "debug=1&via=ando"
    assert h["x-debug-from"] == ["127.0.0.1"]
    assert "x-internal" not in h
    plain = upstream_saw(request(gw.port, "GET", "/req/p"))
    assert (plain["path"], plain["query"]) == ("/default/req/p", "via=ando")


def test_doc_get_body_example(gw: GatewayProcess) -> None:
    body = b'{"name": "ann", "x": 1}'
    r = request(gw.port, "POST", "/get-body", body=body)
    seen = upstream_saw(r)
    assert echoed_headers(r)["x-name"] == ["ann"]
    assert seen["body_len"] == len(body)  # the upstream receives it intact
    bad = request(gw.port, "POST", "/get-body", body=b'{"other": 1}')
    assert (bad.status, bad.json()) == (400, {"message": "missing name"})


def test_doc_response_example(gw: GatewayProcess) -> None:
    refused = request(gw.port, "GET", "/status/200")
    assert refused.status == 401
    assert refused.json() == {"message": "Missing authorization"}
    assert refused.header("WWW-Authenticate") == "Bearer"
    assert refused.header("X-Served-By") == "ando"
    assert refused.header("Server") is None
    r = request(gw.port, "GET", "/status/404", headers={"Authorization": "Bearer x"})
    assert r.status == 410
    assert r.header("X-Checked") == "1"
    assert r.header("X-Served-By") == "ando"
    assert r.header("Server") is None


def test_doc_body_filter_examples(gw: GatewayProcess) -> None:
    r = request(gw.port, "GET", "/upper", headers={"X-Word": "quiet"})
    text = r.body.decode()
    body, _, trailer = text.rpartition("\n-- ")
    assert '"X-WORD", "QUIET"' in body
    assert trailer == f"{len(body)} bytes"
    whole = request(gw.port, "GET", "/whole", headers={"X-Word": "a secret word"})
    assert b"a ****** word" in whole.body
    assert b"secret" not in whole.body


def test_doc_ctx_and_time_examples(gw: GatewayProcess) -> None:
    for path in ("/ctx", "/time"):
        assert request(gw.port, "GET", path).status == 200
    took = gw.wait_events("lua_log", lambda e: e.get("plugin") == "doc-ctx")
    assert took and re.fullmatch(r"took [0-9.e-]+", took[0]["message"]), took
    timed = gw.wait_events("lua_log", lambda e: e.get("plugin") == "doc-time")
    assert timed and re.fullmatch(r"took [0-9.e-]+ at [0-9.]+", timed[0]["message"]), timed


def test_doc_var_example(gw: GatewayProcess) -> None:
    ok = request(gw.port, "GET", "/var?token=t0k", headers={"X-Env": "prod"})
    assert ok.status == 200
    for path, env in (("/var?token=t0k", "dev"), ("/var?token=no", "prod")):
        r = request(gw.port, "GET", path, headers={"X-Env": env})
        assert (r.status, r.json()) == (403, {"message": "forbidden"})


def test_doc_log_example(gw: GatewayProcess) -> None:
    assert request(gw.port, "GET", "/log").status == 200
    found = gw.wait_events("lua_log", lambda e: e.get("plugin") == "doc-log")
    assert found, gw.stderr()[-2000:]
    e = found[0]
    assert (e["level"], e["route_id"], e["message"]) == ("warn", "log", "rejected 127.0.0.1")


def test_doc_json_example(gw: GatewayProcess) -> None:
    h = echoed_headers(request(gw.port, "GET", "/json"))
    assert h["x-user"] == ["7"]
    assert h["x-roles"] == ['["a","b"]']


def test_doc_shared_example(gw: GatewayProcess) -> None:
    statuses = [request(gw.port, "GET", "/shared").status for _ in range(101)]
    assert statuses[:100] == [200] * 100  # counted for the node: both workers
    assert statuses[100] == 429
    assert request(gw.port, "GET", "/shared").json() == {"message": "too many requests"}


def test_doc_serverless_examples(gw: GatewayProcess) -> None:
    blocked = request(gw.port, "GET", "/api/x", headers={"X-Blocked": "1"})
    assert (blocked.status, blocked.json()) == (403, {"message": "blocked"})
    assert request(gw.port, "GET", "/api/x").status == 200
    took = gw.wait_events(
        "lua_log",
        lambda e: e.get("plugin") == "serverless-post-function" and "took" in e["message"],
    )
    assert took and re.fullmatch(r"took [0-9.e-]+", took[0]["message"]), took
    # the blocked request too: its log function runs, and must not fail
    assert not [e for e in gw.events("plugin_error") if e["route_id"] == "serverless"]
    r = request(gw.port, "GET", "/sl-upper")
    assert b'"PATH": "/SL-UPPER"' in r.body


# --- what the PDK does with what a plugin hands it ------------------------------------------


def probe(gw: GatewayProcess, path: str = "/eval", headers: Any = (), **code: str) -> Any:
    """A request to the eval-probe route, running `access=` / `header_filter=` Lua code."""
    # one line (a header value): the code is line 2 of its chunk ("probe")
    items = list(headers) + [
        ("x-" + k.replace("_", "-"), v.replace("\n", " ")) for k, v in code.items()
    ]
    return request(gw.port, "GET", path, headers=items)


def sent_up(r: Any, prefix: str = "x-t") -> list[tuple[str, str]]:
    """The request headers the upstream received whose names start with `prefix`."""
    return [(k.lower(), v) for k, v in upstream_saw(r)["headers"] if k.lower().startswith(prefix)]


def test_set_uri_without_a_query_keeps_the_query(gw: GatewayProcess) -> None:
    # as ngx.req.set_uri: moving the path keeps the client's arguments
    moved = upstream_saw(probe(gw, "/eval?a=1&b=2", access='ando.request.set_uri("/moved")'))
    assert (moved["path"], moved["query"]) == ("/moved", "a=1&b=2")
    # with a query, that query replaces the client's
    both = upstream_saw(probe(gw, "/eval?a=1", access='ando.request.set_uri("/moved?c=3")'))
    assert (both["path"], both["query"]) == ("/moved", "c=3")
    # an argument set first is kept too
    code = 'ando.request.set_arg("z", "9"); ando.request.set_uri("/moved")'
    assert upstream_saw(probe(gw, "/eval?a=1", access=code))["query"] == "a=1&z=9"


def test_request_set_header_nil_removes_and_a_table_sends_each_value(gw: GatewayProcess) -> None:
    code = (
        'ando.request.set_header("X-T-Gone", nil)\n'
        'ando.request.set_header("X-T-Many", {"a", 2, true})\n'
        'ando.request.set_header("X-T-Bool", false)\n'
        'ando.request.add_header("X-T-Added", {"c", "d"})'
    )
    r = probe(gw, headers=[("X-T-Gone", "1")], access=code)
    assert sent_up(r) == [
        ("x-t-many", "a"),
        ("x-t-many", "2"),
        ("x-t-many", "true"),
        ("x-t-bool", "false"),
        ("x-t-added", "c"),
        ("x-t-added", "d"),
    ]


def test_response_set_header_nil_removes_and_a_table_sends_each_value(gw: GatewayProcess) -> None:
    code = (
        'ando.response.set_header("X-T-Type", nil)\n'
        'ando.response.set_header("Content-Type", nil)\n'
        'ando.response.set_header("X-T-Many", {"a", 1, false})\n'
        'ando.response.set_header("X-T-Bool", true)\n'
        'ando.response.add_header("X-T-Many", {"c"})'
    )
    r = probe(gw, header_filter=code)
    assert r.status == 200
    assert r.header("Content-Type") is None
    got = [(k.lower(), v) for k, v in r.headers if k.lower().startswith("x-t-")]
    assert got == [
        ("x-t-many", "a"),
        ("x-t-many", "1"),
        ("x-t-many", "false"),
        ("x-t-bool", "true"),
        ("x-t-many", "c"),
    ]
    # before header_filter: for the response whoever makes it; nil takes back what was set
    early = (
        'ando.response.set_header("X-T-A", "1"); ando.response.add_header("X-T-A", "2")\n'
        'ando.response.set_header("X-T-A", nil)\n'
        'ando.response.set_header("X-T-Many", {"a", "b"}); ando.response.set_header("X-T-B", true)'
    )
    r = probe(gw, access=early)
    got = [(k.lower(), v) for k, v in r.headers if k.lower().startswith("x-t-")]
    assert got == [("x-t-many", "a"), ("x-t-many", "b"), ("x-t-b", "true")]


@pytest.mark.parametrize(
    ("phase", "code", "expect"),
    [
        ("access", 'ando.request.add_header("X-A", nil)', "ando.request.add_header: the value"),
        (
            "header_filter",
            'ando.response.add_header("X-A", nil)',
            "ando.response.add_header: the value",
        ),
        (
            "access",
            'ando.request.set_header("X-A", print)',
            "ando.request.set_header: the value must be",
        ),
        (
            "header_filter",
            'ando.response.set_header("X-A", {{}})',
            "ando.response.set_header: a table value",
        ),
        ("header_filter", 'ando.response.set_header("X-A", {"a\\r\\nb"})', "CR, LF or NUL"),
    ],
)
def test_header_values_that_cannot_be_sent_are_lua_errors(
    gw: GatewayProcess, phase: str, code: str, expect: str
) -> None:
    r = probe(gw, **{phase: code})
    assert (r.status, r.json()) == (500, {"error_msg": "500 Internal Server Error"})
    found = gw.wait_events("plugin_error", lambda e: expect in e["traceback"])
    assert found, gw.stderr()[-3000:]
    assert "probe:2:" in found[-1]["error"]  # the plugin's line is named


def test_get_headers_looks_up_any_spelling(gw: GatewayProcess) -> None:
    code = (
        "local h = ando.request.get_headers()\n"
        "local names = {}\n"
        "for k in pairs(h) do names[#names + 1] = k end\n"
        "table.sort(names)\n"
        'return 200, {ct = h["Content-Type"], ct2 = h.content_type, multi = h.X_Multi,\n'
        '  lower = h["content-type"], none = h.nope, names = table.concat(names, ",")}'
    )
    r = probe(
        gw, headers=[("Content-Type", "text/x"), ("X-Multi", "1"), ("X-Multi", "2")], access=code
    )
    body = r.json()
    assert body["ct"] == body["ct2"] == body["lower"] == "text/x"
    assert body["multi"] == ["1", "2"]
    assert "none" not in body
    # pairs() still gives the lower-case names only
    assert body["names"] == "content-type,host,x-access,x-multi"


def test_json_decode_of_integers_beyond_64_bits(gw: GatewayProcess) -> None:
    # a Lua number is a double: a JSON integer too wide for 64 bits is one too (as cjson)
    code = (
        'local v = ando.json.decode("[12345678901234567890, -9223372036854775809, 7]")\n'
        "return 200, {a = v[1] > 1.2e19, b = v[2] < -9.2e18, c = math.type == nil and v[3]}"
    )
    r = probe(gw, access=code)
    assert (r.status, r.json()) == (200, {"a": True, "b": True, "c": 7})


def test_set_arg_takes_a_number_or_boolean_as_lua_writes_it(gw: GatewayProcess) -> None:
    code = 'ando.request.set_arg("b", true); ando.request.set_arg("n", 5); ando.request.set_arg("f", 1.5)'
    assert upstream_saw(probe(gw, "/eval?a=1", access=code))["query"] == "a=1&b=true&n=5&f=1.5"
    r = probe(gw, access='ando.request.set_arg("t", {"x"})')
    assert r.status == 500  # not "<Lua table at 0x...>" sent upstream
    found = gw.wait_events(
        "plugin_error", lambda e: "ando.request.set_arg: the value" in e["error"]
    )
    assert found, gw.stderr()[-3000:]


def test_string_dump_is_absent_through_string_methods_too(gw: GatewayProcess) -> None:
    # the sandbox has no string.dump; ("").dump reached the real one through strings' metatable
    code = 'return 200, {m = type(("").dump), s = type(string.dump), up = ("x"):upper(), n = #("abc"):rep(2)}'
    r = probe(gw, access=code)
    assert (r.status, r.json()) == (200, {"m": "nil", "s": "nil", "up": "X", "n": 6})


def test_answer_headers_take_numbers_and_booleans_as_lua_writes_them(gw: GatewayProcess) -> None:
    r = probe(gw, access='return 200, "ok", {["X-T-N"] = 5, ["X-T-B"] = true, ["X-T-S"] = "s"}')
    assert r.status == 200
    assert (r.header("X-T-N"), r.header("X-T-B"), r.header("X-T-S")) == ("5", "true", "s")
    r = probe(gw, access='ando.response.exit(200, "ok", {["X-T-F"] = {"a"}})')
    assert r.status == 500  # not "<Lua table at 0x...>" sent to the client
    found = gw.wait_events(
        "plugin_error", lambda e: "header X-T-F: the value must be" in e["error"]
    )
    assert found, gw.stderr()[-3000:]


def test_json_encode_of_boolean_keys_writes_them_as_lua_does(gw: GatewayProcess) -> None:
    r = probe(gw, access="return 200, ando.json.encode({[true] = 1, [false] = 2, [1.5] = 3})")
    assert json.loads(r.body) == {"true": 1, "false": 2, "1.5": 3}


def test_set_header_host_is_the_host_the_upstream_receives(gw: GatewayProcess) -> None:
    code = 'ando.request.set_header("Host", "foo.example"); ctx.h = ando.request.get_header("host")'
    r = probe(gw, access=code + '; ando.request.set_header("X-T-Read", ctx.h)')
    hosts = [v for k, v in upstream_saw(r)["headers"] if k.lower() == "host"]
    assert hosts == ["foo.example"]
    assert sent_up(r) == [("x-t-read", "foo.example")]
