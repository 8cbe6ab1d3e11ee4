"""ua-restriction: allow or refuse a request by its User-Agent.

APISIX 3.x's ua-restriction: priority 2999, runs in `access`; exactly one of `allowlist` and
`denylist`, each a list of regexes searched (unanchored, case-sensitive, as `ngx.re.find`) in
the User-Agent with surrounding whitespace stripped. A refused request gets 403
`{"message": "Not allowed"}` (or `message`).

- No User-Agent header: refused, unless `bypass_missing` is true (an empty value is a present
  header, checked like any other).
- Several User-Agent headers, as APISIX decides them: with an `allowlist` the request passes
  when any one of them matches a rule; with a `denylist` it is refused when any one matches.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.security._checks import Problems, compile_all, regex_problems, search_any

# Verdicts per distinct User-Agent, as APISIX's lrucache: bounded, since clients choose them.
_CACHE_MAX = 4096


class UaRestriction(Plugin):
    __slots__ = ("bypass_missing", "cache", "is_allowlist", "refusal", "rules")

    name = "ua-restriction"
    priority = 2999

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.is_allowlist = "allowlist" in conf
        self.rules = compile_all(conf["allowlist"] if self.is_allowlist else conf["denylist"])
        self.bypass_missing: bool = conf["bypass_missing"]
        self.refusal = Response(403, {"message": conf["message"]})
        self.cache: dict[str, bool] = {}

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        return regex_problems(conf, "allowlist") + regex_problems(conf, "denylist")

    def _matches(self, agent: str) -> bool:
        cache = self.cache
        found = cache.get(agent)
        if found is None:
            found = search_any(self.rules, agent.strip())
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[agent] = found
        return found

    def access(self, ctx: RequestContext) -> Response | None:
        agents = ctx.header_values("User-Agent")
        if not agents:
            return None if self.bypass_missing else self.refusal
        if self.is_allowlist:
            for agent in agents:
                if self._matches(agent):
                    return None
            return self.refusal
        for agent in agents:
            if self._matches(agent):
                return self.refusal
        return None
