"""The Python side of the Lua PDK (lua/ando/pdk.lua): functions Lua calls, acting on the request
being served.

A worker runs one Lua state and calls into it synchronously, so the request a PDK call acts on
is simply the one the runtime is calling for: `CURRENT` holds it (its RequestContext, the
ResponseHead in header_filter, the plugin's log function) for the duration of the call. Values
handed to Lua are plain strings, numbers, booleans or Lua tables, never Python objects.

Strings: lupa runs with latin-1 (ando/lua/runtime.py), so a Lua string arrives here as a str of
one character per byte. Header names and values are latin-1 in the gateway too and pass as they
are; text (paths, arguments, log messages, JSON) goes through UTF-8 with `text()` and
`lua_text()`; bodies are bytes, exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ando.lua.runtime import lua_text, text
from ando.plugins.context import PreparedHeader, header_bytes, prepare_header

if TYPE_CHECKING:
    from ando.lua.runtime import LuaState
    from ando.plugins.context import RequestContext, ResponseHead
    from ando.plugins.shared import SharedDict


class Current:
    """What the Lua call in progress acts on."""

    __slots__ = ("chunk", "ctx", "eof", "head", "log", "plugin", "shared", "wait")

    def __init__(self) -> None:
        self.ctx: RequestContext | None = None
        self.head: ResponseHead | None = None
        # body_filter: the chunk to send (ando.response.set_body replaces it) and whether it is
        # the last one; None outside body_filter.
        self.chunk: bytes | None = None
        self.eof = False
        # True in the phases that may wait for the request body (rewrite, access, before_proxy).
        self.wait = False
        self.log: Callable[..., None] | None = None
        self.plugin = ""
        # The node's SharedDict (ando.shared): the worker's, set when a Lua plugin is built.
        self.shared: SharedDict | None = None

    def enter(
        self, ctx: Any, head: Any, log: Callable[..., None] | None, plugin: str, wait: bool
    ) -> None:
        """Before a call into Lua: the request (and response head) the PDK works on."""
        self.ctx, self.head, self.log, self.plugin, self.wait = ctx, head, log, plugin, wait

    def leave(self) -> None:
        """After the call: nothing of the request is reachable from the PDK any more."""
        self.ctx = self.head = self.log = None
        self.wait = False


CURRENT = Current()


def lua_ctx(ctx: Any, new: Callable[[], Any]) -> Any:
    """The Lua `ctx` table of this request, made on first use and shared by every Lua plugin
    and serverless function on it."""
    found = ctx.lua_ctx
    if found is None:
        found = ctx.lua_ctx = new()
    return found


def apply_head_ops(head: ResponseHead, ops: Any, start: int = 0) -> None:
    """Apply header changes queued by Lua in header_filter: (kind, name, value) triples from
    `start`, kind 1 set, 2 add, 3 remove, 4 set a PreparedHeader (lua/ando/runtime.lua,
    bind_head)."""
    for i in range(start, len(ops), 3):
        kind, name = ops[i], ops[i + 1]
        if kind == 4:  # name: a PreparedHeader (pdk.lua's set_header of a string)
            head.set_prepared(name)
        elif kind == 1:
            head.set(name, str(ops[i + 2]))
        elif kind == 2:
            head.add(name, str(ops[i + 2]))
        else:
            head.remove(name)


class PdkError(Exception):
    """A PDK function used where it cannot work (outside a request, or in the wrong phase)."""


def header_values(fname: str, value: Any) -> list[str] | None:
    """The values a header setter was handed (not a string: a string is the common case, taken
    as it is by the callers): None for nil, "true"/"false" for a boolean (as Lua's tostring), a
    number's text, one value per element of a table (as ngx.header and ngx.req.set_header)."""
    if value is None:
        return None
    if value is True or value is False:
        return ["true" if value else "false"]
    if isinstance(value, str | int | float):
        return [str(value)]
    from lupa.luajit21 import lua_type

    if lua_type(value) == "table":
        out = []
        for i in range(1, len(value) + 1):
            one = header_values(fname, value[i])
            if one is None or len(one) != 1 or lua_type(value[i]) == "table":
                raise PdkError(f"{fname}: a table value must be an array of strings or numbers")
            out.extend(one)
        return out
    raise PdkError(
        f"{fname}: the value must be a string, number, boolean or array of them, "
        f"got a {lua_type(value) or type(value).__name__}"
    )


def _ctx() -> RequestContext:
    ctx = CURRENT.ctx
    if ctx is None:
        raise PdkError("no request: the PDK is usable in phase functions only")
    return ctx


def _head() -> ResponseHead:
    head = CURRENT.head
    if head is None:
        raise PdkError("the response head is only available in header_filter")
    return head


def _chunk() -> bytes:
    chunk = CURRENT.chunk
    if chunk is None:
        raise PdkError("the response body is only available in body_filter")
    return chunk


# Variables whose values are raw request bytes (latin-1 str): handed to Lua as they are. The
# others are text, handed over as UTF-8.
_RAW_VAR_PREFIXES = ("http_", "cookie_")
_RAW_VARS = frozenset({"request_uri", "query_string", "args"})


# ando.shared keys live in the node's SharedDict next to the built-in plugins' own keys.
SHARED_PREFIX = "lua\x00"


def _shared() -> SharedDict:
    shared = CURRENT.shared
    if shared is None:
        raise PdkError("ando.shared is usable in phase functions only")
    return shared


def bindings(state: LuaState) -> dict[str, Callable[..., Any]]:
    """The functions pdk.lua builds `ando` from."""

    def get_method() -> str:
        return _ctx().method

    def get_uri() -> str:
        """Path and query as the client sent them (APISIX's request_uri)."""
        ctx = _ctx()
        uri = ctx.var("request_uri")
        if uri is not None:
            return uri
        q = ctx.query
        path = ctx.path.encode()
        return path + b"?" + q.encode("latin-1") if q else path

    def get_path() -> str | bytes:
        return lua_text(_ctx().path)

    def get_query() -> str:
        return _ctx().query

    def get_arg(name: str) -> str | bytes | None:
        value = _ctx().args.get(text(name))
        return None if value is None else lua_text(value)

    def get_header(name: str) -> str | None:
        """As APISIX's core.request.header (ngx.req.get_headers()): any case, and `_` for `-`."""
        ctx = _ctx()
        value = ctx.header(name)
        if value is None and name.__class__ is str and "_" in name:
            value = ctx.header(name.replace("_", "-"))
        return value

    new_table = state.lua.table

    def get_headers() -> Any:
        """Lower-case name -> value; a repeated header -> an array of its values (raw bytes:
        not through to_lua, which would encode them as text)."""
        out: dict[str, Any] = {}
        for k, v in _ctx().headers:
            k = k.lower()
            found = out.get(k)
            if found is None:
                out[k] = v
            elif isinstance(found, list):
                found.append(v)
            else:
                out[k] = [found, v]
        t = new_table()
        for k, v in out.items():
            t[k] = new_table(*v) if isinstance(v, list) else v
        return t

    def set_header(name: str, value: Any) -> None:
        """Replace header `name`: nil removes it, a table sends one header per element (as
        ngx.req.set_header)."""
        ctx = _ctx()
        if len(name) == 4 and name.lower() == "host" and value.__class__ is str:
            # the gateway writes the upstream request's Host itself (pass_host): this is the
            # one it sends, as proxy-rewrite's `host` (and Kong's set_header("Host"))
            header_bytes(value)  # a value with CR or LF is refused here, as for any header
            ctx.upstream_host = value
        if value.__class__ is str:
            ctx.set_header(name, value)
            return
        values = header_values("ando.request.set_header", value)
        if not values:
            ctx.remove_header(name)
            return
        ctx.set_header(name, values[0])
        for v in values[1:]:
            ctx.add_header(name, v)

    def add_header(name: str, value: Any) -> None:
        ctx = _ctx()
        if value.__class__ is str:
            ctx.add_header(name, value)
            return
        values = header_values("ando.request.add_header", value)
        if values is None:
            raise PdkError("ando.request.add_header: the value must not be nil")
        for v in values:
            ctx.add_header(name, v)

    def remove_header(name: str) -> None:
        _ctx().remove_header(name)

    def set_uri(uri: str) -> None:
        """The path sent upstream, and the query too when `uri` has one; without one, the query
        stays (as ngx.req.set_uri and Kong's set_path: a plugin that moves the path keeps the
        client's arguments)."""
        ctx = _ctx()
        uri = text(uri)
        if "?" not in uri:
            current = ctx.upstream_uri
            query = current.partition("?")[2] if current is not None else ctx.query
            if query:
                uri += "?" + query
        ctx.set_uri(uri)

    def set_arg(name: str, value: Any) -> None:
        if value is None or value.__class__ is str:
            _ctx().set_arg(text(name), value if value is None else text(value))
            return
        if value.__class__ not in (bool, int, float):  # a table, a function: no one value
            raise PdkError("ando.request.set_arg: the value must be a string, number or boolean")
        _ctx().set_arg(text(name), header_values("ando.request.set_arg", value)[0])  # type: ignore[index]

    def get_body() -> bytes | None:
        """The request body once read; None when the call must wait for it (pdk.lua then
        yields, and the plugin adapter reads it and resumes the call)."""
        body = _ctx().body
        if body is not None:
            return body
        if not CURRENT.wait:
            raise PdkError(
                "ando.request.get_body: the body is read in rewrite, access or before_proxy; "
                "later phases see it only if one of those read it"
            )
        return None

    def get_body_chunk() -> bytes:
        return _chunk()

    def is_last_chunk() -> bool:
        _chunk()
        return CURRENT.eof

    def set_body(body: Any) -> None:
        _chunk()
        if isinstance(body, str):
            CURRENT.chunk = body.encode("latin-1")  # the Lua string's bytes
        elif body is None:
            CURRENT.chunk = b""
        elif isinstance(body, int | float) and not isinstance(body, bool):
            CURRENT.chunk = str(body).encode()
        else:
            raise PdkError("ando.response.set_body: the body must be a string")

    def get_remote_addr() -> str:
        return _ctx().client_addr

    def get_host() -> str | bytes:
        return lua_text(_ctx().host)

    def get_scheme() -> str:
        return _ctx().scheme

    def set_status(status: int) -> None:
        _head().status = int(status)

    def get_status() -> int:
        head = CURRENT.head
        return head.status if head is not None else _ctx().status

    def resp_get_header(name: str) -> str | None:
        """Any case, and `_` for `-` (as ngx.header and ngx.resp.get_headers())."""
        head = _head()
        value = head.get(name)
        if value is None and name.__class__ is str and "_" in name:
            value = head.get(name.replace("_", "-"))
        return value

    def resp_set_header(name: str, value: Any) -> None:
        """In header_filter (a serverless function's: a Lua plugin's are queued, pdk.lua) on the
        response head; earlier, for the response whoever makes it. nil removes (earlier: what
        plugins set or added under that name so far), a table sets one header per element."""
        head = CURRENT.head
        if value.__class__ is str:
            if head is not None:
                head.set(name, value)
            else:
                _ctx().set_response_header(name, value)
            return
        values = header_values("ando.response.set_header", value)
        if head is not None:
            head.remove(name)
            for v in values or ():
                head.add(name, v)
            return
        ctx = _ctx()
        if not values:
            lower = name.lower().encode("latin-1")
            pending = ctx.response_headers
            if pending:
                pending[:] = [e for e in pending if e[1] != lower]
            return
        ctx.set_response_header(name, values[0])
        for v in values[1:]:
            ctx.add_response_header(name, v)

    def resp_add_header(name: str, value: Any) -> None:
        head = CURRENT.head
        values = (
            [value] if value.__class__ is str else header_values("ando.response.add_header", value)
        )
        if values is None:
            raise PdkError("ando.response.add_header: the value must not be nil")
        for v in values:
            if head is not None:
                head.add(name, v)
            else:
                _ctx().add_response_header(name, v)

    def resp_remove_header(name: str, _unused: Any = None) -> None:
        _head().remove(name)

    def resp_prepare(name: str, value: str) -> PreparedHeader | None:
        """set_header(name, value)'s checks, done once for a pair pdk.lua keeps (see there)."""
        return prepare_header(name, value)

    def resp_apply(*ops: Any) -> None:
        """header_filter's queued header changes, handed over before a read (pdk.lua)."""
        apply_head_ops(_head(), ops)

    def var(name: str) -> Any:
        value = _ctx().var(name)
        if value.__class__ is not str or value.isascii():
            return value
        if name.startswith(_RAW_VAR_PREFIXES) or name in _RAW_VARS:
            return value
        return value.encode()

    def log(level: str, message: str) -> None:
        emit = CURRENT.log
        if emit is None:
            return
        ctx = CURRENT.ctx
        emit(
            "lua_log",
            level=level,
            plugin=CURRENT.plugin,
            route_id=ctx.route_id if ctx is not None else None,
            message=text(message),
        )

    def json_encode(value: Any) -> bytes:
        return orjson.dumps(state.to_python(value))

    def json_decode(doc: str) -> Any:
        return state.to_lua(orjson.loads(doc.encode("latin-1")))

    def shared_get(key: str) -> float | None:
        found = _shared().get(SHARED_PREFIX + key)
        return None if found is None else found[0]

    def shared_set(key: str, value: float, ttl: float) -> None:
        _shared().set(SHARED_PREFIX + key, float(value), 0.0, float(ttl))

    def shared_incr(key: str, delta: float, ttl: float) -> float:
        return _shared().incr(SHARED_PREFIX + key, float(delta), float(ttl))[0]

    def shared_delete(key: str) -> None:
        _shared().delete(SHARED_PREFIX + key)

    return {
        "get_method": get_method,
        "get_uri": get_uri,
        "get_path": get_path,
        "get_query": get_query,
        "get_arg": get_arg,
        "get_header": get_header,
        "get_headers": get_headers,
        "set_header": set_header,
        "add_header": add_header,
        "remove_header": remove_header,
        "set_uri": set_uri,
        "set_arg": set_arg,
        "get_remote_addr": get_remote_addr,
        "get_host": get_host,
        "get_scheme": get_scheme,
        "get_body": get_body,
        "get_body_chunk": get_body_chunk,
        "is_last_chunk": is_last_chunk,
        "set_body": set_body,
        "set_status": set_status,
        "get_status": get_status,
        "resp_get_header": resp_get_header,
        "resp_set_header": resp_set_header,
        "resp_add_header": resp_add_header,
        "resp_remove_header": resp_remove_header,
        "resp_apply": resp_apply,
        "resp_prepare": resp_prepare,
        "var": var,
        "log": log,
        "json_encode": json_encode,
        "json_decode": json_decode,
        "time_now": time.time,
        "time_monotonic": time.monotonic,
        "shared_get": shared_get,
        "shared_set": shared_set,
        "shared_incr": shared_incr,
        "shared_delete": shared_delete,
    }
