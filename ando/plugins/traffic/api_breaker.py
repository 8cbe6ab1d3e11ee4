"""api-breaker: a circuit breaker that stops asking an upstream that keeps failing.

APISIX's api-breaker (priority 1005): the log phase counts the upstream's statuses, the access
phase answers `break_response_code` while the breaker is open.

- Every status in `unhealthy.http_statuses` adds one failure (and forgets the healthy streak);
  each time the failure count reaches a multiple of `unhealthy.failures` the breaker opens, for
  2^n seconds where n = ceil(failures counted / unhealthy.failures) (2 s, then 4, 8, ...), at most
  `max_breaker_sec`. Times are whole seconds, as APISIX's ngx.time(): the breaker stays open
  until the second after the trip's second + that time (between 2 and 3 s for the first), but
  never past max_breaker_sec after the trip (APISIX's trip record expires then).
- Once the open time is over requests go through again; a status in `healthy.http_statuses`
  (only while failures are counted) adds to a healthy streak, and `healthy.successes` of them in
  a row forget everything.
- State is kept per host and uri, as APISIX keys it (and per configuration, so two routes with
  different thresholds never share a count), in the node-wide SharedDict: every worker agrees.
- While open, with `break_response_body` the answer carries that body and the
  `break_response_headers` (their values resolving `$var`); without it, only the status, which
  nginx (so APISIX) answers with its stock error page, as the limit-* plugins' bare refusals.

When no upstream status exists but a node was tried (connection refused, timed out), the status
the gateway answered (502, 504) counts, as nginx's $upstream_status reports it to APISIX.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.pages import nginx_page
from ando.plugins.vartemplate import VarTemplate

# Counts outlive any breaker time (max_breaker_sec is the longest), as APISIX's never-expiring
# ones do, yet a key nobody fails on any more leaves the shared table eventually.
_STATE_TTL = 86400.0
# 2^62 s exceeds any max_breaker_sec: no need to compute larger powers.
_MAX_EXPONENT = 62


def breaker_seconds(failures_counted: float, failures: int, max_sec: int) -> int:
    """How long the breaker stays open after its latest trip: 2^n seconds, n the number of
    trips so far (ceil(failures counted / failures), at least 1), at most max_sec."""
    exponent = max(math.ceil(failures_counted / failures), 1)
    return max_sec if exponent > _MAX_EXPONENT else min(2**exponent, max_sec)


class ApiBreaker(Plugin):
    name = "api-breaker"
    priority = 1005

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.shared = build.shared
        self.prefix = f"api-breaker|{build.owner}|"
        self.code: int = conf["break_response_code"]
        self.max_sec: int = conf["max_breaker_sec"]
        self.unhealthy = frozenset(conf["unhealthy"]["http_statuses"])
        self.failures: int = conf["unhealthy"]["failures"]
        self.healthy = frozenset(conf["healthy"]["http_statuses"])
        self.successes: int = conf["healthy"]["successes"]
        body = conf.get("break_response_body")
        self.headers: tuple[tuple[str, VarTemplate], ...] = ()
        self.fixed: Response | None = None
        if body is not None:
            self.body: str | None = body
            self.headers = tuple(
                (h["key"], VarTemplate(h["value"])) for h in conf.get("break_response_headers", ())
            )
            if all(t.static is not None for _, t in self.headers):
                self.fixed = Response(
                    self.code, body, [(k, t.static or "") for k, t in self.headers]
                )
        else:
            # APISIX's access phase returns the bare code: core.response.exit(code) ends in
            # ngx.exit(code), and nginx answers with its error page for that status.
            self.body = None
            self.fixed = nginx_page(self.code)

    def _key(self, ctx: RequestContext) -> str:
        return self.prefix + (ctx.host or "") + "|" + ctx.path

    def access(self, ctx: RequestContext) -> Response | None:
        state = self.shared.get(self._key(ctx))
        if state is None:
            return None
        count, tripped_at = state
        if not tripped_at:
            return None
        # As APISIX: open while the current second (ngx.time()) is at most the trip's second +
        # the break time, and the trip's record, kept max_breaker_sec, has not expired.
        now = time.time()
        seconds = breaker_seconds(count, self.failures, self.max_sec)
        if int(tripped_at) + seconds < int(now) or now >= tripped_at + self.max_sec:
            return None
        if self.fixed is not None:
            return self.fixed
        return Response(self.code, self.body, [(k, t.render(ctx.var)) for k, t in self.headers])

    def log(self, ctx: RequestContext) -> None:
        status = ctx.upstream_status
        if not status and ctx.upstream_addr is not None:
            status = ctx.status  # no response from the node: the gateway's 502/504
        if not status:
            return
        key = self._key(ctx)
        if status in self.unhealthy:
            now = time.time()
            failures = self.failures

            def fail(count: float, tripped_at: float, existed: bool) -> tuple[float, float, float]:
                count += 1
                if count % failures == 0:
                    tripped_at = now
                return count, tripped_at, count

            self.shared.update(key, fail, ttl=_STATE_TTL)
            self.shared.delete(key + "|ok")
            return
        if status not in self.healthy:
            return
        if self.shared.get(key) is None:
            return  # nothing to recover from
        streak, _ = self.shared.incr(key + "|ok", 1, ttl=_STATE_TTL)
        if streak >= self.successes:
            self.shared.delete(key)
            self.shared.delete(key + "|ok")
