"""What the transform plugins share: PCRE-style regexes with ngx.re templates, the percent-encoding
a rewritten URI gets, and the header rules (`$var` templates are in ando.plugins.vartemplate).

Templates and regexes are compiled once per config (plugin `__init__`).

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

from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext, ResponseHead
from ando.plugins.vartemplate import Lookup, VarTemplate, lua_tostring

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

    def replace(self, subject: str, m: re.Match[str]) -> str:
        """`subject` with the match `m` (of a search in it) replaced: ngx.re.sub of the first
        match, as proxy-rewrite's and redirect's `regex_uri` apply it."""
        return subject[: m.start()] + self.expand(m) + subject[m.end() :]


def check_regex_pairs(conf: dict[str, Any], field: str) -> Problems:
    """`conf[field]`, when given, is [regex, template, ...] (proxy-rewrite's and redirect's
    `regex_uri`): an even count, regexes that compile, templates that parse."""
    pairs = conf.get(field)
    if pairs is None:
        return []
    if len(pairs) % 2:
        return [((field,), f"The length of {field} should be an even number")]
    problems: Problems = []
    for i in range(0, len(pairs), 2):
        try:
            compile_regex(pairs[i])
        except ValueError as e:
            problems.append(((field, i), str(e)))
        try:
            SubTemplate(pairs[i + 1])
        except ValueError as e:
            problems.append(((field, i + 1), str(e)))
    return problems


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


# --- header actions -------------------------------------------------------------------------

_VERBS = ("add", "set", "remove")


def is_new_headers_conf(headers: dict[str, Any]) -> bool:
    """APISIX's test: the action form when any of add/set/remove holds a table."""
    return any(isinstance(headers.get(v), dict | list) for v in _VERBS)


def check_headers(
    headers: dict[str, Any], *, add_is_list: bool = False, strict_values: bool = True
) -> Problems:
    """Header names and values the schema cannot judge (proxy-rewrite's; response-rewrite's
    `add` is a list of "Name: value" strings and APISIX does not check its plain values)."""
    problems: Problems = []
    if not headers:
        return [((), "must have at least 1 field(s)")]
    if not is_new_headers_conf(headers):
        for name, value in headers.items():
            if not valid_header_name(name):
                problems.append(((name,), "invalid field character in header"))
            elif strict_values and not valid_header_value(value):
                problems.append(((name,), "invalid value character in header"))
        return problems
    problems.extend(
        ((name,), "header names cannot be mixed with add, set and remove; move it under set")
        for name in headers
        if name not in _VERBS
    )
    for verb in _VERBS:
        block = headers.get(verb)
        if block is None:
            continue
        if not isinstance(block, dict | list):
            problems.append(((verb,), "expected the form of add, set and remove here"))
            continue
        if not block:
            problems.append(((verb,), "must have at least 1 item(s)"))
            continue
        if isinstance(block, dict):
            problems.extend(
                ((verb, name), "invalid field character in header")
                for name in block
                if not valid_header_name(name)
            )
        elif not (verb == "add" and add_is_list):
            problems.extend(
                ((verb, i), "invalid field character in header")
                for i, name in enumerate(block)
                if not valid_header_name(name)
            )
    return problems


_Templates = tuple[tuple[str, VarTemplate], ...]
# A target's (add, set, remove) header methods, called unbound (no bound method per request).
HeaderOps = tuple[
    Callable[[Any, str, str], Any], Callable[[Any, str, str], Any], Callable[[Any, str], Any]
]
REQUEST_HEADERS: HeaderOps = (
    RequestContext.add_header,
    RequestContext.set_header,
    RequestContext.remove_header,
)
RESPONSE_HEADERS: HeaderOps = (ResponseHead.add, ResponseHead.set, ResponseHead.remove)


def _header_templates(block: dict[str, Any] | None, captures: bool) -> _Templates:
    if not block:
        return ()
    return tuple(
        (name, VarTemplate(lua_tostring(v), captures=captures)) for name, v in block.items()
    )


class HeaderActions:
    """A `headers` configuration (`{name: value}`, or `{add, set, remove}`) applied as APISIX
    does in proxy-rewrite and response-rewrite: add, then set (a value that resolves to ""
    removes the header), then remove; values are `$var` templates."""

    __slots__ = ("add", "remove", "set")

    def __init__(
        self, add: _Templates = (), set_: _Templates = (), remove: Sequence[str] = ()
    ) -> None:
        self.add = add
        self.set = set_
        self.remove = tuple(remove)

    @classmethod
    def from_conf(
        cls,
        headers: dict[str, Any] | None,
        *,
        captures: bool = False,
        parse_add: Callable[[str], tuple[str, str] | None] | None = None,
    ) -> HeaderActions | None:
        """None without `headers`. `captures`: values may use the regex_uri captures (`$1`);
        `parse_add`: `add` is a list of items that this parses into (name, value), dropping
        those it returns None for."""
        if not headers:
            return None
        if not is_new_headers_conf(headers):
            return cls(set_=_header_templates(headers, captures))
        if parse_add is None:
            add = _header_templates(headers.get("add"), captures)
        else:
            parsed = (parse_add(item) for item in headers.get("add") or ())
            add = tuple((p[0], VarTemplate(p[1], captures=captures)) for p in parsed if p)
        set_ = _header_templates(headers.get("set"), captures)
        return cls(add, set_, headers.get("remove") or ())

    def apply(
        self,
        lookup: Lookup,
        target: Any,
        ops: HeaderOps,
        captures: Sequence[str | None] | None = None,
        *,
        refuse: bool,
    ) -> str | None:
        """Applies the actions to `target` through `ops` (REQUEST_HEADERS for the request a
        RequestContext sends upstream, RESPONSE_HEADERS for a ResponseHead). A value holding CR,
        LF or NUL is never sent: with `refuse` the first such header's name is returned at once
        (the caller refuses the request), else that header is skipped."""
        add, set_, remove = ops
        for name, template in self.add:
            value = template.render(lookup, None, captures)
            if value:
                if unsafe_header_value(value):
                    if refuse:
                        return name
                    continue
                add(target, name, header_wire(value))
        for name, template in self.set:
            value = template.render(lookup, None, captures)
            if not value:
                remove(target, name)
            elif not unsafe_header_value(value):
                set_(target, name, header_wire(value))
            elif refuse:
                return name
        for name in self.remove:
            remove(target, name)
        return None


def request_uri(ctx: Any) -> str:
    """nginx's `$request_uri`: the path and query exactly as the client wrote them (for an
    absolute-form target, the part after the authority)."""
    target = ctx.var("request_uri") or ""
    if target.startswith("/"):
        return target
    query = ctx.query
    return ctx.path + ("?" + query if query else "")
