"""ando.router.expr: APISIX `vars` with lua-resty-expr's semantics, and its load-time errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ando.router.expr import OPERATORS, Expr, ExprError, compile_expr

# Variables every evaluation case sees; a name absent here is a missing variable (nil).
VARS: dict[str, object] = {
    "arg_name": "json",
    "arg_age": "18",
    "arg_float": "18.5",
    "arg_hex": "0x12",
    "arg_spaced": " 18 ",
    "arg_word": "aa",
    "arg_empty": "",
    "http_x_ver": "v12",
    "http_x_mixed": "Hello World",
    "remote_addr": "10.1.2.3",
    "remote_v6": "2001:db8::5",
    "remote_mapped": "::ffff:10.1.2.3",
    "num": 18,
    "big": 12345678901234567890,
    "roots": ["repo", "user"],
    "nums": [1, 2],
}


def lookup(name: str) -> object:
    return VARS.get(name)


# (rule, expected) — the rule's single expression is evaluated against VARS.
CASES: list[tuple[Any, bool]] = [
    # empty rule: always true
    ([], True),
    # == with a string value: exact string comparison
    ([["arg_name", "==", "json"]], True),
    ([["arg_name", "==", "JSON"]], False),
    ([["arg_age", "==", "18.0"]], False),
    ([["num", "==", "18"]], False),  # a number variable never equals a string
    ([["roots", "==", "repo"]], False),
    ([["missing", "==", "json"]], False),
    ([["arg_empty", "==", ""]], True),
    # == with a number value: tonumber(variable) first
    ([["arg_age", "==", 18]], True),
    ([["arg_age", "==", 18.0]], True),
    ([["arg_hex", "==", 18]], True),
    ([["arg_spaced", "==", 18]], True),
    ([["arg_float", "==", 18]], False),
    ([["arg_word", "==", 18]], False),
    ([["num", "==", 18]], True),
    ([["missing", "==", 18]], False),
    ([["roots", "==", 18]], False),
    # == / ~= with null compare with nil
    ([["missing", "==", None]], True),
    ([["arg_name", "==", None]], False),
    ([["missing", "~=", None]], False),
    ([["arg_name", "~=", None]], True),
    # ~=
    ([["arg_name", "~=", "json"]], False),
    ([["arg_name", "~=", "xml"]], True),
    ([["missing", "~=", "json"]], True),
    ([["arg_age", "~=", 18]], False),
    ([["arg_age", "~=", 16]], True),
    ([["arg_word", "~=", 18]], True),  # non-numeric is always ~= a number
    ([["missing", "~=", 18]], True),
    ([["arg_age", "~=", "18"]], False),
    # > >= < <=: both sides through tonumber, false when either is not a number
    ([["arg_age", ">", 10]], True),
    ([["arg_age", ">", 18]], False),
    ([["arg_age", ">", "10"]], True),  # a numeric string value is converted at load time
    ([["arg_age", ">", "0x10"]], True),
    ([["arg_age", ">=", 18]], True),
    ([["arg_age", ">=", 19]], False),
    ([["arg_age", "<", 19]], True),
    ([["arg_age", "<", 18]], False),
    ([["arg_age", "<=", 18]], True),
    ([["arg_age", "<=", 17.5]], False),
    ([["arg_float", ">", 18]], True),
    ([["arg_hex", ">", 17]], True),
    ([["arg_spaced", "<", 19]], True),
    ([["num", ">", 17]], True),
    ([["big", ">", 1e19]], True),
    ([["arg_word", ">", 10]], False),
    ([["arg_word", "<", 10]], False),
    ([["arg_empty", "<", 10]], False),
    ([["missing", ">", 10]], False),
    ([["missing", "<=", 10]], False),
    ([["roots", ">", 0]], False),
    # ~~: unanchored regex search
    ([["http_x_ver", "~~", "^v[0-9]+$"]], True),
    ([["http_x_ver", "~~", "[0-9]"]], True),
    ([["http_x_ver", "~~", "^V"]], False),
    ([["http_x_mixed", "~~", "world"]], False),
    ([["num", "~~", "^18$"]], True),  # a number is searched as Lua prints it
    ([["missing", "~~", ".*"]], False),
    ([["roots", "~~", ".*"]], False),
    # ~*: case-insensitive
    ([["http_x_mixed", "~*", "world"]], True),
    ([["http_x_ver", "~*", "^V1"]], True),
    ([["http_x_mixed", "~*", "^world"]], False),
    ([["missing", "~*", ".*"]], False),
    # in: Lua == against each item, so strings never equal numbers
    ([["arg_name", "in", ["xml", "json"]]], True),
    ([["arg_name", "in", ["xml", "yaml"]]], False),
    ([["arg_name", "in", []]], False),
    ([["arg_age", "in", [18, 19]]], False),
    ([["num", "in", [18, 19]]], True),
    ([["num", "in", [18.0]]], True),
    ([["num", "in", ["18"]]], False),
    ([["missing", "in", ["json"]]], False),
    ([["roots", "in", ["repo"]]], False),
    # has: the variable is a list holding the value
    ([["roots", "has", "repo"]], True),
    ([["roots", "has", "org"]], False),
    ([["nums", "has", 2]], True),
    ([["nums", "has", "2"]], False),
    ([["roots", "has", 1]], False),
    ([["arg_name", "has", "json"]], False),  # a string is not a list
    ([["missing", "has", "repo"]], False),
    # ipmatch: one address/CIDR or a list; v4, v6 and IPv4-mapped
    ([["remote_addr", "ipmatch", "10.0.0.0/8"]], True),
    ([["remote_addr", "ipmatch", "10.1.2.3"]], True),
    ([["remote_addr", "ipmatch", ["192.168.0.0/16", "10.1.2.0/24"]]], True),
    ([["remote_addr", "ipmatch", ["192.168.0.0/16", "10.1.3.0/24"]]], False),
    ([["remote_v6", "ipmatch", "2001:db8::/32"]], True),
    ([["remote_v6", "ipmatch", "2001:db9::/32"]], False),
    ([["remote_v6", "ipmatch", "10.0.0.0/8"]], False),
    ([["remote_mapped", "ipmatch", "10.0.0.0/8"]], True),
    ([["arg_name", "ipmatch", "0.0.0.0/0"]], False),
    ([["missing", "ipmatch", "0.0.0.0/0"]], False),
    ([["num", "ipmatch", "0.0.0.0/0"]], False),
    # operators are case-insensitive
    ([["arg_name", "IN", ["json"]]], True),
    ([["roots", "HAS", "repo"]], True),
    ([["remote_addr", "IPMatch", "10.0.0.0/8"]], True),
    # negation flips every operator, including on a missing variable
    ([["arg_name", "!", "==", "json"]], False),
    ([["arg_name", "!", "~=", "json"]], True),
    ([["missing", "!", "==", "json"]], True),
    ([["missing", "!", "==", 18]], True),
    ([["missing", "!", "~=", 18]], False),
    ([["missing", "!", "==", None]], False),
    ([["arg_age", "!", ">", 15]], False),
    ([["arg_age", "!", ">", 20]], True),
    ([["arg_word", "!", ">", 10]], True),
    ([["missing", "!", ">=", 10]], True),
    ([["missing", "!", "<", 10]], True),
    ([["missing", "!", "<=", 10]], True),
    ([["http_x_ver", "!", "~~", "^v"]], False),
    ([["missing", "!", "~~", "^v"]], True),
    ([["http_x_mixed", "!", "~*", "WORLD"]], False),
    ([["missing", "!", "~*", "x"]], True),
    ([["arg_name", "!", "in", ["json"]]], False),
    ([["missing", "!", "in", ["json"]]], True),
    ([["roots", "!", "has", "repo"]], False),
    ([["missing", "!", "has", "repo"]], True),
    ([["nums", "!", "has", 3]], True),
    ([["remote_addr", "!", "ipmatch", "10.0.0.0/8"]], False),
    ([["missing", "!", "ipmatch", "10.0.0.0/8"]], True),
    # the legacy two-element form is ==, with the value lower-cased as upstream does
    ([["arg_name", "json"]], True),
    ([["arg_name", "JSON"]], True),
    ([["http_x_mixed", "Hello World"]], False),
    ([["arg_age", 18]], True),
    ([["arg_age", 18.0]], True),
    ([["num", 18]], False),
    ([["missing", "json"]], False),
    # implicit AND
    ([["arg_name", "==", "json"], ["arg_age", ">", 10]], True),
    ([["arg_name", "==", "json"], ["arg_age", ">", 20]], False),
    ([["arg_name", "==", "xml"], ["arg_age", ">", 10]], False),
    ([["arg_name", "==", "json"], ["arg_age", ">", 10], ["roots", "has", "repo"]], True),
    ([["arg_name", "==", "json"], ["arg_age", ">", 10], ["roots", "has", "org"]], False),
    # logical groups and nesting
    (["AND", ["arg_name", "==", "json"], ["arg_age", ">", 10]], True),
    (["AND", ["arg_name", "==", "json"], ["arg_age", ">", 20]], False),
    (["OR", ["arg_name", "==", "xml"], ["arg_age", ">", 10]], True),
    (["OR", ["arg_name", "==", "xml"], ["arg_age", ">", 20]], False),
    (["OR", ["arg_name", "==", "xml"], ["arg_age", ">", 20], ["num", "==", 18]], True),
    (["OR", ["arg_name", "==", "xml"], ["arg_age", ">", 20], ["num", "==", 19]], False),
    (["!AND", ["arg_name", "==", "json"], ["arg_age", ">", 10]], False),
    (["!AND", ["arg_name", "==", "json"], ["arg_age", ">", 20]], True),
    (["!OR", ["arg_name", "==", "xml"], ["arg_age", ">", 20]], True),
    (["!OR", ["arg_name", "==", "xml"], ["arg_age", ">", 10]], False),
    (["or", ["arg_name", "==", "xml"], ["arg_age", ">", 10]], True),
    (["!and", ["arg_name", "==", "json"], ["arg_age", ">", 20]], True),
    # README example: not (name == json and (weight > 10 or not height > 15))
    (
        ["!AND", ["arg_name", "==", "json"], ["OR", ["arg_age", ">", 20], ["num", "!", ">", 15]]],
        True,
    ),
    (
        ["!AND", ["arg_name", "==", "json"], ["OR", ["arg_age", ">", 10], ["num", "!", ">", 15]]],
        False,
    ),
    (
        ["AND", ["arg_name", "==", "json"], ["!OR", ["arg_age", ">", 20], ["missing", "==", "x"]]],
        True,
    ),
    # groups inside an implicit AND, and lists of lists as implicit AND groups
    ([["arg_name", "==", "json"], ["OR", ["arg_age", "<", 10], ["num", "==", 18]]], True),
    ([["arg_name", "==", "json"], ["OR", ["arg_age", "<", 10], ["num", "==", 19]]], False),
    ([[["arg_name", "==", "json"], ["num", "==", 18]]], True),
    (["OR", [["arg_name", "==", "json"], ["num", "==", 19]], ["arg_age", "==", "18"]], True),
    (["OR", [["arg_name", "==", "json"], ["num", "==", 19]], ["arg_age", "==", "17"]], False),
    (
        [
            "OR",
            ["AND", ["arg_name", "==", "xml"], ["num", "==", 18]],
            ["!OR", ["missing", "~=", None], ["arg_age", "<", 10]],
        ],
        True,
    ),
]


@pytest.mark.parametrize(("rule", "expected"), CASES)
def test_evaluate(rule: Any, expected: bool) -> None:
    assert compile_expr(rule).evaluate(lookup) is expected


# (variable value, matches `[v, "==", 16]`) — LuaJIT's tonumber, the rule behind == number and >.
TONUMBER: list[tuple[object, bool]] = [
    ("16", True),
    ("16.0", True),
    ("016", True),
    ("+16", True),
    ("1.6e1", True),
    ("1.6E+1", True),
    ("160e-1", True),
    ("16.", True),
    ("0x10", True),
    ("0X10", True),
    ("0x1p4", True),
    ("0x20.0p-1", True),
    ("0b10000", True),
    (" \t16\n", True),
    ("16 ", True),
    (16, True),
    (16.0, True),
    ("1_6", False),
    ("١٦", False),  # non-ASCII digits
    ("16\x00", False),
    ("16a", False),
    ("0x", False),
    ("0b102", False),
    ("- 16", False),
    ("16L", False),
    ("16i", False),
    ("", False),
    (".", False),
    (True, False),
    (None, False),
    (["16"], False),
]


@pytest.mark.parametrize(("value", "expected"), TONUMBER)
def test_lua_tonumber(value: object, expected: bool) -> None:
    ex = compile_expr([["v", "==", 16]])
    assert ex.evaluate({"v": value}.get) is expected
    assert compile_expr([["v", "~=", 16]]).evaluate({"v": value}.get) is not expected


@pytest.mark.parametrize(
    ("value", "gt", "lt"),
    [
        ("inf", True, False),
        ("-Infinity", False, True),
        ("nan", False, False),
        ("NaN", False, False),
        ("1e999", True, False),
        ("-.5", False, True),
    ],
)
def test_lua_tonumber_specials(value: str, gt: bool, lt: bool) -> None:
    assert compile_expr([["v", ">", 0]]).evaluate({"v": value}.get) is gt
    assert compile_expr([["v", "<", 0]]).evaluate({"v": value}.get) is lt


def test_regex_is_ascii_like_pcre_without_utf() -> None:
    ex = compile_expr([["v", "~~", r"^\d+$"]])
    assert ex.evaluate({"v": "123"}.get)
    assert not ex.evaluate({"v": "١٢٣"}.get)


def test_variables() -> None:
    ex = compile_expr(
        [
            ["arg_a", "==", "1"],
            ["OR", ["http_b", "~~", "x"], ["arg_a", "!", "in", ["2"]]],
            [["cookie_c", "c"]],
        ]
    )
    assert ex.variables == frozenset({"arg_a", "http_b", "cookie_c"})
    assert compile_expr([]).variables == frozenset()


def test_lookup_called_only_for_needed_variables() -> None:
    seen: list[str] = []

    def tracing(name: str) -> object:
        seen.append(name)
        return None

    compile_expr([["a", "==", "x"], ["b", "==", "y"]]).evaluate(tracing)
    assert seen == ["a"]  # AND stops at the first false
    seen.clear()
    compile_expr(["OR", ["a", "==", None], ["b", "==", "y"]]).evaluate(tracing)
    assert seen == ["a"]  # OR stops at the first true


def test_expr_is_slotted() -> None:
    ex = compile_expr([["a", "==", "x"]])
    assert isinstance(ex, Expr)
    assert not hasattr(ex, "__dict__")
    assert repr(ex) == "Expr(variables=['a'])"


def test_yaml_subclasses_are_accepted() -> None:
    class Seq(list):  # type: ignore[type-arg]
        pass

    class Text(str):
        pass

    ex = compile_expr(Seq([Seq([Text("arg_name"), Text("=="), Text("json")])]))
    assert ex.evaluate(lookup)


# (rule, path, message)
ERRORS: list[tuple[Any, tuple[int, ...], str]] = [
    # the rule itself
    (None, (), "expected a list of expressions, got null"),
    ("arg_name", (), "expected a list of expressions, got string 'arg_name'"),
    ({"arg_name": "json"}, (), "expected a list of expressions, got an object"),
    (
        ["arg_name", "==", "json"],
        (),
        "the rule must be a list of expressions: wrap this expression in another list, "
        '[[var, op, value]], or start it with "AND"/"OR"',
    ),
    ([5], (0,), "expected an expression [var, op, value], got number 5"),
    ([None], (0,), "expected an expression [var, op, value], got null"),
    ([{"a": 1}], (0,), "expected an expression [var, op, value], got an object"),
    # shapes
    ([[]], (0,), "empty expression"),
    ([["a", "==", "b"], []], (1,), "empty expression"),
    (
        [["a", "==", "b"], "c"],
        (1,),
        "expected an expression [var, op, value] or a group [\"OR\", ...], got string 'c'",
    ),
    (
        [["a", "==", "b"], "OR"],
        (1,),
        "expected an expression [var, op, value] or a group [\"OR\", ...], got string 'OR' "
        "('OR' must be the first element of its group)",
    ),
    (
        [["a", "==", "b"], 7],
        (1,),
        'expected an expression [var, op, value] or a group ["OR", ...], got number 7',
    ),
    (
        [["arg_k"]],
        (0,),
        'expected [var, op, value] or [var, "!", op, value], got 1 element',
    ),
    (
        [["a", "!", "==", "b", "c"]],
        (0,),
        'expected [var, op, value] or [var, "!", op, value], got 5 elements',
    ),
    # groups
    (["OR", ["arg_weight", ">", 10]], (), "'OR' needs at least two expressions, got 1"),
    (["AND"], (), "'AND' needs at least two expressions, got 0"),
    (
        ["OR", ["arg_weight", ">", 10], ["AND"]],
        (2,),
        "'AND' needs at least two expressions, got 0",
    ),
    (["!or", ["a", "==", "b"]], (), "'!OR' needs at least two expressions, got 1"),
    (
        ["OR", ["a", "==", "b"], "c"],
        (2,),
        "expected an expression [var, op, value] or a group [\"OR\", ...], got string 'c'",
    ),
    # variable names
    ([[1, "==", "b"]], (0, 0), "variable name must be a string, got number 1"),
    ([[None, "==", "b"]], (0, 0), "variable name must be a string, got null"),
    ([[True, "==", "b"]], (0, 0), "variable name must be a string, got boolean true"),
    ([["", "==", "b"]], (0, 0), "variable name must not be empty"),
    (
        ["OR", ["a", "==", "b"], [{}, "==", "c"]],
        (2, 0),
        "variable name must be a string, got an object",
    ),
    # negation
    (
        [["!", "arg_k", "==", "1"]],
        (0, 1),
        "expected \"!\" before the operator of a four-element expression, got string 'arg_k'",
    ),
    (
        [["a", "not", "==", "1"]],
        (0, 1),
        "expected \"!\" before the operator of a four-element expression, got string 'not'",
    ),
    (
        [["a", "!", "b"]],
        (0, 1),
        "'!' must be followed by an operator and a value: [var, \"!\", op, value]",
    ),
    # operators
    ([["arg_k", "=~", "v"]], (0, 1), "unknown operator '=~'; did you mean '~~'?"),
    ([["arg_k", "=", "v"]], (0, 1), "unknown operator '='; did you mean '=='?"),
    ([["arg_k", "!=", "v"]], (0, 1), "unknown operator '!='; did you mean '~='?"),
    ([["arg_k", "<>", "v"]], (0, 1), "unknown operator '<>'; did you mean '~='?"),
    ([["arg_k", "ipmath", "v"]], (0, 1), "unknown operator 'ipmath'; did you mean 'ipmatch'?"),
    ([["arg_k", "has_", "v"]], (0, 1), "unknown operator 'has_'; did you mean 'has'?"),
    ([["arg_k", "!", "inn", ["v"]]], (0, 2), "unknown operator 'inn'; did you mean 'in'?"),
    (
        [["arg_k", "OR", "v"]],
        (0, 1),
        "unknown operator 'OR'; expected one of " + ", ".join(OPERATORS),
    ),
    (
        [["arg_k", "invalid", 10]],
        (0, 1),
        "unknown operator 'invalid'; expected one of " + ", ".join(OPERATORS),
    ),
    ([["arg_k", 5, "v"]], (0, 1), "operator must be a string, got number 5"),
    ([["arg_k", None, "v"]], (0, 1), "operator must be a string, got null"),
    ([["arg_k", "!", ["=="], "v"]], (0, 2), "operator must be a string, got a list"),
    # two-element form
    ([["arg_k", "=="]], (0,), "operator '==' has no value: expected [var, op, value]"),
    ([["arg_k", "IN"]], (0,), "operator 'IN' has no value: expected [var, op, value]"),
    (
        [["arg_k", ["v"]]],
        (0, 1),
        "a two-element expression [var, value] needs a string or number value, got a list",
    ),
    (
        [["arg_k", None]],
        (0, 1),
        "a two-element expression [var, value] needs a string or number value, got null",
    ),
    (
        [["arg_k", False]],
        (0, 1),
        "a two-element expression [var, value] needs a string or number value, got boolean false",
    ),
    # == / ~= values
    (
        [["arg_k", "==", True]],
        (0, 2),
        "'==' compares with a string, a number or null, got boolean true",
    ),
    ([["arg_k", "~=", ["a"]]], (0, 2), "'~=' compares with a string, a number or null, got a list"),
    (
        [["arg_k", "!", "==", {"a": 1}]],
        (0, 3),
        "'==' compares with a string, a number or null, got an object",
    ),
    # numeric comparisons
    ([["arg_k", ">", "abc"]], (0, 2), "'>' needs a number, got string 'abc'"),
    ([["arg_k", ">=", None]], (0, 2), "'>=' needs a number, got null"),
    ([["arg_k", "<", True]], (0, 2), "'<' needs a number, got boolean true"),
    ([["arg_k", "<=", [1]]], (0, 2), "'<=' needs a number, got a list"),
    ([["arg_k", ">", "nan"]], (0, 2), "'>' needs a number, got string 'nan'"),
    ([["arg_k", ">", ""]], (0, 2), "'>' needs a number, got string ''"),
    # regexes
    (
        [["arg_k", "~~", "("]],
        (0, 2),
        "bad regular expression '(': missing ), unterminated subpattern at position 0",
    ),
    (
        [["arg_k", "!", "~*", "[a-"]],
        (0, 3),
        "bad regular expression '[a-': unterminated character set at position 0",
    ),
    ([["arg_k", "~~", 123]], (0, 2), "'~~' needs a regular expression string, got number 123"),
    ([["arg_k", "~*", None]], (0, 2), "'~*' needs a regular expression string, got null"),
    # in / has
    ([["arg_k", "in", "a"]], (0, 2), "'in' needs a list of values, got string 'a'"),
    ([["arg_k", "in", None]], (0, 2), "'in' needs a list of values, got null"),
    ([["arg_k", "in", {"a": 1}]], (0, 2), "'in' needs a list of values, got an object"),
    (
        [["arg_k", "in", ["a", None]]],
        (0, 2, 1),
        "'in' list items must be strings or numbers, got null",
    ),
    (
        [["arg_k", "!", "in", ["a", "b", ["c"]]]],
        (0, 3, 2),
        "'in' list items must be strings or numbers, got a list",
    ),
    (
        [["arg_k", "in", [True]]],
        (0, 2, 0),
        "'in' list items must be strings or numbers, got boolean true",
    ),
    ([["arg_k", "has", ["a"]]], (0, 2), "'has' needs a string or a number, got a list"),
    ([["arg_k", "has", None]], (0, 2), "'has' needs a string or a number, got null"),
    # ipmatch
    (
        [["remote_addr", "ipmatch", None]],
        (0, 2),
        "'ipmatch' needs an IP address, a CIDR or a non-empty list of them, got null",
    ),
    (
        [["remote_addr", "ipmatch", ""]],
        (0, 2),
        "'ipmatch' needs an IP address, a CIDR or a non-empty list of them, got string ''",
    ),
    (
        [["remote_addr", "ipmatch", []]],
        (0, 2),
        "'ipmatch' needs an IP address, a CIDR or a non-empty list of them, got a list",
    ),
    (
        [["remote_addr", "ipmatch", 10]],
        (0, 2),
        "'ipmatch' needs an IP address, a CIDR or a non-empty list of them, got number 10",
    ),
    (
        [["remote_addr", "ipmatch", "10.0.0.300"]],
        (0, 2),
        "'10.0.0.300' is not an IP address or CIDR",
    ),
    (
        [["remote_addr", "ipmatch", ["127.0.0.1", "10.0.0.0/33"]]],
        (0, 2, 1),
        "'10.0.0.0/33' is not an IP address or CIDR: the prefix length must be a number "
        "from 0 to 32",
    ),
    (
        ["OR", ["a", "==", "b"], ["remote_addr", "!", "ipmatch", ["::1", 5]]],
        (2, 3, 1),
        "5 is not an IP address or CIDR (expected a string)",
    ),
    # the brief's example: the path reaches the operator of the second expression
    (
        [["arg_name", "==", "json"], ["http_x_a", "=~", "^v[0-9]+$"]],
        (1, 1),
        "unknown operator '=~'; did you mean '~~'?",
    ),
]


@pytest.mark.parametrize(("rule", "path", "message"), ERRORS)
def test_compile_errors(rule: Any, path: tuple[int, ...], message: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(rule)
    assert info.value.path == path
    assert info.value.message == message
    where = "".join(f"[{i}]" for i in path)
    assert str(info.value) == (f"{where}: {message}" if where else message)


def test_error_is_a_value_error_and_pickles() -> None:
    import pickle

    with pytest.raises(ValueError):
        compile_expr([["a", "=~", "b"]])
    err = ExprError((1, 2), "boom")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.message, str(again)) == ((1, 2), "boom", "[1][2]: boom")


def test_nesting_limit() -> None:
    rule: Any = ["a", "==", "b"]
    for _ in range(40):
        rule = [rule]
    with pytest.raises(ExprError) as info:
        compile_expr(rule)
    assert info.value.message == "rule is nested too deeply (more than 32 levels)"
    assert len(info.value.path) == 33


# Arbitrary JSON-like input, biased toward the vocabulary so deep paths are reached.
_words = st.sampled_from(
    [*OPERATORS, "!", "AND", "OR", "!AND", "!OR", "or", "arg_a", "10.0.0.0/8", "::1", "(", "x"]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    _words,
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=4), children, max_size=3),
    ),
    max_leaves=30,
)
# Rule-shaped input, so that many examples compile and evaluation is exercised too.
_leaf_values = st.one_of(
    _scalars,
    st.lists(st.one_of(st.text(max_size=5), st.integers(), _words), max_size=3),
    st.sampled_from(["10.0.0.0/8", ["::1", "10.1.2.3"], "^a", "[0-9]+", 18, "18"]),
)
_vars = st.sampled_from(["arg_a", "arg_b", "remote_addr", "roots"])
_ops = st.one_of(st.sampled_from(OPERATORS), _words)
_leaves = st.one_of(
    st.tuples(_vars, _ops, _leaf_values).map(list),
    st.tuples(_vars, st.just("!"), _ops, _leaf_values).map(list),
    st.tuples(_vars, _leaf_values).map(list),
)
_GROUP_OPS = ("AND", "OR", "!AND", "!OR")


def _as_rule(node: Any) -> Any:
    """A bare expression at the top must be wrapped; groups and lists of expressions need not."""
    if node and (isinstance(node[0], list) or node[0] in _GROUP_OPS):
        return node
    return [node]


_structured = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4),
        st.tuples(st.sampled_from(_GROUP_OPS), st.lists(children, max_size=4)).map(
            lambda t: [t[0], *t[1]]
        ),
    ),
    max_leaves=12,
).map(_as_rule)

_values = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.integers(),
    st.floats(),
    st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.sampled_from(["10.1.2.3", "::1", "::ffff:10.0.0.1", "18", "0x12", " 1e1 "]),
)


@settings(max_examples=500)
@given(
    _json | _structured,
    st.dictionaries(_vars | _words | st.text(max_size=4), _values, max_size=6),
)
def test_compile_returns_expr_or_raises_expr_error(rule: Any, env: dict[str, object]) -> None:
    try:
        ex = compile_expr(rule)
    except ExprError as exc:
        assert isinstance(exc.path, tuple)
        assert all(isinstance(i, int) for i in exc.path)
        assert exc.message
        return
    assert isinstance(ex, Expr)
    assert ex.evaluate(env.get) in (True, False)
    assert ex.variables <= frozenset(n for n in _names(rule))


def _names(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, list):
        if node and isinstance(node[0], str):
            out.append(node[0])
        for child in node:
            out.extend(_names(child))
    return out


def test_infinite_bounds() -> None:
    assert compile_expr([["v", ">", "-inf"]]).evaluate({"v": "-1e308"}.get)
    assert not compile_expr([["v", ">", math.inf]]).evaluate({"v": "1e999"}.get)
