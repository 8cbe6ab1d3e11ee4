"""`host:port` strings as APISIX writes them in node maps and Ando in `ando.listen`."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split `host:port`, `[v6]:port`, or a bare host when `default_port` is given.
    Raises ValueError with a message fit for a diagnostic."""
    if not text:
        raise ValueError("empty address")
    host: str
    port_s: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"'{text}': unclosed '[' in an IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"'{text}': expected ':port' after ']'")
        port_s = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{text}': '{host}' is not an IPv6 address") from None
    elif text.count(":") > 1:
        raise ValueError(f"'{text}': write an IPv6 address in brackets, like [::1]:80")
    else:
        host, sep, port_s = text.partition(":")
        if not sep:
            port_s = None
        if not host:
            raise ValueError(f"'{text}': missing host")
        if not _valid_host(host):
            raise ValueError(f"'{text}': '{host}' is not a valid host name or IP address")
    if port_s is None:
        if default_port is None:
            raise ValueError(f"'{text}': missing ':port'")
        return host, default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"'{text}': port must be a number from 1 to 65535")
    return host, int(port_s)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    if host.replace(".", "").isdigit():  # looks like a broken IPv4 address, e.g. 10.0.0.300
        return False
    return bool(_HOSTNAME.match(host))
