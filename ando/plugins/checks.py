"""What the plugins' `check_conf` methods share: the shape of their answer, and the check of a
`vars` expression, so each problem points at the line and column of the element at fault."""

from __future__ import annotations

from typing import Any

from ando.router.expr import ExprError, compile_expr

# [(path inside the plugin's configuration, message)]: what `check_conf` returns.
Problems = list[tuple[tuple[Any, ...], str]]


def expr_problems(rule: Any, path: tuple[Any, ...]) -> Problems:
    """The problem of a lua-resty-expr rule that does not compile, at `path` + its own path
    inside the rule; none for a valid rule."""
    try:
        compile_expr(rule)
    except ExprError as e:
        return [((*path, *e.path), e.message)]
    return []
