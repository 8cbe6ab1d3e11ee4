"""The Lua runtime without sockets: LuaJIT, the sandbox, the instruction budget, conversions,
and Lua plugins at `ando validate` time (diagnostics with line:column and the Lua file:line)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.source import snapshot_from_text
from ando.lua.plugin import load_lua_plugins
from ando.lua.runtime import MAX_MEMORY_MIB, LuaState, state


@pytest.fixture(scope="module")
def st() -> LuaState:
    return state()


def run(st: LuaState, src: str, *, unsafe: bool = False, direct: bool = False) -> tuple[Any, ...]:
    """Load `src` (which returns a function) as plugin code and call it as a phase: in a
    coroutine (the phases that may wait) or, `direct`, as the phases that never wait are."""
    box = st.sandbox((), unsafe)
    make = st.lua.eval(
        "function(env, src) local f = assert(load(src, '=t', 't', env)); "
        "jit.off(f, true); return f() end"
    )
    fn = make(box.env, src)
    if direct:
        res = st.bind_direct(fn, st.to_lua({}))(st.new_ctx())
    else:
        res = st.call(fn, st.to_lua({}), st.new_ctx())
    res = res if isinstance(res, tuple) else (res,)
    return res + (None,) * (4 - len(res))


def test_luajit_21(st: LuaState) -> None:
    assert st.version.startswith("LuaJIT 2.1")
    assert st.lua.execute("return jit and jit.version") == st.version
    assert state() is st  # one per process


@pytest.mark.parametrize(
    "expr",
    [
        "os.execute",
        "io",
        "debug",
        "jit",
        "string.dump",
        "setfenv",
        "getfenv",
        "python",
        "package",
        "collectgarbage",
        "newproxy",
        "module",
        "dofile",
        "loadfile",
    ],
)
def test_sandbox_hides(st: LuaState, expr: str) -> None:
    assert run(st, f"return function() return {expr} == nil end") == (0, True, None, None)


def test_sandbox_keeps_the_safe_library(st: LuaState) -> None:
    src = """return function()
        return string.format("%d-%s", 3, ("x"):rep(2)) .. table.concat({1, 2}) ..
            math.floor(2.5) .. type(os.time()) .. tostring(bit.band(6, 3))
    end"""
    assert run(st, src) == (0, "3-xx122number2", None, None)


def test_no_bytecode_and_no_c_modules(st: LuaState) -> None:
    tag, msg, _, _ = run(st, "return function() return load(string.dump(print)) end")
    assert tag == 2
    src = "return function() local f, e = load('\\27LJ', 'x', 'b') return tostring(f) .. e end"
    tag, a, _, _ = run(st, src)
    assert tag == 0 and a.startswith("nil") and 'mode "t"' in a
    tag, msg, _, _ = run(st, "return function() return require('ffi') end")
    assert tag == 2 and "module 'ffi' not found" in msg
    # the string metatable cannot be reached (it would hand out the real string library)
    assert run(st, "return function() return getmetatable('') end") == (0, False, None, None)


def test_python_objects_are_opaque(st: LuaState) -> None:
    tag, msg, _, _ = run(st, "return function() return ando.request.get_method.__globals__ end")
    assert tag == 2 and "cannot access attributes" in msg


def test_unsafe_gives_the_standard_library(st: LuaState) -> None:
    assert run(st, "return function() return type(os.execute) end", unsafe=True)[1] == "function"
    assert run(st, "return function() return type(io.open) end", unsafe=True)[1] == "function"


@pytest.mark.parametrize(
    "body",
    [
        "while true do end",
        "local i = 0 repeat i = i + 1 until false",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function() end) end",
        "local co = coroutine.create(function() while true do end end) "
        "while true do coroutine.resume(co) end",
        "local function f() return f() end return f()",
    ],
)
@pytest.mark.parametrize("direct", [False, True], ids=["coroutine", "direct"])
def test_budget_stops_runaway_code(st: LuaState, body: str, direct: bool) -> None:
    started = time.monotonic()
    tag, msg, _, _ = run(st, f"return function() {body} end", direct=direct)
    assert time.monotonic() - started < 2
    assert tag == 2
    assert msg.startswith("instruction budget exceeded")
    # the state is usable afterwards
    still = run(st, "return function() return 'still' .. 'here' end", direct=direct)
    assert still == (0, "stillhere", None, None)


@pytest.mark.parametrize("direct", [False, True], ids=["coroutine", "direct"])
def test_budget_is_per_call(st: LuaState, direct: bool) -> None:
    """Each call gets the whole budget: three calls that each spend about half of it all
    finish (the budget's hook stays set between calls; only its count restarts)."""
    half = (
        "return function() local s = 0 for i = 1, 2500000 do s = s + i end "
        "return s == 3125001250000 and 'summed' or 'wrong' end"
    )
    for _ in range(3):
        assert run(st, half, direct=direct)[:2] == (0, "summed")


def test_a_direct_call_answers_fails_and_cannot_wait(st: LuaState) -> None:
    """The phases that never wait (header_filter, body_filter, log) are called without a
    coroutine: errors and exit() come back as from a coroutine call, and get_body() without a
    body read is an error rather than a yield from the main thread."""
    assert run(st, "return function() return 'x' end", direct=True) == (0, "x", None, None)
    tag, msg, _, _ = run(st, "return function() error('boom') end", direct=True)
    assert tag == 2 and "boom" in msg and "stack traceback" in msg
    tag, status, _, _ = run(st, "return function() ando.response.exit(403, 'x') end", direct=True)
    assert (tag, status) == (1, 403)
    # (Here without a request; tests/integration/test_lua_plugins.py has the one with a request.)
    tag, msg, _, _ = run(st, "return function() ando.request.get_body() end", direct=True)
    assert tag == 2 and "yield" not in msg


def test_answers_and_exit(st: LuaState) -> None:
    tag, status, body, headers = run(st, "return function() return 401, {message = 'no'} end")
    assert (tag, status, st.to_python(body), headers) == (1, 401, {"message": "no"}, None)
    tag, status, body, _ = run(st, "return function() ando.response.exit(403, 'x') end")
    assert (tag, status, body) == (1, 403, "x")


def test_conversions(st: LuaState) -> None:
    data = {"a": [1, 2, {"b": "c"}], "d": {}, "e": True, "f": 1.5}
    assert st.to_python(st.to_lua(data)) == data
    schema = st.lua.eval("{type = 'object', required = {}, properties = {}}")
    assert st.to_python(schema) == {"type": "object", "required": [], "properties": {}}


# --- at `ando validate` time ----------------------------------------------------------------


def write(tmp: Path, name: str, src: str) -> None:
    path = tmp / (name.replace(".", "/") + ".lua")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)


def config(tmp: Path, plugins: list[str], routes: str = "routes: []") -> str:
    return f"ando:\n  lua:\n    paths: [{tmp}]\n    plugins: [{', '.join(plugins)}]\n{routes}\n"


def problems(text: str) -> list[str]:
    """Each diagnostic as FILE:LINE:COL: path: message (the message in full)."""
    with pytest.raises(ConfigError) as e:
        snapshot_from_text(text, "t.yaml", environ={})
    return [d.format().split(": ", 2)[0] + ": " + d.message for d in e.value.diagnostics]


def test_conf_checked_against_the_lua_schema(tmp_path: Path) -> None:
    routes = """routes:
  - uri: /a
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins:
      custom-auth: {tokens: [], header: 5}
"""
    found = problems(config(tmp_path, ["examples.custom_auth"], routes))
    assert found == [
        "t.yaml:9:29: must have at least 1 item(s)",
        "t.yaml:9:41: expected string, got integer 5",
    ]


def test_defaults_from_the_lua_schema(tmp_path: Path) -> None:
    routes = """routes:
  - uri: /a
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins: {custom-auth: {tokens: [x]}, hello-world: {}}
"""
    snap = snapshot_from_text(
        config(tmp_path, ["examples.custom_auth", "examples.hello_world"], routes),
        "t.yaml",
        environ={},
    )
    plugins = snap.routes[0].plugins
    assert plugins["custom-auth"]["header"] == "x-token"
    assert dict(plugins["hello-world"]["headers"]) == {"X-Hello": "world"}


def test_syntax_error_names_the_lua_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.syntax", "return {\n  name = 'x',\n  priority = 1 +\n}\n")
    found = problems(config(tmp_path, ["examples.hello_world", "bad.syntax"]))
    assert len(found) == 1
    assert found[0].startswith("t.yaml:4:37: cannot load Lua plugin 'bad.syntax'")
    assert f"{tmp_path}/bad/syntax.lua:4: unexpected symbol near '}}'" in found[0]


def test_load_time_errors(tmp_path: Path) -> None:
    write(tmp_path, "m.raise", "local x = nil\nreturn x.y\n")
    write(tmp_path, "m.loop", "while true do end\n")
    write(tmp_path, "m.number", "return 5\n")
    write(tmp_path, "m.noname", "return {priority = 1}\n")
    write(tmp_path, "m.schema", "return {name = 'sc', priority = 1, schema = {type = 'obj'}}\n")
    write(tmp_path, "m.phase", "return {name = 'ph', priority = 1, access = 5}\n")
    write(tmp_path, "m.builtin", "return {name = 'key-auth', priority = 1}\n")
    names = ["m.raise", "m.loop", "m.number", "m.noname", "m.schema", "m.phase", "m.builtin"]
    found = problems(config(tmp_path, [*names, "m.missing"]))
    assert len(found) == 8
    assert f"{tmp_path}/m/raise.lua:2: attempt to index local 'x'" in found[0]
    assert "instruction budget exceeded" in found[1]
    assert "must return a table" in found[2]
    assert "needs `name`" in found[3]
    assert "invalid schema" in found[4]
    assert "`access` must be a function" in found[5]
    assert "has the name of a built-in plugin" in found[6]
    assert "Lua module 'm.missing' not found" in found[7]


def test_unknown_lua_plugin_name_in_a_route(tmp_path: Path) -> None:
    routes = """routes:
  - uri: /a
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins: {hello-wrld: {}}
"""
    found = problems(config(tmp_path, ["examples.hello_world"], routes))
    assert len(found) == 1 and "unknown plugin 'hello-wrld'" in found[0]
    assert "hello-world" in found[0]


def test_changed_file_is_loaded_again(tmp_path: Path) -> None:
    write(tmp_path, "re.mod", "return {name = 'reload-me', priority = 1}\n")
    settings = {"paths": [str(tmp_path)], "plugins": ["re.mod"]}
    first, _ = load_lua_plugins(settings, "t.yaml")
    again, _ = load_lua_plugins(settings, "t.yaml")
    assert first[0][1] is again[0][1]  # unchanged: the same class
    write(tmp_path, "re.mod", "return {name = 'reload-me', priority = 7}\n")
    changed, _ = load_lua_plugins(settings, "t.yaml")
    assert changed[0][1].priority == 7


# --- strings are bytes; calls that wait for the request body ----------------------------------


def test_lua_strings_are_bytes(st: LuaState) -> None:
    from ando.lua.runtime import text

    tag, raw, _, _ = run(st, 'return function() return "\\255\\0\\128ok" end')
    assert tag == 0 and raw.encode("latin-1") == b"\xff\x00\x80ok"  # never a decode error
    t = st.to_lua({"k": "é"})
    assert st.lua.eval("function(t) return #t.k end")(t) == 2  # UTF-8 in Lua
    assert st.to_python(t) == {"k": "é"}
    assert text("\xc3\xa9") == "é" and text("\xff") == "\ufffd"


def test_phase_function_cannot_yield(st: LuaState) -> None:
    tag, msg, _, _ = run(st, "return function() coroutine.yield(1) end")
    assert tag == 2 and "cannot yield" in msg
    # a coroutine of its own is fine
    src = (
        "return function() local co = coroutine.wrap(function() coroutine.yield('y') end) "
        "return co() end"
    )
    assert run(st, src) == (0, "y", None, None)


class _Ctx:
    def __init__(self) -> None:
        self.body: bytes | None = None


def _call_waiting(st: LuaState, src: str) -> tuple[Any, ...]:
    """Call `src` as a request phase whose body is not read yet; resume it with b"{}"."""
    from ando.lua.pdk import CURRENT

    box = st.sandbox((), False)
    make = st.lua.eval(
        "function(env, src) local f = assert(load(src, '=t', 't', env)); "
        "jit.off(f, true); return f() end"
    )
    fn = make(box.env, src)
    ctx, lctx = _Ctx(), st.new_ctx()
    CURRENT.ctx, CURRENT.wait = ctx, True  # type: ignore[assignment]
    try:
        first = st.call(fn, st.to_lua({}), lctx)
        assert first[0] == 3
        ctx.body = b"{}"
        res = st.resume(first[1], lctx, ctx.body)
    finally:
        CURRENT.ctx, CURRENT.wait = None, False
    return res if isinstance(res, tuple) else (res,)


def test_get_body_waits_and_resumes(st: LuaState) -> None:
    res = _call_waiting(st, "return function() return 'got ' .. ando.request.get_body() end")
    assert res == (0, "got {}")
    res = _call_waiting(st, "return function() ando.request.get_body() return 201, 'x' end")
    assert res[:3] == (1, 201, "x")


def test_budget_applies_after_resume(st: LuaState) -> None:
    res = _call_waiting(st, "return function() ando.request.get_body() while true do end end")
    assert res[0] == 2 and "instruction budget exceeded" in res[1]


def test_get_body_in_a_plugin_coroutine_is_an_error(st: LuaState) -> None:
    from ando.lua.pdk import CURRENT

    src = (
        "return function() local co = coroutine.wrap(function() return ando.request.get_body() "
        "end) return co() end"
    )
    CURRENT.ctx, CURRENT.wait = _Ctx(), True  # type: ignore[assignment]
    try:
        tag, msg, _, _ = run(st, src)
    finally:
        CURRENT.ctx, CURRENT.wait = None, False
    assert tag == 2 and "inside a coroutine the plugin created" in msg


def test_module_names_and_paths_beyond_latin_1_are_diagnostics_or_load(tmp_path):
    """Found by the config fuzzer: such a name crashed validation instead of being reported."""
    from ando.config.diagnostics import ConfigError
    from ando.config.source import snapshot_from_text

    with pytest.raises(ConfigError) as e:
        snapshot_from_text('ando: {lua: {plugins: ["Ā"]}}\n', "t.yaml", environ={})
    (problem,) = [d.format() for d in e.value.diagnostics]
    assert problem.startswith("t.yaml:1:24: ando.lua.plugins[0]: cannot load Lua plugin 'Ā': ")
    assert "Lua module 'Ā' not found" in problem and "/Ā.lua'" in problem  # the name, intact
    where = tmp_path / "plugins-Ā"
    where.mkdir()
    (where / "wide.lua").write_text('return {name = "wide", priority = 1, schema = {}}\n')
    text = f'ando: {{lua: {{paths: ["{where}"], plugins: ["wide"]}}}}\n'
    snap = snapshot_from_text(text, "t.yaml", environ={})
    assert snap.source_files == (str(where / "wide.lua"),)


def test_max_memory_is_at_least_16_mib_and_applies_to_the_state(tmp_path: Path) -> None:
    found = problems("ando:\n  lua:\n    max_memory: 8\nroutes: []\n")
    assert len(found) == 1 and found[0].startswith("t.yaml:3:17: ") and "16" in found[0]
    text = config(tmp_path, ["examples.hello_world"])
    text = text.replace("  lua:\n", "  lua:\n    max_memory: 32\n")
    try:
        load_lua_plugins(snapshot_from_text(text, "t.yaml", environ={}).node.lua, "t.yaml")
        # lupa reports the limit less what the state held when it was created (a few KiB)
        assert (31 << 20) < state().lua.get_max_memory() <= 32 << 20
    finally:
        state().limit_memory(MAX_MEMORY_MIB)  # the process's state, shared by later tests
