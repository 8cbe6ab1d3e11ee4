"""consumer-restriction: allow or refuse by consumer, consumer group, service or route.

APISIX's consumer-restriction (3.x): priority 2400, runs in access, after the auth plugins
identified the consumer. `type` says what the lists hold: `consumer_name` (default),
`consumer_group_id`, `service_id` or `route_id`.

- The request has no such value (no consumer identified, a route without service, ...): 401
  `{"message": "The request is rejected, please check the <type> for this request"}`.
- In `blacklist`: refused. Not in `whitelist` (when one is set): refused. Blacklist wins over
  whitelist, and a whitelisted value skips `allowed_by_methods`.
- `allowed_by_methods`: the first entry whose `user` is the value limits its methods; values with
  no entry may use any method.

A refusal is `rejected_code` (403) with `{"message": rejected_msg}`, or APISIX's
`{"message": "The <type> is forbidden."}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

_VALUE: dict[str, Callable[[RequestContext], str | None]] = {
    "consumer_name": lambda ctx: ctx.consumer_name,
    "consumer_group_id": lambda ctx: ctx.consumer_group_id,
    "service_id": lambda ctx: ctx.service_id,
    "route_id": lambda ctx: ctx.route_id,
}


class ConsumerRestriction(Plugin):
    name = "consumer-restriction"
    priority = 2400

    __slots__ = ("blacklist", "methods", "missing", "rejected", "value", "whitelist")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        kind = conf["type"]
        self.value = _VALUE[kind]
        self.blacklist = frozenset(conf.get("blacklist") or ())
        whitelist = conf.get("whitelist")
        self.whitelist = frozenset(whitelist) if whitelist else None
        methods: dict[str, frozenset[str]] = {}
        for entry in conf.get("allowed_by_methods") or ():
            user = entry.get("user")
            if user is not None and user not in methods:
                methods[user] = frozenset(entry.get("methods") or ())
        self.methods = methods
        message = conf.get("rejected_msg")
        if message is None:
            message = f"The {kind} is forbidden."
        self.rejected = Response(conf["rejected_code"], {"message": message})
        self.missing = Response(
            401, {"message": f"The request is rejected, please check the {kind} for this request"}
        )

    def access(self, ctx: RequestContext) -> Response | None:
        value = self.value(ctx)
        if value is None:
            return self.missing
        if value in self.blacklist:
            return self.rejected
        if self.whitelist is not None:
            if value not in self.whitelist:
                return self.rejected
            return None
        allowed = self.methods.get(value)
        if allowed is not None and ctx.method not in allowed:
            return self.rejected
        return None
