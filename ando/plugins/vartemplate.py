"""`$var` templates: the one implementation of APISIX's variable interpolation for every plugin.

Templates are parsed once per config (plugin `__init__`), so a request only looks variables up
and joins strings; a template without references renders to its text with no work at all.

- `VarTemplate` follows APISIX's `core.utils.resolve_var`: `$name` (letters, digits, `_` and
  `.`), `${name}` and `${name ?? default}` (ngx.re without the `u` option: ASCII names and
  spaces); a missing variable is the empty string (or the default); `\\$` is not a reference
  (the backslash stays, as in APISIX). With `captures=True` (proxy-rewrite's header values)
  `$1` / `${1}` are the regex_uri captures instead (`resolve_var_with_captures`).
  `resolve` also counts the references that resolved (a value, or a default), as resolve_var's
  `n_resolved`, which the limit plugins' `var_combination` keys need.
- `RedirectTemplate` follows redirect's own parser: `$name` / `${name}` with names of letters,
  digits and `_`; `\\$name` stays as written.
- `resolve_var(text, lookup)` for text only known per request (mocking's generated bodies).
- `lua_tostring`: a configuration scalar as Lua's tostring writes it (header values, bodies).

Users: proxy-rewrite, response-rewrite, redirect, fault-injection, mocking, api-breaker and the
limit-* keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

Lookup = Callable[[str], Any]
Escape = Callable[[str, str], str]

# core.utils.resolve_var: (?<!\\)\$(\{\s*([^}]+?)\s*\}|([\w\.]+)); with captures first:
# (?<!\\)\$\{?(\d+)\}?
_VAR_REF = re.compile(r"(?<!\\)\$(?:\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII)
_VAR_OR_CAPTURE_REF = re.compile(
    r"(?<!\\)\$(?:\{?([0-9]+)\}?|\{\s*([^}]+?)\s*\}|([\w.]+))", re.ASCII
)
_DEFAULT_SPLIT = re.compile(r"\s*\?\?\s*", re.ASCII)
# redirect.lua: (\\\$[0-9a-zA-Z_]+) | \$\{([0-9a-zA-Z_]+)\} | \$([0-9a-zA-Z_]+) | (\$|[^$\\]+)
_REDIRECT_REF = re.compile(r"\\\$[0-9a-zA-Z_]+|\$\{([0-9a-zA-Z_]+)\}|\$([0-9a-zA-Z_]+)")

# A part is a literal str, or (kind, name, default): kind "var" or "cap" (a capture number).
_Part = str | tuple[str, Any, str | None]


def lua_tostring(value: object) -> str:
    """A JSON scalar as Lua's tostring prints it (a YAML `1.0` header value is "1")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else format(value, ".14g")
    return str(value)


def _var_part(spec: str) -> _Part:
    """`name` or `name ?? default`: resolve_var splits at every `??` and keeps the second
    segment as the default."""
    segs = _DEFAULT_SPLIT.split(spec)
    return ("var", segs[0], segs[1] if len(segs) > 1 else None)


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
        return self.resolve(lookup, escape, captures)[0]

    def resolve(
        self,
        lookup: Lookup,
        escape: Escape | None = None,
        captures: Sequence[str | None] | None = None,
    ) -> tuple[str, int]:
        """`render`, and how many variable references resolved (to a value, even an empty
        one, or to their `??` default)."""
        if self.static is not None:
            return self.static, 0
        out: list[str] = []
        resolved = 0
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
                if value is not None:
                    resolved += 1
            if value is None or value == "":
                continue
            text = value if isinstance(value, str) else lua_tostring(value)
            out.append(escape(name, text) if escape is not None else text)
        return "".join(out), resolved


class VarTemplate(_Template):
    """APISIX's `core.utils.resolve_var` templates."""

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
            parts.append(("var", bare, None) if bare is not None else _var_part(braced))
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


def resolve_var(text: str, lookup: Lookup) -> str:
    """`core.utils.resolve_var(text, ctx.var)` for a text made per request (parsed each time:
    prefer a `VarTemplate` made once for configured text)."""
    if "$" not in text:
        return text
    return VarTemplate(text).render(lookup)
