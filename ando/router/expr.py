"""APISIX `vars` expressions, with the semantics of lua-resty-expr (`resty.expr.v1`, v1.3.x).

A rule is a list of expressions, AND-ed: `[["arg_name", "==", "json"], ["http_x", "~~", "^v2"]]`.
An expression is `[var, op, value]`, or `[var, "!", op, value]` to negate it. A group starts with
a logical operator and nests: `["OR", expr, expr, ...]`, `["AND", ...]`, `["!OR", ...]`,
`["!AND", ...]`; a list whose first element is a list is an implicit AND group.

Semantics mirrored from lua-resty-expr (lib/resty/expr/v1.lua, its t/ tests and README):

- An empty rule `[]` is always true. An empty nested list `[[]]` is an error ("rule too short").
- A rule whose first element is a string must be a logical group; a bare expression at the top
  (`["arg_k", "==", "v"]`) is an error ("rule should be wrapped inside brackets").
- A logical group needs at least two operands (`["OR", e]` is "rule too short").
- Operators are case-insensitive (`IN`, `HAS`) and so are logical operators (`or`).
- A missing variable is nil: `==` is false and `~=` is true (for string and number values),
  `>` `>=` `<` `<=` `~~` `~*` `in` `has` `ipmatch` are false; `!` flips each of these.
- `==` / `~=` with a number value convert the variable with Lua's `tonumber` first: "18", "18.0",
  " 18 " and "0x12" all equal 18; a non-numeric variable is never `==` and always `~=`.
- `==` / `~=` with a string value compare strings exactly: "18" is not "18.0", and a variable that
  is a number or a list never equals a string.
- `==` / `~=` with null compare with nil (upstream turns JSON null into nil): `["x", "==", null]`
  is true when `x` is missing, `["x", "~=", null]` when it is present.
- `>` `>=` `<` `<=` convert both sides with `tonumber`; if either is not a number the result is
  false (not an error), and `!` makes it true.
- `~~` / `~*` search (unanchored, like `ngx.re.find`) a string variable, `~*` ignoring case; a
  number variable is searched as Lua prints it ("%.14g").
- `in` is true when the variable equals one of the list items, compared as Lua's `==` does: a
  string never equals a number, so `["arg_x", "in", [1, 2]]` never matches a string argument.
- `has` is true when the variable is a list holding an item equal to the value (same rule).
- `ipmatch` takes an address, a CIDR or a list of them; a variable that is not a parsable address
  is false.
- A two-element expression `[var, value]` is the legacy form of `[var, "==", value]`, and upstream
  lower-cases `value` before comparing (it runs through `string.lower` as if it were an
  operator): `["arg_k", "V"]` matches "v", not "V". Ando keeps that quirk so a route matches the
  same requests on both gateways.

Where upstream accepts a rule that can never mean what it says, Ando refuses it at load time with
a clear message instead (the whole file is refused, not the route silently dropped): more than
four elements, a non-string or empty variable name, a regex that is not a string, `in` without a
list, a value for `>` that is not a number, booleans/lists/objects as `==` values, and so on.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from ando.router.ipset import IPSet, IPSetError

__all__ = ["OPERATORS", "Expr", "ExprError", "Lookup", "compile_expr"]

Lookup = Callable[[str], object]
_Fn = Callable[[Lookup], bool]
_Path = tuple[int, ...]

OPERATORS: tuple[str, ...] = ("==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch")
_LOGIC = frozenset({"AND", "OR", "!AND", "!OR"})
_NOT = "!"
_MAX_DEPTH = 32

# Spellings from other languages that difflib would map badly ('=' is as close to '~=' as '==').
_ALIASES = {
    "=": "==",
    "===": "==",
    "eq": "==",
    "!=": "~=",
    "<>": "~=",
    "ne": "~=",
    "!==": "~=",
    "=~": "~~",
    "~": "~~",
    "regex": "~~",
    "gt": ">",
    "ge": ">=",
    "=>": ">=",
    "lt": "<",
    "le": "<=",
    "=<": "<=",
    "contains": "has",
    "ip": "ipmatch",
}


class ExprError(ValueError):
    """A malformed `vars` rule. `path` is the index path inside the rule to the offending
    element, so the caller can point at it: `routes[2].vars[1][1]: unknown operator '=~'`."""

    def __init__(self, path: _Path, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = "".join(f"[{i}]" for i in self.path)
        return f"{where}: {self.message}" if where else self.message


class Expr:
    """A compiled rule. `evaluate(lookup)` is a plain closure stored on the instance (not a
    method), so a call is one Python call with no parsing, allocation or regex compiling;
    `variables` lists the names it reads so a route can precompute what it needs."""

    __slots__ = ("evaluate", "variables")

    evaluate: _Fn
    variables: frozenset[str]

    def __init__(self, evaluate: _Fn, variables: frozenset[str]) -> None:
        self.evaluate = evaluate
        self.variables = variables

    def __repr__(self) -> str:
        return f"Expr(variables={sorted(self.variables)!r})"


# ---------------------------------------------------------------------------------------------
# Lua value semantics

_LUA_SPACE = " \t\n\v\f\r"
_DEC = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_BIN = re.compile(r"([+-]?)0[bB]([01]+)")
_SPECIAL = re.compile(r"([+-]?)(?:(inf(?:inity)?)|nan)", re.IGNORECASE)


def _str_tonumber(text: str) -> float | None:
    """LuaJIT's `tonumber(s)` (lj_strscan with STRSCAN_OPT_TONUM): surrounding ASCII
    whitespace, decimal with exponent, hex with optional fraction and `p` exponent, `0b`
    binary, `inf`/`infinity`/`nan`; nothing else (no `1_000`, no non-ASCII digits)."""
    if _DEC.fullmatch(text) is None:
        text = text.strip(_LUA_SPACE)
        if _DEC.fullmatch(text) is None:
            return _str_tonumber_rare(text)
    return float(text)


def _str_tonumber_rare(text: str) -> float | None:
    if _HEX.fullmatch(text):
        try:
            return float.fromhex(text)
        except OverflowError:
            return -math.inf if text[0] == "-" else math.inf
    m = _BIN.fullmatch(text)
    if m:
        digits = m.group(2).lstrip("0")
        if len(digits) > 64:
            return None
        value = float(int(digits or "0", 2))
        return -value if m.group(1) == "-" else value
    m = _SPECIAL.fullmatch(text)
    if m:
        if m.group(2) is None:
            return math.nan
        return -math.inf if m.group(1) == "-" else math.inf
    return None


def _tonumber(value: object) -> float | None:
    """Lua's `tonumber` on a variable: strings are parsed, numbers kept (as doubles, like Lua),
    anything else (nil, booleans, lists) is nil."""
    if isinstance(value, str):
        return _str_tonumber(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


def _num2str(value: float) -> str:
    """How Lua prints a number (`%.14g`), e.g. when a number meets a regex or `string.lower`."""
    return format(float(value), ".14g")


_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TO_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _lower(text: str) -> str:
    """Lua's string.lower: ASCII letters only, as in the C locale OpenResty runs in."""
    return text.translate(_TO_LOWER)


def _upper(text: str) -> str:
    return text.translate(_TO_UPPER)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: object) -> str:
    """A value named in JSON terms, since that is how the user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean true" if value else "boolean false"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _suggest(op: str) -> str:
    key = _lower(op)
    alias = _ALIASES.get(key)
    if alias is None:
        close = difflib.get_close_matches(key, OPERATORS, n=1, cutoff=0.5)
        alias = close[0] if close else None
    if alias is not None:
        return f"; did you mean {alias!r}?"
    return "; expected one of " + ", ".join(OPERATORS)


# ---------------------------------------------------------------------------------------------
# Leaf factories: each returns a closure with the negation folded in (`result is not neg`).


def _eq_str(name: str, value: str, neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        return (lookup(name) == value) is not neg

    return f


def _eq_num(name: str, value: float, neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        return (_tonumber(lookup(name)) == value) is not neg

    return f


def _eq_nil(name: str, neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        return (lookup(name) is None) is not neg

    return f


_CMP = frozenset({">", ">=", "<", "<="})


def _compare(name: str, op: str, value: float, neg: bool) -> _Fn:
    # One closure per operator keeps the hot path free of an extra call through a table.
    if op == ">":

        def f(lookup: Lookup) -> bool:
            n = _tonumber(lookup(name))
            return (n is not None and n > value) is not neg

    elif op == ">=":

        def f(lookup: Lookup) -> bool:
            n = _tonumber(lookup(name))
            return (n is not None and n >= value) is not neg

    elif op == "<":

        def f(lookup: Lookup) -> bool:
            n = _tonumber(lookup(name))
            return (n is not None and n < value) is not neg

    else:

        def f(lookup: Lookup) -> bool:
            n = _tonumber(lookup(name))
            return (n is not None and n <= value) is not neg

    return f


def _regex(name: str, pattern: re.Pattern[str], neg: bool) -> _Fn:
    search = pattern.search

    def f(lookup: Lookup) -> bool:
        v = lookup(name)
        if isinstance(v, str):
            return (search(v) is not None) is not neg
        if _is_number(v):
            return (search(_num2str(v)) is not None) is not neg  # type: ignore[arg-type]
        return neg

    return f


def _in(name: str, strs: frozenset[str], nums: frozenset[float], neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        v = lookup(name)
        if isinstance(v, str):
            return (v in strs) is not neg
        if _is_number(v):
            return (v in nums) is not neg
        return neg

    return f


def _has_str(name: str, value: str, neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        v = lookup(name)
        return (isinstance(v, (list, tuple)) and value in v) is not neg

    return f


def _has_num(name: str, value: float, neg: bool) -> _Fn:
    def f(lookup: Lookup) -> bool:
        v = lookup(name)
        if isinstance(v, (list, tuple)):
            for item in v:
                if _is_number(item) and item == value:
                    return not neg
        return neg

    return f


def _ipmatch(name: str, ips: IPSet, neg: bool) -> _Fn:
    contains = ips.contains

    def f(lookup: Lookup) -> bool:
        return contains(lookup(name)) is not neg  # type: ignore[arg-type]

    return f


# ---------------------------------------------------------------------------------------------
# Groups


def _all(fns: Sequence[_Fn]) -> _Fn:
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns

        def f2(lookup: Lookup) -> bool:
            return a(lookup) and b(lookup)

        return f2
    items = tuple(fns)

    def f(lookup: Lookup) -> bool:
        # A plain loop, not all(<generator>): no generator object per evaluation.
        for fn in items:  # noqa: SIM110
            if not fn(lookup):
                return False
        return True

    return f


def _any(fns: Sequence[_Fn]) -> _Fn:
    if len(fns) == 2:
        a, b = fns

        def f2(lookup: Lookup) -> bool:
            return a(lookup) or b(lookup)

        return f2
    items = tuple(fns)

    def f(lookup: Lookup) -> bool:
        for fn in items:  # noqa: SIM110 (no generator object per evaluation)
            if fn(lookup):
                return True
        return False

    return f


def _negate(fn: _Fn) -> _Fn:
    def f(lookup: Lookup) -> bool:
        return not fn(lookup)

    return f


def _always_true(lookup: Lookup) -> bool:
    return True


# ---------------------------------------------------------------------------------------------
# Compiler


class _Compiler:
    """Walks the rule once, building closures and collecting variable names."""

    __slots__ = ("names",)

    def __init__(self) -> None:
        self.names: set[str] = set()

    def node(self, node: object, path: _Path, depth: int) -> _Fn:
        if depth > _MAX_DEPTH:
            raise ExprError(path, f"rule is nested too deeply (more than {_MAX_DEPTH} levels)")
        if not isinstance(node, list):
            hint = ""
            if isinstance(node, str) and _upper(node) in _LOGIC:
                hint = f" ({node!r} must be the first element of its group)"
            raise ExprError(
                path,
                'expected an expression [var, op, value] or a group ["OR", ...], '
                f"got {_describe(node)}{hint}",
            )
        if not node:
            raise ExprError(path, "empty expression")
        first = node[0]
        if isinstance(first, list):
            return _all([self.node(child, (*path, i), depth + 1) for i, child in enumerate(node)])
        if isinstance(first, str) and _upper(first) in _LOGIC:
            return self.group(_upper(first), node, path, depth)
        return self.leaf(node, path)

    def group(self, op: str, node: list[Any], path: _Path, depth: int) -> _Fn:
        if len(node) < 3:
            count = len(node) - 1
            raise ExprError(path, f"{op!r} needs at least two expressions, got {count}")
        fns = [self.node(child, (*path, i), depth + 1) for i, child in enumerate(node) if i]
        if op == "AND":
            return _all(fns)
        if op == "OR":
            return _any(fns)
        if op == "!AND":
            return _negate(_all(fns))
        return _negate(_any(fns))

    def leaf(self, node: list[Any], path: _Path) -> _Fn:
        n = len(node)
        name = node[0]
        if not isinstance(name, str):
            raise ExprError((*path, 0), f"variable name must be a string, got {_describe(name)}")
        if not name:
            raise ExprError((*path, 0), "variable name must not be empty")
        name = str(name)
        if n == 2:
            return self.legacy(name, node[1], path)
        if n not in (3, 4):
            raise ExprError(
                path,
                'expected [var, op, value] or [var, "!", op, value], '
                f"got {n} element{'s' if n != 1 else ''}",
            )
        neg = n == 4
        if neg and node[1] != _NOT:
            raise ExprError(
                (*path, 1),
                f'expected "!" before the operator of a four-element expression, '
                f"got {_describe(node[1])}",
            )
        op_index = 2 if neg else 1
        op = node[op_index]
        if not isinstance(op, str):
            raise ExprError((*path, op_index), f"operator must be a string, got {_describe(op)}")
        lop = _lower(op)
        if lop not in OPERATORS:
            if op == _NOT:
                raise ExprError(
                    (*path, op_index),
                    "'!' must be followed by an operator and a value: [var, \"!\", op, value]",
                )
            raise ExprError((*path, op_index), f"unknown operator {op!r}{_suggest(op)}")
        self.names.add(name)
        return self.operator(name, lop, node[op_index + 1], neg, (*path, op_index + 1))

    def legacy(self, name: str, value: object, path: _Path) -> _Fn:
        """`[var, value]`: upstream runs `value` through string.lower, then compares with ==."""
        if isinstance(value, str):
            text = _lower(value)
            if text in OPERATORS:
                raise ExprError(path, f"operator {value!r} has no value: expected [var, op, value]")
        elif _is_number(value):
            text = _num2str(value)  # type: ignore[arg-type]
        else:
            raise ExprError(
                (*path, 1),
                "a two-element expression [var, value] needs a string or number value, "
                f"got {_describe(value)}",
            )
        self.names.add(name)
        return _eq_str(name, text, False)

    def operator(self, name: str, op: str, value: object, neg: bool, vpath: _Path) -> _Fn:
        if op in ("==", "~="):
            neg = neg is not (op == "~=")
            if value is None:
                return _eq_nil(name, neg)
            if isinstance(value, str):
                return _eq_str(name, str(value), neg)
            if _is_number(value):
                return _eq_num(name, float(value), neg)  # type: ignore[arg-type]
            raise ExprError(
                vpath, f"{op!r} compares with a string, a number or null, got {_describe(value)}"
            )
        if op in _CMP:
            number = _tonumber(value) if isinstance(value, str) or _is_number(value) else None
            if number is None or math.isnan(number):
                raise ExprError(vpath, f"{op!r} needs a number, got {_describe(value)}")
            return _compare(name, op, number, neg)
        if op in ("~~", "~*"):
            if not isinstance(value, str):
                raise ExprError(
                    vpath, f"{op!r} needs a regular expression string, got {_describe(value)}"
                )
            # ngx.re without the "u" flag works on bytes: \d, \w, \s and case folding are ASCII.
            flags = re.ASCII | (re.IGNORECASE if op == "~*" else 0)
            try:
                pattern = re.compile(value, flags)
            except (re.error, OverflowError, RecursionError, ValueError) as exc:
                raise ExprError(vpath, f"bad regular expression {value!r}: {exc}") from None
            return _regex(name, pattern, neg)
        if op == "in":
            if not isinstance(value, list):
                raise ExprError(vpath, f"'in' needs a list of values, got {_describe(value)}")
            strs: set[str] = set()
            nums: set[float] = set()
            for i, item in enumerate(value):
                if isinstance(item, str):
                    strs.add(str(item))
                elif _is_number(item):
                    nums.add(float(item))
                else:
                    raise ExprError(
                        (*vpath, i),
                        f"'in' list items must be strings or numbers, got {_describe(item)}",
                    )
            return _in(name, frozenset(strs), frozenset(nums), neg)
        if op == "has":
            if isinstance(value, str):
                return _has_str(name, str(value), neg)
            if _is_number(value):
                return _has_num(name, float(value), neg)  # type: ignore[arg-type]
            raise ExprError(vpath, f"'has' needs a string or a number, got {_describe(value)}")
        # ipmatch
        single = isinstance(value, str)
        if not (single and value) and not (isinstance(value, list) and value):
            raise ExprError(
                vpath,
                "'ipmatch' needs an IP address, a CIDR or a non-empty list of them, "
                f"got {_describe(value)}",
            )
        try:
            ips = IPSet.parse([value] if single else value)  # type: ignore[list-item,arg-type]
        except IPSetError as exc:
            raise ExprError(vpath if single else (*vpath, exc.index), str(exc)) from None
        return _ipmatch(name, ips, neg)


def compile_expr(rule: Any) -> Expr:
    """Validate and compile a `vars` rule once per config snapshot.

    Raises ExprError with the index path of the offending element inside `rule`.
    """
    if not isinstance(rule, list):
        raise ExprError((), f"expected a list of expressions, got {_describe(rule)}")
    if not rule:
        return Expr(_always_true, frozenset())
    first = rule[0]
    if not isinstance(first, list) and not (isinstance(first, str) and _upper(first) in _LOGIC):
        if isinstance(first, str):
            raise ExprError(
                (),
                "the rule must be a list of expressions: wrap this expression in another list, "
                '[[var, op, value]], or start it with "AND"/"OR"',
            )
        raise ExprError((0,), f"expected an expression [var, op, value], got {_describe(first)}")
    compiler = _Compiler()
    fn = compiler.node(rule, (), 0)
    return Expr(fn, frozenset(compiler.names))
