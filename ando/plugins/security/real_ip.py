"""real-ip: take the client's address from a header (or variable) set by a trusted proxy.

APISIX's real-ip: priority 23000, runs in `rewrite` (before ip-restriction, limits and the
X-Forwarded-For / X-Real-IP the upstream receives, which all use the new address). `source` names
where the address is: `http_x_forwarded_for` (the last address of X-Forwarded-For), any other
header as `http_<name>` (`http_x_real_ip`), or a query argument as `arg_<name>`. The value is an
IPv4 or IPv6 address, optionally with a port (`1.2.3.4:5678`, `[::1]:80`); anything else is
ignored and the socket's address stays.

Only a request whose socket peer (the address before any change, whatever real-ip instances run)
is in `trusted_addresses` is believed. With `recursive`, X-Forwarded-For is walked from the right,
skipping addresses that are themselves trusted proxies, and the first untrusted one is the
client (the leftmost when all are trusted); several X-Forwarded-For lines count as one list.

Without `trusted_addresses`, APISIX believes every peer, which lets any client choose its own
address (and walk past ip-restriction). Ando believes none instead, as nginx's realip module does
with no `set_real_ip_from`: the plugin then changes nothing and says so once in the log. To
believe every peer deliberately, list `0.0.0.0/0` and `::/0`.
"""

from __future__ import annotations

from socket import AF_INET, AF_INET6, inet_pton
from typing import Any

from ando.plugins.base import BuildContext, Plugin
from ando.plugins.context import RequestContext
from ando.plugins.security._checks import Problems, ip_list_problems, ip_set
from ando.router.ipset import IPSet

_PEER_KEY = "real-ip:peer"  # ctx.data: the socket peer, before any real-ip changed it
_XFF = "http_x_forwarded_for"


def _is_ip(text: str, family: int) -> bool:
    try:
        inet_pton(family, text)
    except (OSError, ValueError):
        return False
    return True


def parse_addr(addr: str) -> tuple[str, int | None] | None:
    """(ip, port or None) from `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`; None when the
    text is not an address (or the port is not 1-65535)."""
    addr = addr.strip()
    port_text = ""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            return None
        ip, rest = addr[1:end], addr[end + 1 :]
        if rest:
            if rest[0] != ":":
                return None
            port_text = rest[1:]
        family = AF_INET6
    elif addr.count(":") == 1:
        ip, _, port_text = addr.partition(":")
        family = AF_INET
    elif ":" in addr:
        ip, family = addr, AF_INET6
    else:
        ip, family = addr, AF_INET
    if not ip or "%" in ip or not _is_ip(ip, family):
        return None
    if not port_text and not addr.endswith(":"):
        return ip, None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        return None
    return ip, int(port_text)


def forwarded_client(values: list[str], trusted: IPSet | None) -> str | None:
    """The client in X-Forwarded-For lines: the last address, or with `trusted` (recursive) the
    rightmost one that is not a trusted proxy."""
    if not values:
        return None
    hops = [h.strip() for h in ",".join(values).split(",")]
    if trusted is None:
        return hops[-1]
    for hop in reversed(hops[1:]):
        if not trusted.contains(hop):
            return hop
    return hops[0]


class RealIp(Plugin):
    __slots__ = ("recursive", "source", "trusted")

    name = "real-ip"
    priority = 23000

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.trusted = ip_set(conf.get("trusted_addresses"))
        self.source: str = conf["source"]
        self.recursive: bool = conf["recursive"]
        if self.trusted is None:
            build.log(
                "plugin_warning",
                plugin=self.name,
                owner=build.owner,
                message="real-ip has no trusted_addresses, so it trusts no peer and never changes"
                " the client address; list the addresses of your proxies",
            )

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        return ip_list_problems(conf, "trusted_addresses")

    def rewrite(self, ctx: RequestContext) -> None:
        trusted = self.trusted
        if trusted is None:
            return None
        data = ctx.data
        peer = data.get(_PEER_KEY)
        if peer is None:
            peer = data[_PEER_KEY] = ctx.client_addr
        if not trusted.contains(peer):
            return None
        if self.source == _XFF:
            found = forwarded_client(
                ctx.header_values("X-Forwarded-For"), trusted if self.recursive else None
            )
        else:
            found = ctx.var(self.source)
        if not found:
            return None
        parsed = parse_addr(found)
        if parsed is None:
            return None
        ip, port = parsed
        ctx.client_addr = ip
        if port is not None:
            ctx.client_port = port
        return None
