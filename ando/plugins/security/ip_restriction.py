"""ip-restriction: allow or refuse a request by the client's address.

APISIX's ip-restriction: priority 3000, runs in `access`; exactly one of `whitelist` and
`blacklist` (IPv4/IPv6 addresses and CIDR blocks); a refused client gets `response_code` (403, or
404) with `{"message": "Your IP address is not allowed"}` (or `message`).

The address checked is `ctx.client_addr`: the socket peer, or the address real-ip (which runs
earlier, in `rewrite`) found in a header sent by a trusted proxy.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.security._checks import Problems, ip_list_problems, ip_set


class IpRestriction(Plugin):
    __slots__ = ("allowed", "denied", "refusal")

    name = "ip-restriction"
    priority = 3000

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.allowed = ip_set(conf.get("whitelist"))
        self.denied = ip_set(conf.get("blacklist"))
        self.refusal = Response(conf["response_code"], {"message": conf["message"]})

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        return ip_list_problems(conf, "whitelist") + ip_list_problems(conf, "blacklist")

    def access(self, ctx: RequestContext) -> Response | None:
        addr = ctx.client_addr
        allowed = self.allowed
        if allowed is not None:
            return None if allowed.contains(addr) else self.refusal
        denied = self.denied
        if denied is not None and denied.contains(addr):
            return self.refusal
        return None
