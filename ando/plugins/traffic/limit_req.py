"""limit-req: a leaky bucket of `rate` requests per second per key, with `burst` excess delayed.

APISIX's limit-req (priority 1001, access phase), the algorithm of lua-resty-limit-traffic's
resty.limit.req: each request adds one to the key's excess, which drains at `rate` per second.
A request whose excess (after draining) is above `burst` is refused with `rejected_code` (503),
`{"error_msg": rejected_msg}` or nginx's error page, and leaves the bucket as it was. Otherwise
it waits excess/rate seconds (so requests leave at `rate`), unless `nodelay`, in which case the
burst goes through at once.

The bucket lives in the node's shared memory (ando/plugins/shared.py), read-modify-written
atomically, so the rate holds for the node whatever the number of workers. Only the `local`
policy exists here: APISIX's `redis` and `redis-cluster` policies for limit-req are not
supported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.traffic.limit_key import LimitKey, rejection

_REJECTED = -1.0


class LimitReq(Plugin):
    name = "limit-req"
    priority = 1001

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        rate = float(conf["rate"])
        burst = float(conf["burst"])
        self.key = LimitKey(conf["key_type"], conf["key"])
        self.prefix = f"limit-req:{build.owner}:"
        self.nodelay: bool = conf["nodelay"]
        self.rejected = rejection(conf["rejected_code"], conf.get("rejected_msg"))
        self.shared = build.shared
        # An entry matters only while its excess drains: (burst + 1) / rate seconds at most.
        self.ttl = (burst + 1.0) / rate + 1.0

        def leak(excess: float, last: float, existed: bool) -> tuple[float, float, float]:
            """(excess, last) -> the new state and this request's delay, or _REJECTED with the
            state untouched. Runs under the entry's lock."""
            now = time.time()
            if not existed:
                return 0.0, now, 0.0
            grown = max(excess - rate * abs(now - last) + 1.0, 0.0)
            if grown > burst:
                return excess, last, _REJECTED
            return grown, now, grown / rate

        self._leak = leak

    def access(self, ctx: RequestContext) -> Response | Awaitable[None] | None:
        delay = self.shared.update(self.prefix + self.key(ctx), self._leak, self.ttl)
        if delay == _REJECTED:
            return self.rejected
        if delay >= 0.001 and not self.nodelay:
            return asyncio.sleep(delay)
        return None
