"""What the security plugins share: the checks `ando validate` runs beyond the schema (CIDR lists
that must parse, regexes that must compile), each problem reported at the item's own path so the
diagnostic points at its line and column; and those lists compiled once per config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ando.plugins.checks import Problems
from ando.router.ipset import IPSet, IPSetError


def ip_list_problems(conf: dict[str, Any], field: str) -> Problems:
    """Every item of `conf[field]` that is not an IPv4/IPv6 address or CIDR block."""
    out: Problems = []
    for i, item in enumerate(conf.get(field) or ()):
        try:
            IPSet.parse([item])
        except IPSetError as e:
            out.append(((field, i), f"invalid ip address: {e}"))
    return out


def ip_set(addresses: list[str] | None) -> IPSet | None:
    """A list of addresses and CIDR blocks (ip-restriction's, real-ip's), parsed once; None
    when the list is absent or empty."""
    return IPSet.parse(addresses) if addresses else None


def regex_problems(conf: dict[str, Any], field: str, flags: int = 0) -> Problems:
    """Every item of `conf[field]` that Python's `re` cannot compile (APISIX compiles them with
    PCRE at check_schema time; the common syntax is the same)."""
    out: Problems = []
    for i, item in enumerate(conf.get(field) or ()):
        try:
            re.compile(item, flags)
        except re.error as e:
            out.append(((field, i), f"invalid regular expression {item!r}: {e}"))
    return out


def compile_all(rules: Iterable[str], flags: int = 0) -> tuple[re.Pattern[str], ...]:
    """Each rule compiled on its own: joining them with `|` (APISIX's way) would break rules that
    start with a global inline flag such as `(?i)`."""
    return tuple(re.compile(r, flags) for r in rules)


def search_any(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    for p in patterns:  # noqa: SIM110 - a plain loop: this runs per request
        if p.search(text) is not None:
            return True
    return False
