"""Lua plugins: load the modules `ando.lua.plugins` names and adapt each into a Plugin class.

A Lua plugin module returns a table:

    return {
        name = "hello-world", priority = 1000, version = "0.1",
        schema = {type = "object", properties = {...}},        -- JSON Schema, as a Lua table
        access = function(conf, ctx) ... end,                    -- any of the six phases
    }

Each becomes a `Plugin` subclass that binds only the phases the module defines. Its
configuration is converted to a Lua table once per config (in `__init__`); the `ctx` table is
created for a request the first time a Lua plugin runs on it and shared by all of them (kept in
`RequestContext.data`). A request phase that returns `status, body[, headers]` (or calls
`ando.response.exit`) answers with that response; a Lua error raises `LuaPluginError`, which
the pipeline turns into a 500 and a `plugin_error` log line with the Lua traceback.

Each call runs in a Lua coroutine (lua/ando/runtime.lua). When `ando.request.get_body()` needs a
body not read yet, the call yields (result 3): the adapter then returns an awaitable that reads
the body and resumes the call until it finishes. Only then: the common call stays synchronous.
`body_filter(conf, ctx)` sees the chunk through `ando.response.get_body_chunk()` /
`is_last_chunk()` and replaces it with `ando.response.set_body(body)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ando.lua.pdk import CURRENT, apply_head_ops
from ando.lua.runtime import MAX_MEMORY_MIB, LuaState, state, text
from ando.plugins.base import PHASES, BuildContext, Plugin, Response
from ando.plugins.context import RequestContext, ResponseHead


class LuaPluginError(Exception):
    """Lua code failed at request time; the message carries the Lua traceback."""


class LuaPlugin(Plugin):
    """The base of every Lua plugin class (one class per Lua module and Lua state)."""

    lua_state: ClassVar[LuaState]
    lua_module: ClassVar[str] = ""
    lua_file: ClassVar[str] = ""
    lua_schema: ClassVar[dict[str, Any]] = {}
    lua_functions: ClassVar[dict[str, Any]] = {}

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        st = self.lua_state
        lconf = st.to_lua(conf)  # once per configuration
        # Phases that may wait for the request body run in a coroutine; the others directly,
        # header_filter with its header changes batched (lua/ando/runtime.lua).
        self._bound = {
            phase: (
                st.bind
                if phase in _MAY_WAIT
                else st.bind_head
                if phase == "header_filter"
                else st.bind_direct
            )(fn, lconf)
            for phase, fn in self.lua_functions.items()
        }
        self._header_fn = self._bound.get("header_filter")
        # instance attributes: read on every call, where a class attribute costs a slower lookup
        self._new_ctx = st.new_ctx
        self._name = self.name
        self._log = build.log
        CURRENT.shared = build.shared  # ando.shared: the worker's node-wide dict

    def _invoke(
        self, phase: str, ctx: RequestContext, head: ResponseHead | None, wait: bool = False
    ) -> Any:
        lctx = ctx.lua_ctx
        if lctx is None:
            lctx = ctx.lua_ctx = self._new_ctx()
        cur = CURRENT  # CURRENT.enter / leave, inlined: this is every Lua call's path
        cur.ctx, cur.head, cur.log, cur.plugin, cur.wait = ctx, head, self._log, self._name, wait
        try:
            result = self._bound[phase](lctx)
        finally:
            cur.ctx = cur.head = cur.log = None
            cur.wait = False
        if result.__class__ is tuple and result[0] == 2:
            raise LuaPluginError(f"Lua plugin {self.name} ({self.lua_file}): {text(result[1])}")
        return result

    async def _after_body(self, ctx: RequestContext, co: Any) -> Response | None:
        """Read the request body and resume the waiting call with it, until it finishes."""
        st = self.lua_state
        lctx = ctx.lua_ctx
        while True:
            body = await ctx.read_body()
            CURRENT.enter(ctx, None, self._log, self.name, True)
            try:
                result = st.resume(co, lctx, body)
            finally:
                CURRENT.leave()
            if result.__class__ is not tuple:
                return None
            kind = result[0]
            if kind == 3:
                co = result[1]
                continue
            if kind == 2:
                raise LuaPluginError(f"Lua plugin {self.name} ({self.lua_file}): {text(result[1])}")
            if kind == 1:
                return self._answer(*result[1:])
            return None

    def _answer(self, status: Any, body: Any, headers: Any = None) -> Response:
        return answer(self.lua_state, self.name, status, body, headers)


def answer(st: LuaState, name: str, status: Any, body: Any, headers: Any = None) -> Response:
    """The Response for Lua code's `return status, body[, headers]` (or ando.response.exit)."""
    # 200-599: a 1xx would announce another response (the body would be read as one)
    if not isinstance(status, int | float) or not 200 <= int(status) <= 599:
        raise LuaPluginError(f"Lua plugin {name} answered with status {status!r}")
    # a string body is sent as the Lua string's bytes; a table as JSON
    plain = body.encode("latin-1") if isinstance(body, str) else body
    if plain is not None and not isinstance(plain, bytes):
        plain = st.to_python(body)
    hdrs: dict[str, str] | None = None
    if headers is not None:
        from lupa.luajit21 import lua_type

        if lua_type(headers) != "table":
            raise LuaPluginError(f"Lua plugin {name}: headers must be a table of names")
        # header names and values as their bytes (latin-1, as the gateway's headers); a
        # boolean as Lua writes it, not Python's True
        hdrs = {}
        for k, v in headers.items():
            if v.__class__ is not str:
                if v.__class__ not in (bool, int, float):
                    raise LuaPluginError(
                        f"Lua plugin {name}: header {k}: the value must be a string, number or "
                        f"boolean, got a {lua_type(v)}"
                    )
                v = ("true" if v else "false") if v.__class__ is bool else str(v)
            hdrs[str(k)] = v
    return Response(int(status), plain, hdrs or None)


_MAY_WAIT = frozenset({"rewrite", "access", "before_proxy"})


def _request_phase(phase: str) -> Callable[[LuaPlugin, RequestContext], Any]:
    def run(self: LuaPlugin, ctx: RequestContext) -> Any:
        result = self._invoke(phase, ctx, None, True)
        if result.__class__ is tuple:
            if result[0] == 1:
                return self._answer(*result[1:])
            if result[0] == 3:  # waiting for the request body
                return self._after_body(ctx, result[1])
        return None

    run.__name__ = phase
    return run


def _header_filter(phase: str) -> Callable[[LuaPlugin, RequestContext, ResponseHead], None]:
    def header_filter(self: LuaPlugin, ctx: RequestContext, head: ResponseHead) -> None:
        # _invoke, inlined for the phase every response of the route goes through (hello_world's)
        lctx = ctx.lua_ctx
        if lctx is None:
            lctx = ctx.lua_ctx = self._new_ctx()
        cur = CURRENT  # `wait` stays False: only the request phases set it, and they reset it
        cur.ctx, cur.head, cur.log, cur.plugin = ctx, head, self._log, self._name
        try:
            result = self._header_fn(lctx)
        finally:
            cur.ctx = cur.head = cur.log = None
        if result.__class__ is tuple:  # 0 alone when nothing changed
            kind = result[0]
            if kind == 0:
                if len(result) == 2:  # one prepared set_header: hello_world's case
                    head.set_prepared(result[1])
                else:
                    apply_head_ops(head, result, 1)
            elif kind == 2:
                raise LuaPluginError(f"Lua plugin {self.name} ({self.lua_file}): {text(result[1])}")

    return header_filter


def _body_filter(phase: str) -> Callable[[LuaPlugin, RequestContext, bytes, bool], bytes]:
    def body_filter(self: LuaPlugin, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        cur = CURRENT
        cur.chunk, cur.eof = chunk, eof
        try:
            self._invoke(phase, ctx, None)
            return cur.chunk
        finally:
            cur.chunk = None
            cur.eof = False

    return body_filter


def _log_phase(phase: str) -> Callable[[LuaPlugin, RequestContext], None]:
    def log(self: LuaPlugin, ctx: RequestContext) -> None:
        self._invoke(phase, ctx, None)

    return log


_ADAPTERS: dict[str, Callable[[Any], Callable[..., Any]]] = {
    "rewrite": _request_phase,
    "access": _request_phase,
    "before_proxy": _request_phase,
    "header_filter": _header_filter,
    "body_filter": _body_filter,
    "log": _log_phase,
}

# Phases a Lua module may define: all of them.
LUA_PHASES = tuple(p for p in PHASES if p in _ADAPTERS)


def _class_from(st: LuaState, module: str, file: str, mod: Any) -> type[LuaPlugin] | str:
    """The Plugin class for a loaded module's table, or what is wrong with it."""
    from lupa.luajit21 import lua_type

    if lua_type(mod) != "table":
        return f"{file}: the module must return a table (name, priority, schema, phases)"
    name = mod["name"]
    if not isinstance(name, str) or not name:
        return f"{file}: the module's table needs `name`, a non-empty string"
    priority = mod["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        return f"{file}: plugin {name}: `priority` must be a number"
    version = mod["version"]
    raw_schema = mod["schema"]
    if raw_schema is None:
        schema: Any = {"type": "object"}
    else:
        try:
            schema = st.to_python(raw_schema)
        except TypeError as e:
            return f"{file}: plugin {name}: schema: {e}"
    if not isinstance(schema, dict):
        return f"{file}: plugin {name}: `schema` must be a table (a JSON Schema object)"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        return (
            f"{file}: plugin {name}: invalid schema{' at ' + where if where else ''}: {e.message}"
        )
    attrs: dict[str, Any] = {
        "name": name,
        "priority": int(priority),
        "version": str(version) if version is not None else "0.1",
        "lua_state": st,
        "lua_module": module,
        "lua_file": file,
        "lua_schema": schema,
        "__doc__": f"Lua plugin {name} ({file}).",
    }
    functions: dict[str, Any] = {}
    for phase in PHASES:
        fn = mod[phase]
        if fn is None:
            continue
        if not st.is_function(fn):
            return f"{file}: plugin {name}: `{phase}` must be a function"
        functions[phase] = fn
        attrs[phase] = _ADAPTERS[phase](phase)
    attrs["lua_functions"] = functions
    cls_name = "Lua_" + "".join(c if c.isalnum() else "_" for c in name)
    return type(cls_name, (LuaPlugin,), attrs)


def lua_paths(settings: Mapping[str, Any], config_file: str) -> tuple[str, ...]:
    """`ando.lua.paths`, a relative one taken from the config file's directory."""
    base = Path(config_file).resolve().parent
    return tuple(str((base / p).resolve()) for p in settings.get("paths", ()))


def load_lua_plugins(
    settings: Mapping[str, Any], config_file: str
) -> tuple[list[tuple[int, type[LuaPlugin]]], list[tuple[int, str]]]:
    """(index in ando.lua.plugins, class) in this process's Lua state, and the problems as
    (index in ando.lua.plugins, message naming the Lua file and line)."""
    modules = list(settings.get("plugins", ()))
    if not modules:
        return [], []
    st = state()
    st.limit_memory(settings.get("max_memory", MAX_MEMORY_MIB))
    paths = lua_paths(settings, config_file)
    unsafe = bool(settings.get("unsafe", False))
    classes: list[tuple[int, type[LuaPlugin]]] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for i, module in enumerate(modules):
        ok, value, file = st.load_module(paths, unsafe, module)
        if not ok:
            problems.append((i, f"cannot load Lua plugin '{module}': {value}"))
            continue
        key = ("class", module, id(value))
        cls = st.classes.get(key)
        if cls is None:
            made = _class_from(st, module, file, value)
            if isinstance(made, str):
                problems.append((i, made))
                continue
            cls = st.classes[key] = made
        if cls.name in seen:
            problems.append(
                (
                    i,
                    f"Lua plugin name '{cls.name}' is also used by "
                    f"ando.lua.plugins[{seen[cls.name]}]",
                )
            )
            continue
        seen[cls.name] = i
        classes.append((i, cls))
    return classes, problems
