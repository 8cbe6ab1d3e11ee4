"""What a plugin sees of one request: the request context API.

Plugins never touch the HTTP layer's objects; they read and change the request through this one
object, which lives for the request and is shared by every phase of every plugin on it.
Changes made here (headers, uri, method, host) are what the upstream receives; the request as
the client sent it stays readable through `var()` (APISIX's `ctx.var`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ando.http.server import gateway_headers

if TYPE_CHECKING:
    from ando.plugins.chain import PluginChain


# Plugins name the same few headers on every request: each name's bytes, as given and lower-case,
# are computed (and checked) once. Bounded, as names may come from requests.
_names: dict[str, tuple[bytes, bytes]] = {}


def _name(name: str) -> tuple[bytes, bytes]:
    found = _names.get(name)
    if found is None:
        # Visible ASCII without ':' (APISIX's validate_header_field): a CR or LF would end the
        # line early, splitting a response or smuggling a header to the upstream.
        if not (name and name.isascii() and name.isprintable()) or " " in name or ":" in name:
            raise ValueError(f"invalid header name: {name[:40]!r}")
        raw = name.encode("latin-1")
        found = (raw, raw.lower())
        if len(_names) < 1024:
            _names[name] = found
    return found


# llhttp drops the whitespace before a header value but keeps the whitespace after it, which is
# not part of the value (RFC 9110 5.5; nginx trims it): values are read without it. The bytes
# forwarded stay as received.
_OWS = " \t"


def _index(headers: list[tuple[bytes, bytes]], lower: bytes) -> int:
    """Where the first header named `lower` (in any case) is, or -1. A scan (heads are short;
    a Python loop beats joining the names for one C search, measured); a name of another
    length is passed without lower-casing it."""
    n = len(lower)
    i = 0
    for k, _ in headers:
        if len(k) == n and k.lower() == lower:
            return i
        i += 1  # noqa: SIM113 - enumerate() measured slower here
    return -1


def _has(headers: list[tuple[bytes, bytes]], lower: bytes) -> bool:
    """Whether a header is named `lower` (in any case): _index without counting, for the setters
    (a set usually names a header the response does not have)."""
    n = len(lower)
    for k, _ in headers:  # noqa: SIM110 - any() over a generator measured slower
        if len(k) == n and k.lower() == lower:
            return True
    return False


def _drop(headers: list[tuple[bytes, bytes]], lower: bytes) -> None:
    """Remove every `lower`-named header, in place. Usually there is none: one search says so."""
    if _has(headers, lower):
        n = len(lower)
        headers[:] = [h for h in headers if len(h[0]) != n or h[0].lower() != lower]


def _first(headers: list[tuple[bytes, bytes]], lower: bytes) -> str | None:
    i = _index(headers, lower)
    return None if i < 0 else headers[i][1].decode("latin-1").rstrip(_OWS)


# The response's framing is the gateway's: it sends the upstream's body as framed upstream, or
# re-frames it (chunked) when body filters may change it. A plugin's set, add or remove of these
# is ignored, so no plugin can make a body look longer or shorter than it is.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


# The X-Forwarded-* headers a plugin may set in place of the gateway's (APISIX: proxy-rewrite's
# X-Forwarded-Proto for TLS ended in front of the gateway). A client's are never forwarded;
# X-Forwarded-For and X-Real-IP stay the gateway's (real-ip changes the address they carry).
_FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-port", b"x-forwarded-host"})

# A response's Date and Server are the gateway's (ando.http.server.gateway_lines): an upstream's
# are not sent. A header filter that reads or changes either first gets the gateway's in place of
# the upstream's (ResponseHead.take_date_server), as APISIX sets its Server before plugins run.
_DATE_SERVER = frozenset({b"date", b"server"})
_SPECIAL = _FRAMING | _DATE_SERVER


def _lower(name: str) -> bytes:
    """The lower-case bytes of a name to look up or remove: one no header can have (not visible
    ASCII, or with ':') is not refused here; it finds nothing."""
    found = _names.get(name)
    if found is None:
        try:
            found = _name(name)
        except ValueError:
            return name.encode("latin-1", "replace").lower()
    return found[1]


def header_name_bytes(name: str) -> bytes:
    """A header name as sent. Raises ValueError for one that is not visible ASCII without ':'."""
    return (_names.get(name) or _name(name))[0]


def header_bytes(value: str) -> bytes:
    """A header value as sent: CR, LF and NUL would end the header (response splitting, or a
    request smuggled upstream), so a plugin that tries to send one fails its request instead."""
    raw = value.encode("latin-1")
    # isprintable(): one C pass that is False for CR, LF and NUL (and for tabs, then checked)
    if not value.isprintable() and (b"\r" in raw or b"\n" in raw or b"\0" in raw):
        raise ValueError(f"header value with CR, LF or NUL: {value[:40]!r}")
    return raw


class PreparedHeader:
    """A response header ResponseHead.set() would accept, its checks done once: what a plugin
    keeps for a header it sets on every response (not a tuple: Lua holds it as one value)."""

    __slots__ = ("line", "lower")

    def __init__(self, lower: bytes, line: tuple[bytes, bytes]) -> None:
        self.lower = lower
        self.line = line  # (name, value) as ResponseHead.headers holds it; shared, never changed


def prepare_header(name: str, value: str) -> PreparedHeader | None:
    """ResponseHead.set(name, value) checked once, or None for what set() has to see each time:
    a name the gateway owns (framing, Date, Server), or a name or value set() refuses."""
    try:
        key, lower = _names.get(name) or _name(name)
        raw = header_bytes(value)
    except (ValueError, UnicodeEncodeError):
        return None
    if lower in _SPECIAL:
        return None
    return PreparedHeader(lower, (key, raw))


class RequestContext:
    __slots__ = (
        "_args",
        "_body_reader",
        "_conn",
        "_data",
        "_req",
        "body",
        "chain",
        "consumer",
        "consumer_group_id",
        "credential_id",
        "forwarded",
        "latency",
        "lua_ctx",
        "response_headers",
        "route",
        "status",
        "upstream",
        "upstream_addr",
        "upstream_host",
        "upstream_latency",
        "upstream_method",
        "upstream_status",
        "upstream_uri",
        "var",
    )

    def __init__(
        self,
        req: Any,
        var: Callable[[str], str | None],
        chain: PluginChain,
        route: Any = None,
        body_reader: Callable[[Any, Any], Any] | None = None,
        conn: Any = None,
    ) -> None:
        self._req = req
        self.var = var  # APISIX variables by name: ctx.var("arg_name"), ctx.var("http_x_id")
        self.chain = chain
        self.route = route  # the matched route's record (ando.config.snapshot.Route) or None
        self.consumer: Any = None  # ando.config.snapshot.Consumer once a plugin identified one
        self.consumer_group_id: str | None = None
        self.credential_id: str | None = None
        # X-Forwarded-Proto/-Port/-Host a plugin set (proxy-rewrite): sent instead of the
        # gateway's own, as APISIX does; lower-case name -> value.
        self.forwarded: dict[bytes, bytes] | None = None
        self.upstream_uri: str | None = None  # path[?query] sent upstream, when rewritten
        self.upstream_method: str | None = None
        self.upstream_host: str | None = None  # the Host header sent upstream, when rewritten
        self.upstream: Any = None  # an upstream chosen by a plugin (traffic-split)
        # Headers for the response, whoever makes it: (name, lower-case name, value, how), how
        # False to set (replacing), True to add, None to add unless the response has one.
        self.response_headers: list[tuple[bytes, bytes, bytes, bool | None]] | None = None
        self.status = 0  # the status the client got (log phase)
        self.upstream_status = 0
        self.upstream_addr: str | None = None
        self.upstream_latency: float | None = None  # seconds to the upstream's response head
        self.latency = 0.0
        self.body: bytes | None = None  # the request body, once read_body() read it
        # read_body() awaits body_reader(conn, request): one function for the worker, not a
        # closure made per request.
        self._body_reader = body_reader
        self._conn = conn
        self._args: dict[str, str] | None = None
        self._data: dict[Any, Any] | None = None
        self.lua_ctx: Any = None  # the Lua `ctx` table its Lua plugins share (ando/lua/pdk.py)

    # --- the request as received ---------------------------------------------------------------

    @property
    def route_id(self) -> str | None:
        route = self.route
        return route.id if route is not None else None

    @property
    def service_id(self) -> str | None:
        route = self.route
        return route.service_id if route is not None else None

    @property
    def method(self) -> str:
        return self._req.method

    @property
    def path(self) -> str:
        """The normalized path (no query): the one routing saw."""
        return self._req.path

    @property
    def query(self) -> str:
        return self._req.query.decode("latin-1")

    @property
    def args(self) -> dict[str, str]:
        """Query arguments, first value of each name, decoded."""
        if self._args is None:
            self._args = {}
            for k, v in parse_qsl(self.query, keep_blank_values=True):
                self._args.setdefault(k, v)
        return self._args

    @property
    def host(self) -> str:
        return self._req.host

    @property
    def scheme(self) -> str:
        return self._req.scheme

    @property
    def client_addr(self) -> str:
        return self._req.client_addr

    @client_addr.setter
    def client_addr(self, addr: str) -> None:
        """real-ip: the client's address as the gateway trusts it, from here on (ip-restriction,
        limits keyed on remote_addr, X-Forwarded-For and X-Real-IP sent upstream)."""
        self._req.client_addr = addr

    @property
    def client_port(self) -> int:
        return self._req.client_port

    @client_port.setter
    def client_port(self, port: int) -> None:
        self._req.client_port = port

    @property
    def has_body(self) -> bool:
        return self._req.has_body

    @property
    def data(self) -> dict[Any, Any]:
        """Scratch space shared by the phases of this request (key by plugin)."""
        if self._data is None:
            self._data = {}
        return self._data

    # --- request headers (what the upstream receives) -----------------------------------------

    def header(self, name: str) -> str | None:
        # _first's scan, inlined: plugins read a request header or two on every request
        found = _names.get(name)
        lower = found[1] if found is not None else _lower(name)
        n = len(lower)
        for k, v in self._req.headers:
            if len(k) == n and k.lower() == lower:
                return v.decode("latin-1").rstrip(_OWS)
        return None

    def header_values(self, name: str) -> list[str]:
        want = _lower(name)
        return [v.decode("latin-1").rstrip(_OWS) for k, v in self._req.headers if k.lower() == want]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            (k.decode("latin-1"), v.decode("latin-1").rstrip(_OWS)) for k, v in self._req.headers
        ]

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of `name` with `value`."""
        raw = header_bytes(value)
        key, lower = _names.get(name) or _name(name)
        headers = self._req.headers
        if _has(headers, lower):  # usually not: no second call to find out
            headers[:] = [h for h in headers if h[0].lower() != lower]
        headers.append((key, raw))
        if lower in _FORWARDED:
            self._forward(lower, raw)

    def add_header(self, name: str, value: str) -> None:
        raw = header_bytes(value)
        key, lower = _names.get(name) or _name(name)
        self._req.headers.append((key, raw))
        if lower in _FORWARDED:
            self._forward(lower, raw)

    def _forward(self, lower: bytes, raw: bytes) -> None:
        if self.forwarded is None:
            self.forwarded = {}
        self.forwarded[lower] = raw

    def remove_header(self, name: str) -> None:
        lower = _lower(name)
        _drop(self._req.headers, lower)
        if self.forwarded is not None:
            self.forwarded.pop(lower, None)  # the gateway's own value again

    # --- the upstream request -------------------------------------------------------------------

    def set_uri(self, uri: str) -> None:
        """The path (and `?query`, if given) sent upstream; routing already happened."""
        self.upstream_uri = uri

    def set_arg(self, name: str, value: str | None) -> None:
        """Set (or, with None, remove) one query argument of the upstream request."""
        from urllib.parse import urlencode

        path, _, query = (self.upstream_uri or self.path + "?" + self.query).partition("?")
        pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name]
        if value is not None:
            pairs.append((name, value))
        self.upstream_uri = path + ("?" + urlencode(pairs) if pairs else "")

    # --- the response -------------------------------------------------------------------------

    def set_response_header(self, name: str, value: str) -> None:
        """A header for the response to this request, whoever makes it (upstream or plugin)."""
        self.set_response_headers(((name, value),))

    def set_response_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        """set_response_header for each (name, value) of distinct names, in one pass: a later
        set replaces what earlier phases set or added under those names."""
        entries = []
        for name, value in headers:
            key, lower = _names.get(name) or _name(name)
            raw = header_bytes(value)
            if lower not in _FRAMING:
                entries.append((key, lower, raw, False))
        self.set_response_entries(entries)

    def set_response_entries(self, entries: list[tuple[bytes, bytes, bytes, bool | None]]) -> None:
        """set_response_headers with the work done: (name, lower-case name, value, False) of
        distinct names, each value's bytes made of safe parts (digits, or configuration already
        checked). For the plugins that set the same headers on every request (limit-count)."""
        extra = self.response_headers
        if extra is None:
            self.response_headers = entries
            return
        names = {e[1] for e in entries}
        extra[:] = [e for e in extra if e[1] not in names]
        extra.extend(entries)

    def add_response_header(self, name: str, value: str) -> None:
        key, lower = _name(name)
        raw = header_bytes(value)
        if lower in _FRAMING:
            return
        if self.response_headers is None:
            self.response_headers = []
        self.response_headers.append((key, lower, raw, True))

    def default_response_header(self, name: str, value: str) -> None:
        """A header for the response unless it already has one of that name (after the other
        response headers plugins set or added): request-id's `include_in_response`."""
        key, lower = _names.get(name) or _name(name)
        raw = header_bytes(value)
        if lower in _FRAMING:
            return
        if self.response_headers is None:
            self.response_headers = []
        self.response_headers.append((key, lower, raw, None))

    # --- consumers ------------------------------------------------------------------------------

    def attach_consumer(self, consumer: Any, credential_id: str | None = None) -> None:
        """An auth plugin identified `consumer`: its plugins (and its group's) join the chain
        before `access`, and the upstream hears its name in X-Consumer-Username."""
        self.consumer = consumer
        self.consumer_group_id = consumer.group_id
        self.credential_id = credential_id

    @property
    def consumer_name(self) -> str | None:
        return self.consumer.username if self.consumer is not None else None

    # --- the body -------------------------------------------------------------------------------

    async def read_body(self) -> bytes:
        """The whole request body (b"" when there is none), read once and kept: it still goes
        upstream afterwards. Bounded by the node's body limit (413 above it)."""
        if self.body is None:
            if not self._req.has_body or self._body_reader is None:
                self.body = b""
            else:
                self.body = await self._body_reader(self._conn, self._req)
        return self.body


class ResponseHead:
    """The response status and headers as `header_filter` sees them, before they are sent."""

    __slots__ = ("date_server", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], date_server: bool = False
    ) -> None:
        self.status = status
        self.headers = headers
        # True once `headers` hold the Date and Server the client gets (the gateway's, or what
        # plugins made of them); False while they may hold an upstream's, which are not sent.
        self.date_server = date_server

    def take_date_server(self) -> None:
        """Put the gateway's Date and Server in place of any the headers have."""
        self.date_server = True
        kept = [h for h in self.headers if h[0].lower() not in _DATE_SERVER]
        self.headers = [*gateway_headers(), *kept]

    def _may_change(self, lower: bytes) -> bool:
        """For the names the gateway owns (rare, so a call): the framing headers never change
        (False); Date and Server become the gateway's before a plugin changes them."""
        if lower in _FRAMING:
            return False
        if not self.date_server:
            self.take_date_server()
        return True

    def get(self, name: str) -> str | None:
        lower = _lower(name)
        if lower in _DATE_SERVER and not self.date_server:
            self.take_date_server()
        return _first(self.headers, lower)

    def set(self, name: str, value: str) -> None:
        raw = header_bytes(value)
        key, lower = _names.get(name) or _name(name)
        if lower in _SPECIAL and not self._may_change(lower):
            return
        headers = self.headers
        if _has(headers, lower):  # usually not: no second call to find out
            headers[:] = [h for h in headers if h[0].lower() != lower]
        headers.append((key, raw))

    def set_prepared(self, header: PreparedHeader) -> None:
        """set() of a header prepare_header() checked once: for the plugins that set the same
        header on every response (hello_world's Lua set_header, through lua/ando/pdk.lua)."""
        lower = header.lower
        headers = self.headers
        if _has(headers, lower):  # usually not
            headers[:] = [h for h in headers if h[0].lower() != lower]
        headers.append(header.line)

    def add(self, name: str, value: str) -> None:
        raw = header_bytes(value)
        key, lower = _names.get(name) or _name(name)
        if lower in _SPECIAL and not self._may_change(lower):
            return
        self.headers.append((key, raw))

    def remove(self, name: str) -> None:
        lower = _lower(name)
        if lower in _SPECIAL and not self._may_change(lower):
            return
        _drop(self.headers, lower)

    def items(self) -> list[tuple[str, str]]:
        if not self.date_server:
            self.take_date_server()
        return [(k.decode("latin-1"), v.decode("latin-1").rstrip(_OWS)) for k, v in self.headers]
