"""What the limit-* plugins share: the key a request is counted under, and how they refuse.

APISIX's limit-count, limit-req and limit-conn count requests by `key`, read according to
`key_type`:

- `var`: the key names one variable (`remote_addr`, `http_x_api_key`, `consumer_name`, ...);
- `var_combination`: the key is a template such as `"$remote_addr $http_x_user"` (also
  `${name}` and `${name ?? default}`), each variable replaced by its value (absent ones by "");
- `constant`: the key itself, so every request shares one counter.

When nothing resolves (the variable is absent or empty; a combination where no variable had a
value or a default) the client address is used instead, as APISIX does: a client cannot escape
its limit by leaving the header out, nor share a counter with everybody who left it out.

A refusal is APISIX's: `{"error_msg": rejected_msg}` when `rejected_msg` is set, else the bare
status, for which nginx (so APISIX) sends its stock HTML error page.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import Response
from ando.plugins.pages import nginx_page
from ando.plugins.vartemplate import VarTemplate


class LimitKey:
    """Resolves a request's limit key; compiled once per plugin instance."""

    __slots__ = ("_constant", "_name", "_template")

    def __init__(self, key_type: str, key: str) -> None:
        self._constant = key if key_type == "constant" else None
        # (a template naming no variable resolves nothing: the client address, as APISIX)
        self._template = VarTemplate(key) if key_type == "var_combination" else None
        self._name = key

    def __call__(self, ctx: Any) -> str:
        if self._constant is not None:
            return self._constant
        template = self._template
        if template is not None:
            key, resolved = template.resolve(ctx.var)
            return key if resolved else _client(ctx)
        value = ctx.var(self._name)
        return value if value else _client(ctx)


def _client(ctx: Any) -> str:
    return ctx.var("remote_addr") or ""


def rejection(status: int, message: str | None) -> Response:
    """APISIX's refusal for `rejected_code` / `rejected_msg`."""
    if message is not None:
        return Response(status, {"error_msg": message})
    return nginx_page(status)
