"""Normalize the request-target once, before routing.

DESIGN.md, "One path for everything": routing, every plugin and the upstream request all see the
one path this module returns, so no spelling of a URL can reach a route without that route's auth.
That only holds if there is exactly one normalization and it refuses everything ambiguous, which is
why this module is strict where RFC 3986 alone would be lenient.

The hot path is a plain ASCII origin-form target with no ``%``, no ``;``, no ``//`` and no
segment starting with ``.``: it is checked with a few C-level byte operations and returned without
building lists. Everything else takes the full algorithm in :func:`_normalize`.
"""

from __future__ import annotations

__all__ = ["BadTarget", "split_target"]


class BadTarget(Exception):
    """A request-target a gateway must refuse; the caller answers ``status`` and closes.

    ``reason`` is short, fixed text (never the attacker's bytes) so it is safe to log and to send.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


# --- byte classes, built once -------------------------------------------------------------------

_VISIBLE = bytes(range(0x21, 0x7F))  # no controls, no space, no DEL, no raw non-ASCII


def _without(chars: bytes, remove: bytes) -> bytes:
    return bytes(c for c in chars if c not in remove)


# `bytes.translate(None, X)` deletes the bytes in X; an empty result means "only bytes from X".
# Before the "?": `#` (fragments never travel) and `\` (IIS/Windows read it as "/") are refused.
_PRE_QUERY_OK = _without(_VISIBLE, b"#\\?")
# The query may hold `\`: browsers send it raw there (the WHATWG URL query percent-encode set is
# C0 controls, space, `"`, `#`, `<`, `>` only), routing never reads the query, and refusing it would
# break real traffic. `#` is refused everywhere: llhttp accepts it, but no client sends one.
_QUERY_OK = _without(_VISIBLE, b"#")
# Paths made only of these bytes, with no "//" and no "/.", are already normalized: no escapes to
# decode, no `;` path parameters, no dot segments, no empty segments.
_FAST_OK = _without(_PRE_QUERY_OK, b"%;")

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# Every two-hex-digit spelling (any case) -> what it normalizes to: the character itself for the
# unreserved set (RFC 3986 6.2.2.2), else the escape with uppercase hex (6.2.2.1) so %2f and %2F
# compare equal. Escapes that would smuggle a separator or a control byte past the checks above map
# to the reason for refusing them instead. A missing key is a malformed escape.
_ESCAPES: dict[str, str] = {}
_REFUSED: dict[str, str] = {}
_HEX = "0123456789abcdefABCDEF"
for _hi in _HEX:
    for _lo in _HEX:
        _byte = int(_hi + _lo, 16)
        _key = _hi + _lo
        if _byte == 0x00:
            _REFUSED[_key] = "encoded NUL in path"
        elif _byte < 0x20 or _byte == 0x7F:
            _REFUSED[_key] = "encoded control byte in path"
        elif _byte == 0x2F:
            _REFUSED[_key] = "encoded slash in path"
        elif _byte == 0x5C:
            _REFUSED[_key] = "encoded backslash in path"
        elif chr(_byte) in _UNRESERVED:
            _ESCAPES[_key] = chr(_byte)
        else:
            _ESCAPES[_key] = f"%{_byte:02X}"
del _hi, _lo, _byte, _key


# --- public API ---------------------------------------------------------------------------------


def split_target(target: bytes) -> tuple[str, bytes]:
    """Split a raw request-target into ``(normalized_path, raw_query)``.

    ``target`` is exactly what httptools hands to ``on_url``. Origin-form (``/a?x``) is the norm;
    absolute-form (``http://host/a?x``) yields its path and the caller compares the host;
    asterisk-form (``*``) yields ``"*"`` and the caller checks the method is OPTIONS. The query is
    returned untouched (without the ``?``) because its meaning belongs to the application; it is
    only checked for bytes no client may send. Raises :class:`BadTarget` (400) for anything a
    gateway must refuse; the 414 length limit is the caller's.
    """
    pre, _, query = target.partition(b"?")
    # Fast path: already-normal origin-form paths, the overwhelming majority of traffic.
    if (
        pre[:1] == b"/"
        and not pre.translate(None, _FAST_OK)
        # find(), not `in`: bytes.__contains__ first tries the needle as an int and pays for
        # the failed conversion, which makes `in` about twice as slow here.
        and pre.find(b"//") < 0
        and pre.find(b"/.") < 0
        and (not query or not query.translate(None, _QUERY_OK))
    ):
        return pre.decode("ascii"), query
    return _split_slow(target, pre, query)


def _split_slow(target: bytes, pre: bytes, query: bytes) -> tuple[str, bytes]:
    if not target:
        raise BadTarget(400, "empty request-target")
    if pre.translate(None, _PRE_QUERY_OK):
        raise BadTarget(400, "forbidden byte in request-target")
    if query.translate(None, _QUERY_OK):
        raise BadTarget(400, "forbidden byte in query")
    if pre[:1] != b"/":
        if target == b"*":
            return "*", b""
        pre = _absolute_form_path(pre)
    return _normalize(pre.decode("ascii")), query


def _absolute_form_path(pre: bytes) -> bytes:
    """Return the path of an absolute-form target (RFC 9112 3.2.2), or refuse it.

    Only http and https are proxied. Userinfo is refused because RFC 9110 4.2.4 says a recipient
    SHOULD treat its presence as an error (it is a phishing and parser-confusion vector), and an
    empty host is refused because RFC 9110 4.2.1 says such a URI MUST be rejected. An empty path
    means "/" (RFC 9112 3.2.2 / RFC 3986 6.2.3).
    """
    head = pre[:8].lower()
    if head.startswith(b"http://"):
        rest = pre[7:]
    elif head == b"https://":
        rest = pre[8:]
    else:
        raise BadTarget(400, "request-target is not origin-form")
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority:
        raise BadTarget(400, "empty host in absolute-form target")
    if b"@" in authority:
        raise BadTarget(400, "userinfo in absolute-form target")
    return path


def _normalize(path: str) -> str:
    """Decode unreserved escapes, refuse path parameters on dot segments, resolve dots, merge "/".

    Slashes are merged in the same pass that removes dot segments, and an empty segment never
    counts as a parent: ``/a//../b`` is ``/b``. That is what nginx does (merge_slashes happens in
    ngx_http_parse_complex_uri's sw_slash state, before ``..`` walks back) and what a filesystem
    does, whereas literal RFC 3986 5.2.4 followed by a merge would give ``/a/b``. Every output is
    the same either way for targets without empty segments.

    A ``..`` that would climb above the root is refused with 400 rather than clamped to ``/`` as
    RFC 3986 5.2.4 allows: nginx returns NGX_HTTP_PARSE_INVALID_REQUEST (400) in that case
    (ngx_http_parse_complex_uri, sw_dot_dot: ``if (u < r->uri.data)``), no legitimate client sends
    it (browsers resolve dots before sending), and it is a traversal probe by construction.
    """
    if "%" in path:
        parts = path.split("%")
        out = [parts[0]]
        for part in parts[1:]:
            key = part[:2]
            repl = _ESCAPES.get(key)
            if repl is None:
                raise BadTarget(400, _REFUSED.get(key, "malformed percent-escape in path"))
            out.append(repl)
            out.append(part[2:])
        path = "".join(out)
    # Tomcat-style path parameters: Tomcat strips ";..." from each segment *before* resolving dots,
    # so "/public/..;/admin" is "/admin" to a Java upstream but a literal segment to us. Refuse it
    # (decoded, so "%2e%2e;" is caught too) along with "." carrying parameters, below.
    if "..;" in path:
        raise BadTarget(400, "path parameter on a dot segment")
    segments = path.split("/")
    kept: list[str] = []
    for seg in segments[1:]:
        if not seg or seg == ".":
            continue
        if seg == "..":
            if not kept:
                raise BadTarget(400, "path climbs above the root")
            kept.pop()
            continue
        if seg[:2] == ".;":
            raise BadTarget(400, "path parameter on a dot segment")
        kept.append(seg)
    if not kept:
        return "/"
    # A trailing "/", "/." or "/.." leaves the path naming a directory (RFC 3986 5.2.4 keeps the
    # final "/"); keep it so "/a/" and "/a" stay distinct for routing, as APISIX users expect.
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing
