"""What the transform plugins share: `$var` templates, PCRE-style regexes with ngx.re templates,
and the percent-encoding a rewritten URI gets.

Templates are parsed once per config (plugin `__init__`), so a request only looks variables up
and joins strings.

- `VarTemplate` follows APISIX's `core.utils.resolve_var`: `$name` (letters, digits, `_` and
  `.`), `${name}` and `${name ?? default}`; a missing variable is the empty string; `\\$` is not
  a reference (the backslash stays, as in APISIX). With `captures=True` (proxy-rewrite's header
  values) `$1` / `${1}` are the regex_uri captures instead (`resolve_var_with_captures`).
- `RedirectTemplate` follows redirect's own parser: `$name` / `${name}` with names of letters,
  digits and `_`; `\\$name` stays as written.
- `SubTemplate` is ngx.re.sub's replacement: `$0`..`$N`, `${N}`, `$$` for a `$`; any other `$`
  is an error reported at `ando validate` time, as APISIX's check_schema reports it.
- `compile_regex` turns a PCRE pattern and ngx.re options (`jo`, `i`, `m`, `s`, `x`, `u`, `a`,
  ...) into a Python pattern; named groups `(?<n>...)` are accepted as PCRE writes them.

Ando's request path keeps the percent-encoding the client used (only unreserved characters are
decoded when it is normalized), where nginx's `$uri` is fully decoded. So a rewritten URI is
encoded the way APISIX's result ends up on the wire, without encoding twice what already is:
`encode_path` escapes what may not stand in a path (controls, space, `#`, `?`, non-ASCII, a `%`
that starts no escape) and keeps valid `%XX`; `encode_value` escapes a variable's decoded value
completely (`%` and `?` included), so a client's `?x=%252e%252e` can never become `..` upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, AnyStr

Lookup = Callable[[str], Any]
Escape = Callable[[str, str], str]

# --- $var templates -----------------------------------------------------------------------------

# core.utils.resolve_var: (?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w\.]+)); with captures first:
# (?<!\\)\$\{?(\d+)\}?
_VAR_REF = re.compile(r"(?<!\\)\$(?:\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII)
_VAR_OR_CAPTURE_REF = re.compile(
    r"(?<!\\)\$(?:\{?([0-9]+)\}?|\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII
)
_DEFAULT_SPLIT = re.compile(r"\s*\?\?\s*")
# redirect.lua: (\\\$[0-9a-zA-Z_]+) | \$\{([0-9a-zA-Z_]+)\} | \$([0-9a-zA-Z_]+) | (\$|[^$\\]+)
_REDIRECT_REF = re.compile(r"\\\$[0-9a-zA-Z_]+|\$\{([0-9a-zA-Z_]+)\}|\$([0-9a-zA-Z_]+)")

# A part is a literal str, or (kind, name, default): kind "var" or "cap" (a capture number).
_Part = str | tuple[str, Any, str | None]


class _Template:
    __slots__ = ("parts", "static", "text")

    def __init__(self, text: str, parts: list[_Part]) -> None:
        self.text = text
        self.parts = tuple(parts)
        # A template without references renders to itself: no per-request work at all.
        self.static: str | None = (
            "".join(parts) if all(isinstance(p, str) for p in parts) else None  # type: ignore[arg-type]
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p[1] for p in self.parts if not isinstance(p, str) and p[0] == "var")

    def render(
        self,
        lookup: Lookup,
        escape: Escape | None = None,
        captures: Sequence[str | None] | None = None,
    ) -> str:
        """The text with every reference resolved through `lookup` (a variable name -> value
        or None), each value passed through `escape(name, value)` when given."""
        if self.static is not None:
            return self.static
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            kind, name, default = part
            if kind == "cap":
                value: Any = None
                if captures is not None and name < len(captures):
                    value = captures[name]
            else:
                value = lookup(name)
                if value is None:
                    value = default
            if value is None or value == "":
                continue
            text = value if isinstance(value, str) else str(value)
            out.append(escape(name, text) if escape is not None else text)
        return "".join(out)


class VarTemplate(_Template):
    """APISIX's `core.utils.resolve_var` templates (proxy-rewrite, response-rewrite)."""

    __slots__ = ()

    def __init__(self, text: str, *, captures: bool = False) -> None:
        parts: list[_Part] = []
        pos = 0
        pattern = _VAR_OR_CAPTURE_REF if captures else _VAR_REF
        for m in pattern.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            pos = m.end()
            if captures and m.group(1) is not None:
                parts.append(("cap", int(m.group(1)), None))
                continue
            braced, bare = (m.group(2), m.group(3)) if captures else (m.group(1), m.group(2))
            if bare is not None:
                parts.append(("var", bare, None))
                continue
            segs = _DEFAULT_SPLIT.split(braced, maxsplit=1)
            parts.append(("var", segs[0], segs[1] if len(segs) > 1 else None))
        if pos < len(text):
            parts.append(text[pos:])
        super().__init__(text, parts)


class RedirectTemplate(_Template):
    """The redirect plugin's `uri` templates (its own, slightly different, parser)."""

    __slots__ = ()

    def __init__(self, text: str) -> None:
        parts: list[_Part] = []
        pos = 0
        for m in _REDIRECT_REF.finditer(text):
            if m.start() > pos:
                # A backslash that starts no `\\$name` matches none of redirect.lua's
                # alternatives, so gmatch skips it.
                parts.append(text[pos : m.start()].replace("\\", ""))
            pos = m.end()
            name = m.group(1) or m.group(2)
            parts.append(("var", name, None) if name else m.group(0))
        if pos < len(text):
            parts.append(text[pos:].replace("\\", ""))
        super().__init__(text, parts)


# --- regexes and ngx.re.sub templates ----------------------------------------------------------

# ngx.re options: a anchored, d DFA, D duplicate names, i caseless, j JIT, J JavaScript compat,
# m multiline, o compile once, s dotall, u/U UTF-8, x extended.
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_NO_EFFECT = frozenset("dDjJoauU")
_PCRE_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")


class Regex:
    """A compiled PCRE-style pattern with its ngx.re options; `text` says whether it works on
    str (URIs; bodies with the `u` option) or on bytes (response bodies)."""

    __slots__ = ("anchored", "pattern", "text")

    def __init__(self, pattern: re.Pattern[Any], anchored: bool, text: bool) -> None:
        self.pattern = pattern
        self.anchored = anchored
        self.text = text


def compile_regex(source: str, options: str = "jo", *, binary: bool = False) -> Regex:
    """Raises ValueError with a message for `ando validate`."""
    flags = re.ASCII  # PCRE without UCP: \w, \d, \s and \b are ASCII
    for ch in options:
        if ch in _FLAGS:
            flags |= _FLAGS[ch]
        elif ch not in _NO_EFFECT:
            raise ValueError(f"unknown regex option '{ch}' in {options!r}")
    text = not binary or "u" in options or "U" in options
    translated = _PCRE_NAMED_GROUP.sub("(?P<", source)
    try:
        if text:
            pattern: re.Pattern[Any] = re.compile(translated, flags)
        else:
            pattern = re.compile(translated.encode("utf-8"), flags)
    except re.error as e:
        raise ValueError(f"invalid regex {source!r}: {e}") from None
    return Regex(pattern, "a" in options, text)


class SubTemplate:
    """An ngx.re.sub / ngx.re.gsub replacement: literals, `$N` / `${N}` captures, `$$`."""

    __slots__ = ("parts", "static")

    def __init__(self, text: str) -> None:
        parts: list[str | int] = []
        buf: list[str] = []
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch != "$":
                buf.append(ch)
                i += 1
                continue
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt == "$":
                buf.append("$")
                i += 2
                continue
            if nxt == "{":
                end = text.find("}", i + 2)
                digits = text[i + 2 : end] if end != -1 else ""
                if end == -1:
                    raise ValueError(f"the closing bracket in {text!r} variable is missing")
                if not digits.isdigit() or not digits.isascii():
                    raise ValueError(f"invalid capturing variable name in {text!r}")
                i = end + 1
            elif nxt.isdigit() and nxt.isascii():
                j = i + 1
                while j < n and text[j].isdigit() and text[j].isascii():
                    j += 1
                digits = text[i + 1 : j]
                i = j
            else:
                raise ValueError(f"invalid capturing variable name in {text!r}")
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(int(digits))
        if buf:
            parts.append("".join(buf))
        self.parts = tuple(parts)
        self.static = (
            "".join(p for p in parts if isinstance(p, str))
            if not any(isinstance(p, int) for p in parts)
            else None
        )

    def expand(self, m: re.Match[AnyStr]) -> AnyStr:
        """The replacement for one match (a capture beyond the pattern's groups, or one that
        took no part in the match, is empty, as in nginx)."""
        binary = isinstance(m.string, bytes)
        out: list[Any] = []
        groups = m.re.groups
        for p in self.parts:
            if isinstance(p, int):
                if p <= groups:
                    g = m.group(p)
                    if g:
                        out.append(g)
            else:
                out.append(p.encode("utf-8") if binary else p)
        return (b"" if binary else "").join(out)  # type: ignore[return-value]


def substitute(regex: Regex, subject: AnyStr, template: SubTemplate, *, all: bool) -> AnyStr:
    """ngx.re.sub (`all=False`, first match only) or ngx.re.gsub (`all=True`). With the `a`
    option every match must start where the previous one ended (the first at 0)."""
    pattern = regex.pattern
    if not regex.anchored:
        return pattern.sub(template.expand, subject, count=0 if all else 1)
    out: list[Any] = []
    pos = 0
    while pos <= len(subject):
        m = pattern.match(subject, pos)
        if m is None:
            break
        out.append(template.expand(m))
        if m.end() == pos:  # an empty match: stop rather than loop
            break
        pos = m.end()
        if not all:
            break
    if not out:
        return subject
    out.append(subject[pos:])
    return (b"" if isinstance(subject, bytes) else "").join(out)  # type: ignore[return-value]


# --- percent-encoding -----------------------------------------------------------------------

_PATH_UNSAFE = re.compile(r"[\x00-\x20#?\x7f-\U0010ffff]|%(?![0-9A-Fa-f]{2})")
_VALUE_UNSAFE = re.compile(r"[\x00-\x20#%?\x7f-\U0010ffff]")
_QUERY_UNSAFE = re.compile(r"[\x00-\x20#\x7f-\U0010ffff]")
_LOCATION_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\U0010ffff]")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")


def _escape(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass"))


def encode_path(path: str) -> str:
    """A path as it may go on the wire: what nginx's ngx_escape_uri escapes, except a `%` that
    already starts an escape (Ando's paths keep the client's encoding)."""
    return _PATH_UNSAFE.sub(_escape, path) if _PATH_UNSAFE.search(path) else path


def encode_value(value: str) -> str:
    """A decoded variable value inside a path: escaped completely, `%` and `?` included."""
    return _VALUE_UNSAFE.sub(_escape, value) if _VALUE_UNSAFE.search(value) else value


def encode_query(query: str) -> str:
    """A query string as given, minus what would break the request line or end it early."""
    return _QUERY_UNSAFE.sub(_escape, query) if _QUERY_UNSAFE.search(query) else query


def encode_location(url: str) -> str:
    """A URL for a Location header: control characters (CR, LF, NUL, ...) and non-ASCII ones
    percent-encoded (UTF-8), so it can neither split the response nor break the header."""
    return _LOCATION_UNSAFE.sub(_escape, url) if _LOCATION_UNSAFE.search(url) else url


def header_wire(value: str) -> str:
    """A header value as the HTTP layer writes it (each char one byte): non-ASCII text goes out
    as its UTF-8 bytes, as nginx sends what the configuration (or a decoded argument) says."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


def unsafe_header_value(value: str) -> bool:
    """CR, LF or NUL: what would split or truncate a header line."""
    return _BAD_HEADER_VALUE.search(value) is not None


def valid_header_name(name: str) -> bool:
    """APISIX's core.utils.validate_header_field: visible ASCII, no ':'."""
    return bool(name) and all(32 < ord(c) < 127 and c != ":" for c in name)


def valid_header_value(value: Any) -> bool:
    """APISIX's core.utils.validate_header_value: a string holds no control or non-ASCII byte."""
    return not isinstance(value, str) or all(32 <= ord(c) < 127 for c in value)


def header_text(value: Any) -> str:
    """A header value from the config as Lua's tostring writes it (a YAML 1.0 is "1")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else format(value, ".14g")
    return str(value)


def request_uri(ctx: Any) -> str:
    """nginx's `$request_uri`: the path and query exactly as the client wrote them (for an
    absolute-form target, the part after the authority)."""
    target = ctx.var("request_uri") or ""
    if target.startswith("/"):
        return target
    query = ctx.query
    return ctx.path + ("?" + query if query else "")
