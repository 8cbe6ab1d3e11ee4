"""`${{NAME}}` and `${{NAME:=default}}`: values from the environment, as APISIX writes them.

Substitution is applied to each scalar after parsing (never to the raw text), so a value can
never inject YAML structure and every reported position stays the one in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_VAR = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::=([^}]*))?\}\}")


class SubstitutionError(Exception):
    """An unset variable with no default; `offset` is where it starts inside the scalar."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def substitute(value: str, environ: Mapping[str, str]) -> str:
    missing: list[tuple[str, int]] = []

    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        found = environ.get(name)
        if found is not None:
            return found
        if default is not None:
            return default.strip()
        missing.append((name, m.start()))
        return m.group(0)

    out = _VAR.sub(one, value)
    if missing:
        names = ", ".join(n for n, _ in missing)
        plural = "s" if len(missing) > 1 else ""
        raise SubstitutionError(
            f"environment variable{plural} {names} not set and no default given "
            f"(write ${{{{{missing[0][0]}:=default}}}} to give one)",
            missing[0][1],
        )
    return out
