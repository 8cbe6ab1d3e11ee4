"""APISIX's serverless-pre-function and serverless-post-function: Lua functions given inline in a
plugin's configuration, run in one phase of the request.

    plugins:
      serverless-pre-function:
        phase: rewrite      # rewrite | access | before_proxy | header_filter | body_filter | log
        functions:
          - "return function(conf, ctx) ando.request.set_header('X-Pre', '1') end"

Each string is Lua source that returns a `function(conf, ctx)`. They are compiled once per
configuration in the Lua sandbox of `ando.lua` (ando/lua/runtime.py: same instruction budget,
same PDK, same per-request `ctx` table as Lua plugins) and called in order; one that returns
`status, body[, headers]` (or calls `ando.response.exit`) ends the request, as in APISIX. A
source that does not compile, fails while loading or returns no function is a validate-time
diagnostic at `functions[i]`; an error while serving fails that request with a 500 (raised here,
the pipeline answers and logs it with the Lua traceback).

These are built-ins implemented on the Lua runtime: they are registered with the Python
built-ins (ando/config/plugins.py, ando/proxy/compiled.py) rather than in ando/plugins, which
never imports ando/lua. Lupa itself is only imported once a configuration uses one of them.

The configured phase picks the class: the plugin's class hands out an instance of a subclass that
defines that one phase, so the chain (which binds the phases a class overrides) runs nothing in
the other phases. In `body_filter` the functions see the chunk through
`ando.response.get_body_chunk()` and replace it with `ando.response.set_body()`, in order: each
sees what the previous one set. A function that waits for the request body
(`ando.request.get_body()`) makes the phase asynchronous for that request only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ando.lua.pdk import CURRENT, lua_ctx
from ando.lua.runtime import text
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext, ResponseHead

if TYPE_CHECKING:
    from ando.lua.runtime import LuaState

# The phases a serverless function may run in (APISIX's).
SERVERLESS_PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")


def _chunkname(plugin: str, index: int) -> str:
    """How Lua names a function's source in messages: `serverless-pre-function.functions[0]:3:`."""
    return f"={plugin}.functions[{index}]"


class ServerlessFunction(Plugin):
    """The common part of serverless-pre-function and serverless-post-function."""

    by_phase: ClassVar[dict[str, type[ServerlessFunction]]] = {}

    def __new__(cls, conf: dict[str, Any], build: BuildContext) -> ServerlessFunction:
        sub = cls.by_phase.get(conf.get("phase", "access"), cls)
        return super().__new__(sub)

    @classmethod
    def check_conf(
        cls, conf: dict[str, Any], on_consumer: bool
    ) -> list[tuple[tuple[Any, ...], str]]:
        """Each function must compile, load and return a function (as APISIX's check_schema).
        Checked in the default sandbox: `ando.lua.paths` and `unsafe` are node settings that a
        plugin's check does not see, so a function's outer chunk should only define it."""
        from ando.lua.runtime import state

        st = state()
        problems: list[tuple[tuple[Any, ...], str]] = []
        for i, source in enumerate(conf.get("functions", ())):
            ok, value = st.compile_function((), False, source, _chunkname(cls.name, i))
            if not ok:
                problems.append((("functions", i), value))
        return problems

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        from ando.lua.plugin import lua_paths
        from ando.lua.runtime import MAX_MEMORY_MIB, state

        st: LuaState = state()
        self._state = st
        lua = build.snapshot.node.lua
        st.limit_memory(lua.get("max_memory", MAX_MEMORY_MIB))
        paths = lua_paths(lua, build.snapshot.file)
        unsafe = bool(lua.get("unsafe", False))
        lconf = st.to_lua(conf)  # once per configuration
        bound = []
        self._error: str | None = None
        for i, source in enumerate(conf.get("functions", ())):
            ok, value = st.compile_function(paths, unsafe, source, _chunkname(self.name, i))
            if not ok:
                # validated in the default sandbox, failing in the node's: each request fails
                self._error = f"functions[{i}]: {value}"
                break
            bound.append(st.bind(value, lconf))
        self._bound = tuple(bound)
        self._log = build.log
        CURRENT.shared = build.shared  # ando.shared: the worker's node-wide dict

    def _run(
        self, ctx: RequestContext, head: ResponseHead | None, wait: bool = False, start: int = 0
    ) -> Any:
        """Call the functions from `start` on: None, a Response, or (in a request phase, when one
        waits for the request body) an awaitable of either."""
        from ando.lua.plugin import LuaPluginError

        if self._error is not None:
            raise LuaPluginError(f"{self.name}: {self._error}")
        lctx = lua_ctx(ctx, self._state.new_ctx)
        CURRENT.enter(ctx, head, self._log, self.name, wait)
        result: Any = None
        i = start
        try:
            for i in range(start, len(self._bound)):
                result = self._bound[i](lctx)
                if result.__class__ is tuple and result[0] != 0:
                    break
        finally:
            CURRENT.leave()
        return self._outcome(ctx, result, i, wait)

    def _outcome(self, ctx: RequestContext, result: Any, i: int, request: bool) -> Any:
        """What the call of function i ends with: in a request phase (`request`), a status
        returned answers the request; in the filters and log, it is ignored as in APISIX."""
        from ando.lua.plugin import LuaPluginError, answer

        if result.__class__ is tuple:
            kind = result[0]
            if kind == 2:
                raise LuaPluginError(f"{self.name}: {text(result[1])}")
            if kind == 1 and request:
                return answer(self._state, self.name, *result[1:])
            if kind == 3:
                return self._after_body(ctx, result[1], i)
        return None

    async def _after_body(self, ctx: RequestContext, co: Any, i: int) -> Response | None:
        """Function i waits for the request body: read it, resume it, then run the rest."""

        lctx = ctx.lua_ctx
        while True:
            body = await ctx.read_body()
            CURRENT.enter(ctx, None, self._log, self.name, True)
            try:
                result = self._state.resume(co, lctx, body)
            finally:
                CURRENT.leave()
            if result.__class__ is tuple and result[0] == 3:
                co = result[1]
                continue
            if result.__class__ is tuple and result[0] != 0:
                return self._outcome(ctx, result, i, True)
            if i + 1 >= len(self._bound):
                return None
            # the body is read now: the rest runs synchronously
            return self._run(ctx, None, True, i + 1)


def _request_phase(self: ServerlessFunction, ctx: RequestContext) -> Any:
    return self._run(ctx, None, True)


def _header_filter(self: ServerlessFunction, ctx: RequestContext, head: ResponseHead) -> None:
    self._run(ctx, head)


def _body_filter(self: ServerlessFunction, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
    cur = CURRENT
    cur.chunk, cur.eof = chunk, eof
    try:
        self._run(ctx, None)
        return cur.chunk
    finally:
        cur.chunk = None
        cur.eof = False


def _log(self: ServerlessFunction, ctx: RequestContext) -> None:
    self._run(ctx, None)


def _phase_classes(base: type[ServerlessFunction]) -> dict[str, type[ServerlessFunction]]:
    out: dict[str, type[ServerlessFunction]] = {}
    for phase in SERVERLESS_PHASES:
        fn = {"header_filter": _header_filter, "body_filter": _body_filter, "log": _log}.get(
            phase, _request_phase
        )
        out[phase] = type(
            f"{base.__name__}_{phase}",
            (base,),
            {phase: fn, "__doc__": f"{base.name} running its functions in {phase}."},
        )
    return out


class ServerlessPreFunction(ServerlessFunction):
    """APISIX's serverless-pre-function: runs first in its phase."""

    name = "serverless-pre-function"
    priority = 10000


class ServerlessPostFunction(ServerlessFunction):
    """APISIX's serverless-post-function: runs last in its phase."""

    name = "serverless-post-function"
    priority = -2000


ServerlessPreFunction.by_phase = _phase_classes(ServerlessPreFunction)
ServerlessPostFunction.by_phase = _phase_classes(ServerlessPostFunction)

PLUGINS: tuple[type[Plugin], ...] = (ServerlessPreFunction, ServerlessPostFunction)


def serverless_plugins() -> dict[str, type[Plugin]]:
    """name -> class, for the catalog and the enabled set."""
    return {cls.name: cls for cls in PLUGINS}
