"""One LuaJIT state per worker process, its sandboxes, and conversions between Lua and Python.

LuaJIT 2.1 through `lupa.luajit21` (plain `lupa.LuaRuntime` would pick whichever Lua lupa was
built with first, not necessarily LuaJIT). The state is created lazily, once per process: the
master's (used by `ando validate`) is not reused by the workers it forks.

Lua code never touches Python objects: the runtime is built without lupa's `python` eval and
builtins, and an attribute filter refuses every attribute access on a Python object, so a PDK
function (a Python callable) can be called from Lua but not inspected. Plugin modules run in a
sandbox (lua/ando/runtime.lua): no os.execute, io, bytecode loading, C modules or debug library
unless `ando.lua.unsafe: true`; every call into plugin code runs under an instruction budget.

Lua strings are bytes, and must stay so (a response body chunk need not be UTF-8). The runtime
uses latin-1 as lupa's encoding: a Lua string reaches Python as a str of one character per byte
(never a decode error), and a str of such characters reaches Lua as those bytes. Where a string
is text, the conversions here and the PDK bindings (ando/lua/pdk.py) go through UTF-8: `text()`
for a Lua string read as text, `lua_text()` for text handed to Lua. HTTP header names and values
are latin-1 in the gateway already, so they pass unchanged, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lupa import luajit21
from lupa.luajit21 import LuaError, lua_type

REPO_LUA = Path(__file__).resolve().parents[2] / "lua"

# Lua VM instructions one call into plugin code may run (a phase function, or loading a
# module): some tens of milliseconds in LuaJIT's interpreter. Time spent in C functions
# (string.rep, table.sort) and in PDK calls is not counted.
BUDGET = 10_000_000

BUDGET_MESSAGE = "instruction budget exceeded"

# What a worker's Lua state may hold, in MiB, unless `ando.lua.max_memory` says otherwise: an
# allocation past it fails the plugin call that made it ("not enough memory", a 500) instead of
# growing the worker until the kernel kills it, requests in flight and all.
MAX_MEMORY_MIB = 256

# JSON Schema keywords whose value is an array even when a Lua table for it is empty.
_ARRAY_KEYS = frozenset({"required", "enum", "anyOf", "oneOf", "allOf", "prefixItems"})


def text(value: str) -> str:
    """A Lua string (as lupa gives it: one character per byte) as the UTF-8 text it holds."""
    if value.isascii():
        return value
    return value.encode("latin-1").decode("utf-8", "replace")


def lua_text(value: str) -> str | bytes:
    """Text for Lua: its UTF-8 bytes (an ASCII str is those bytes already)."""
    return value if value.isascii() else value.encode()


def _no_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Lua code cannot access attributes of Python objects")


def search_path(paths: Iterable[str]) -> str:
    """A package.path string: the configured directories first, then the repository's lua/."""
    dirs = [*paths, str(REPO_LUA)]
    return ";".join(f"{d}/?.lua;{d}/?/init.lua" for d in dirs)


# Lua `ctx` tables made per call into Lua (LuaState.new_ctx).
CTX_BATCH = 64


class LuaState:
    """The worker's Lua state: the trusted core, the PDK, and sandboxes by (path, unsafe)."""

    def __init__(self) -> None:
        self.lua = luajit21.LuaRuntime(
            encoding="latin-1",  # byte for byte, see the module's docstring
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_no_attributes,
            max_memory=0,  # counted from the start; the limit is set by limit_memory()
        )
        self._memory_limit = 0
        version = self.lua.execute("return jit and jit.version")
        if not (isinstance(version, str) and version.startswith("LuaJIT 2.1")):
            raise RuntimeError(f"lupa.luajit21 is not LuaJIT 2.1: {version!r}")
        self.version: str = version
        lua = self.lua
        self._table = lua.table
        lua.execute("package.path = ''; package.cpath = ''")
        self.core = self._run_file(REPO_LUA / "ando" / "runtime.lua")
        from ando.lua.pdk import bindings

        self.pdk = self._run_file(REPO_LUA / "ando" / "pdk.lua")(
            self.to_lua(bindings(self)), self.core.EXIT, self.core
        )
        self.core.set_var(self.pdk.var)
        self._call = self.core.call
        self._resume = self.core.resume
        self._bind = self.core.bind
        self._bind_direct = self.core.bind_direct
        self._bind_head = self.core.bind_head
        self._new_ctxs = self.core.new_ctxs
        self._spare_ctxs: list[Any] = []
        self._collect = self.core.collect
        self._is_function = self.core.is_function
        self.sandboxes: dict[tuple[str, bool], Any] = {}
        # (sandbox key, module name, file, source) -> the loaded module, or its error
        self.modules: dict[tuple[Any, ...], tuple[bool, Any, str]] = {}
        # Plugin classes made from loaded modules (ando/lua/plugin.py), by the module's key.
        self.classes: dict[Any, Any] = {}

    def new_ctx(self) -> Any:
        """A fresh Lua `ctx` table for a request. Made CTX_BATCH at a time (one call into Lua
        instead of one per request); each is handed out once, so no request sees another's."""
        spare = self._spare_ctxs
        if not spare:
            self.relieve_memory()  # every CTX_BATCH requests: the batch itself allocates
            spare.extend(self._new_ctxs(CTX_BATCH))
        return spare.pop()

    def limit_memory(self, mib: int) -> None:
        """The most the whole Lua state may use (`ando.lua.max_memory`)."""
        self._memory_limit = mib << 20
        self.lua.set_max_memory(self._memory_limit, total=True)

    def relieve_memory(self) -> None:
        """A full collection when the state is near its limit. A call that failed for memory
        leaves its garbage behind, and LuaJIT collects only as it allocates: every allocation
        would fail from then on. runtime.lua collects after such a failure it catches; this is
        for the allocations outside a plugin call (a batch of ctx tables)."""
        limit = self._memory_limit
        if limit and self.lua.get_memory_used() > limit - (limit >> 2):
            self._collect()

    def _run_file(self, path: Path) -> Any:
        loader = self.lua.eval("function(src, name) return assert(load(src, name, 't')) end")
        return loader(path.read_bytes(), f"@{path}".encode())()

    # --- sandboxes and modules -----------------------------------------------------------------

    def sandbox(self, paths: tuple[str, ...], unsafe: bool) -> Any:
        key = (search_path(paths), unsafe)
        found = self.sandboxes.get(key)
        if found is None:
            found = self.sandboxes[key] = self.core.new_sandbox(lua_text(key[0]), unsafe, self.pdk)
        return found

    def load_module(self, paths: tuple[str, ...], unsafe: bool, name: str) -> tuple[bool, Any, str]:
        """(True, module value, file) or (False, "file:line: message", file), once per distinct
        source: a changed file is loaded again (into a new sandbox, so its own cache is fresh)."""
        box = self.sandbox(paths, unsafe)
        # Names and paths cross into Lua as UTF-8 bytes (the state is latin-1: one char a byte).
        file = self.core.find(box, lua_text(name))
        if not isinstance(file, str):
            where = text(file[1]) if isinstance(file, tuple) else ""
            return False, f"Lua module '{name}' not found:{where}", ""
        file = text(file)
        try:
            source = Path(file).read_bytes()
        except OSError as e:
            return False, f"{file}: {e.strerror}", file
        key = (search_path(paths), unsafe, name, file, source)
        found = self.modules.get(key)
        if found is not None:
            return found
        if any(k[:4] == key[:4] for k in self.modules):
            # the file changed since it was loaded: start from a fresh sandbox
            self.sandboxes.pop((key[0], unsafe), None)
            box = self.sandbox(paths, unsafe)
        ok, value = self.core.load_module(box, lua_text(name), BUDGET)
        found = self.modules[key] = (
            bool(ok),
            value if ok else _full_path(text(str(value)), file),
            file,
        )
        return found

    def compile_function(
        self, paths: tuple[str, ...], unsafe: bool, source: str, chunkname: str
    ) -> tuple[bool, Any]:
        """A serverless function (ando/lua/serverless.py): `source` is Lua text that returns a
        function; it is compiled and run (under the budget) in the sandbox for (paths, unsafe).
        (True, the function) or (False, what is wrong, with Lua's message)."""
        kind, value = self.core.compile_function(
            self.sandbox(paths, unsafe), lua_text(source), lua_text(chunkname), BUDGET
        )
        if kind == 0:
            return True, value
        value = text(value)
        if kind == 1:
            return False, f"Lua syntax error: {value}"
        if kind == 2:
            return False, f"Lua error while loading it: {value}"
        return False, f"the code must return a function, not a {value}"

    # --- calls -------------------------------------------------------------------------------

    def call(self, fn: Any, conf: Any, ctx: Any) -> Any:
        """Call plugin code `fn(conf, ctx)`: see M.call in lua/ando/runtime.lua for the result."""
        return self._call(self.pdk, fn, conf, ctx, BUDGET)

    def resume(self, co: Any, ctx: Any, value: Any) -> Any:
        """Go on with a call that returned (3, coroutine): it waited for `value` (the request
        body). The same results as `call`; the resumed part runs under a fresh budget."""
        return self._resume(self.pdk, co, ctx, value, BUDGET)

    def bind(self, fn: Any, conf: Any) -> Any:
        """`fn` with its configuration: a callable taking the request's ctx table, with the
        result of `call`."""
        return self._bind(self.pdk, fn, conf, BUDGET)

    def bind_direct(self, fn: Any, conf: Any) -> Any:
        """As `bind`, for a phase that never waits: no coroutine (never the result 3)."""
        return self._bind_direct(self.pdk, fn, conf, BUDGET)

    def bind_head(self, fn: Any, conf: Any) -> Any:
        """As `bind_direct`, for header_filter: its response header changes come back with
        the result, (0, kind, name, value, ...), instead of a call into Python each."""
        return self._bind_head(self.pdk, fn, conf, BUDGET)

    def is_function(self, value: Any) -> bool:
        return bool(self._is_function(value))

    # --- conversions -------------------------------------------------------------------------

    def to_lua(self, value: Any) -> Any:
        """Plain data (JSON-like, mappings, lists, tuples) as Lua values; None stays nil; text
        as its UTF-8 bytes, bytes as they are."""
        if isinstance(value, str):
            return value if value.isascii() else value.encode()
        if isinstance(value, Mapping):
            t = self._table()
            for k, v in value.items():
                if v is not None:
                    t[self.to_lua(k)] = self.to_lua(v)
            return t
        if isinstance(value, list | tuple):
            t = self._table()
            for i, v in enumerate(value, 1):
                t[i] = self.to_lua(v)
            return t
        if value.__class__ is int and not -(2**63) <= value < 2**63:
            return float(value)  # a Lua number is a double (lupa cannot pass a wider int)
        return value

    def to_python(self, value: Any, key: Any = None) -> Any:
        """A Lua value as plain data: a table with keys 1..n is a list, any other a dict (an
        empty table is {} except under JSON Schema's array keywords). Strings are read as
        UTF-8 text."""
        if value.__class__ is str:
            return text(value)
        if lua_type(value) != "table":
            if lua_type(value) is not None:
                raise TypeError(f"a Lua {lua_type(value)} cannot be converted to data")
            return value
        items = list(value.items())
        if not items:
            return [] if key in _ARRAY_KEYS else {}
        n = len(items)
        if all(isinstance(k, int) and not isinstance(k, bool) for k, _ in items):
            keys = sorted(k for k, _ in items)
            if keys == list(range(1, n + 1)):
                by = dict(items)
                return [self.to_python(by[i]) for i in range(1, n + 1)]
        return {_key(k): self.to_python(v, k) for k, v in items}


def _key(k: Any) -> str:
    """A Lua table key as an object key: a string's text; true/false as Lua writes them (not
    Python's True); a number's text."""
    if k.__class__ is str:
        return text(k)
    if k.__class__ is bool:
        return "true" if k else "false"
    return str(k)


def _full_path(message: str, file: str) -> str:
    """Lua shortens long chunk names to "...tail": put the module's whole path back."""
    if message.startswith("..."):
        colon = message.find(":")
        if colon > 3 and file.endswith(message[3:colon]):
            return file + message[colon:]
    return message


_state: LuaState | None = None
_state_pid = 0


def state() -> LuaState:
    """This process's Lua state (a forked worker makes its own)."""
    global _state, _state_pid
    pid = os.getpid()
    if _state is None or _state_pid != pid:
        _state, _state_pid = LuaState(), pid
    return _state


__all__ = [
    "BUDGET",
    "BUDGET_MESSAGE",
    "MAX_MEMORY_MIB",
    "LuaError",
    "LuaState",
    "lua_text",
    "search_path",
    "state",
    "text",
]
