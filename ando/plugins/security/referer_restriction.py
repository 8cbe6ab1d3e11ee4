"""referer-restriction: allow or refuse a request by the host of its Referer.

APISIX's referer-restriction: priority 2990, runs in `access`; exactly one of `whitelist` and
`blacklist`, each a list of host names where a leading `*` makes a suffix (`*.example.com`
matches `a.example.com`, not `example.com`). A request without a Referer, or with one that is not
an http(s) URL, is refused unless `bypass_missing` is true. A refused request gets 403
`{"message": "Your referer host is not allowed"}` (or `message`).

The host is taken from the Referer as a URL parser does, where APISIX's regex is looser: the
scheme may be any case, userinfo (`http://good.com@evil.com/`) and a fragment are not part of the
host, and hosts compare case-insensitively without a trailing dot. So a blacklisted host cannot
hide behind `user@`, `#`, upper case or `evil.com.`. Every Referer header is checked (a request
must not smuggle a second one past the first).
"""

from __future__ import annotations

import re
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

# scheme (any case, or none: `//host`), userinfo up to the last `@`, host, port, then the path.
_URL = re.compile(
    r"(?:https?:)?//(?:[^/?#]*@)?(\[[^\]/?#]*\]|[^:/?#\[\]@]*)(?::[0-9]*)?(?:[/?#]|$)",
    re.IGNORECASE | re.ASCII,
)


def referer_host(referer: str) -> str | None:
    """The host of an http(s) (or scheme-relative) URL, lower-case and without a trailing dot;
    None when the value is not such a URL."""
    m = _URL.match(referer.strip())
    if m is None:
        return None
    host = m.group(1).lower().rstrip(".")
    return host or None


class HostMatcher:
    """Exact names and `*`-prefixed suffixes, as APISIX's referer matcher."""

    __slots__ = ("exact", "suffixes")

    def __init__(self, hosts: list[str]) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for h in hosts:
            h = h.lower()
            if h.startswith("*"):
                suffixes.append(h[1:])
            else:
                exact.add(h.rstrip("."))
        self.exact = frozenset(exact)
        self.suffixes = tuple(suffixes)

    def matches(self, host: str) -> bool:
        return host in self.exact or host.endswith(self.suffixes)


class RefererRestriction(Plugin):
    __slots__ = ("bypass_missing", "is_whitelist", "matcher", "refusal")

    name = "referer-restriction"
    priority = 2990

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.is_whitelist = "whitelist" in conf
        self.matcher = HostMatcher(conf["whitelist"] if self.is_whitelist else conf["blacklist"])
        self.bypass_missing: bool = conf["bypass_missing"]
        self.refusal = Response(403, {"message": conf["message"]})

    def access(self, ctx: RequestContext) -> Response | None:
        referers = ctx.header_values("Referer")
        if not referers:
            return None if self.bypass_missing else self.refusal
        for referer in referers:
            host = referer_host(referer)
            if host is None:
                if not self.bypass_missing:
                    return self.refusal
            elif self.matcher.matches(host) is not self.is_whitelist:
                return self.refusal
        return None
