"""limit-conn: at most `conn` requests in flight per key, `burst` more delayed, the rest refused.

APISIX's limit-conn (priority 1003), the algorithm of lua-resty-limit-traffic's
resty.limit.conn. `access` counts the request in (node-wide, in shared memory, so the limit
holds whatever the number of workers); `log`, which runs for every request that finished,
client aborts included, counts it out. The N-th concurrent request:

- N <= conn: goes on;
- conn < N <= conn + burst: goes on after unit_delay * floor((N - 1) / conn) seconds, where
  unit_delay starts at `default_conn_delay` and, unless `only_use_default_delay`, follows the
  requests' observed latency (a moving average, per worker, as resty.limit.conn's);
- N > conn + burst: refused with `rejected_code` (503), `{"error_msg": rejected_msg}` or nginx's
  error page, and not counted.

Only the `local` policy exists here: APISIX's `redis` and `redis-cluster` policies for
limit-conn are not supported.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.traffic.limit_key import LimitKey, rejection

# A key's count is kept this long after its last change: a worker that died with requests in
# flight (and so never counted them out) stops holding the key once traffic on it stops.
_TTL = 3600.0


def _leave(n: float, b: float, existed: bool) -> tuple[float, float, float]:
    n = max(n - 1.0, 0.0) if existed else 0.0
    return n, b, n


class LimitConn(Plugin):
    name = "limit-conn"
    priority = 1003

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.conn: int = conf["conn"]
        most = float(conf["conn"] + conf["burst"])
        self.unit_delay: float = float(conf["default_conn_delay"])
        self.adaptive = not conf["only_use_default_delay"]
        self.key = LimitKey(conf["key_type"], conf["key"])
        self.prefix = f"limit-conn:{build.owner}:"
        self.rejected = rejection(conf["rejected_code"], conf.get("rejected_msg"))
        self.shared = build.shared

        def enter(n: float, b: float, existed: bool) -> tuple[float, float, float]:
            """Count one more in, unless that would pass conn + burst (-1: refused)."""
            if not existed:
                n = 0.0
            if n + 1.0 > most:
                return n, b, -1.0
            return n + 1.0, b, n + 1.0

        self._enter = enter

    def access(self, ctx: RequestContext) -> Response | Awaitable[None] | None:
        key = self.prefix + self.key(ctx)
        n = self.shared.update(key, self._enter, _TTL)
        if n < 0:
            return self.rejected
        delay = 0.0
        if n > self.conn:
            delay = self.unit_delay * math.floor((n - 1) / self.conn)
        ctx.data[self] = (key, delay)
        if delay >= 0.001:
            return asyncio.sleep(delay)
        return None

    def log(self, ctx: RequestContext) -> None:
        counted = ctx.data.pop(self, None)
        if counted is None:
            return  # refused here, or an earlier plugin answered before this one counted
        key, delay = counted
        self.shared.update(key, _leave, _TTL)
        if self.adaptive:
            # resty.limit.conn's leaving(): unit_delay follows the requests' own duration.
            latency = max(ctx.latency - delay, 0.0)
            self.unit_delay = (latency + self.unit_delay) / 2.0
