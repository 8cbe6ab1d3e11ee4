"""A set of IP addresses and CIDR blocks, matched on the request path.

Used by route `remote_addrs`, the `ipmatch` operator of `vars`, and plugins such as ip-restriction.
It follows lua-resty-ipmatcher, which APISIX uses for all three:

- addresses are parsed with the C library's `inet_pton`, exactly as lua-resty-ipmatcher does
  through the FFI, so the same spellings are accepted and refused (no leading zeros in IPv4
  octets, no `1.2.3`, no IPv6 zone ids such as `fe80::1%eth0`);
- an IPv6 literal may be written in brackets (`[::1]`, `[2001:db8::]/32`);
- a CIDR with host bits set (`10.0.0.1/8`) is masked, as ipmatcher and nginx do, rather than
  refused as Python's `ipaddress` strict mode would;
- `/0` matches every address of that family.

Ando is stricter than ipmatcher in one place: a prefix length that is not a decimal number in
range is an error (ipmatcher silently treats `10.0.0.0/255.0.0.0` as a single host).

Ando adds one rule ipmatcher lacks: an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, what a
dual-stack listener reports for an IPv4 client) matches the IPv4 entries, and an entry written as
a mapped IPv6 block (`::ffff:10.0.0.0/104`) also matches the plain IPv4 addresses it covers.
"""

from __future__ import annotations

from collections.abc import Iterable
from socket import AF_INET, AF_INET6, inet_pton

__all__ = ["IPSet", "IPSetError"]

_V4_ALL = 0xFFFFFFFF
_V6_ALL = (1 << 128) - 1
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 shifted right by 32
_from_bytes = int.from_bytes

# Groups of (mask, networks): one set lookup per distinct prefix length, however many entries.
_Groups = tuple[tuple[int, frozenset[int]], ...]


class IPSetError(ValueError):
    """An item of an IP set is not an address or CIDR; `index` says which item it was."""

    def __init__(self, index: int, item: object, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.item = item


def _parse_v4(text: str) -> int | None:
    try:
        return _from_bytes(inet_pton(AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        return None


def _parse_v6(text: str) -> int | None:
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    try:
        return _from_bytes(inet_pton(AF_INET6, text), "big")
    except (OSError, ValueError, TypeError):
        return None


def _parse_item(item: object) -> tuple[int, int, int]:
    """Return (family bits, network, prefix length) for one entry, or raise ValueError."""
    if not isinstance(item, str):
        raise ValueError(f"{item!r} is not an IP address or CIDR (expected a string)")
    bad = f"{item!r} is not an IP address or CIDR"
    addr, slash, plen_text = item.partition("/")
    if ":" in addr:
        bits, value = 128, _parse_v6(addr)
    else:
        bits, value = 32, _parse_v4(addr)
    if value is None:
        raise ValueError(bad)
    if slash:
        if not (plen_text.isascii() and plen_text.isdigit()) or int(plen_text) > bits:
            raise ValueError(f"{bad}: the prefix length must be a number from 0 to {bits}")
        plen = int(plen_text)
    else:
        plen = bits
    full = _V4_ALL if bits == 32 else _V6_ALL
    mask = (full << (bits - plen)) & full
    return bits, value & mask, plen


def _groups(entries: dict[int, set[int]], bits: int) -> _Groups:
    full = _V4_ALL if bits == 32 else _V6_ALL
    # Longest prefixes first: exact hosts are the common case and the cheapest to rule in.
    return tuple(
        ((full << (bits - plen)) & full, frozenset(nets))
        for plen, nets in sorted(entries.items(), reverse=True)
    )


class IPSet:
    """An immutable set of IPv4/IPv6 addresses and CIDR blocks.

    Built once per config snapshot with `IPSet.parse`; `contains` is what runs per request, so it
    parses the address once (`inet_pton`, no `ipaddress` objects) and then does one masked set
    lookup per distinct prefix length.
    """

    __slots__ = ("_items", "_v4", "_v6")

    def __init__(self, v4: _Groups, v6: _Groups, items: tuple[str, ...]) -> None:
        self._v4 = v4
        self._v6 = v6
        self._items = items

    @classmethod
    def parse(cls, items: Iterable[str]) -> IPSet:
        """Build a set from address/CIDR strings; raise IPSetError (a ValueError) naming the
        first bad item, e.g. "'10.0.0.300' is not an IP address or CIDR"."""
        if isinstance(items, (str, bytes)):
            raise TypeError("IPSet.parse expects a list of strings, not a single string")
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        kept: list[str] = []
        for index, item in enumerate(items):
            try:
                bits, net, plen = _parse_item(item)
            except ValueError as exc:
                raise IPSetError(index, item, str(exc)) from None
            kept.append(item)
            if bits == 32:
                v4.setdefault(plen, set()).add(net)
                continue
            v6.setdefault(plen, set()).add(net)
            if plen >= 96 and net >> 32 == _MAPPED_PREFIX:
                # ::ffff:a.b.c.d/N also covers the plain IPv4 block a.b.c.d/(N-96).
                v4.setdefault(plen - 96, set()).add(net & _V4_ALL)
        return cls(_groups(v4, 32), _groups(v6, 128), tuple(kept))

    def contains(self, addr: str) -> bool:
        """True when `addr` is in the set. Anything that is not an IP address string (a
        missing header, `unknown`, a list) is simply not contained: this never raises."""
        if type(addr) is not str:
            if not isinstance(addr, str):
                return False
            addr = str(addr)
        if ":" in addr:
            value = _parse_v6(addr)
            if value is None:
                return False
            if value >> 32 == _MAPPED_PREFIX:
                v4 = value & _V4_ALL
                for mask, nets in self._v4:
                    if v4 & mask in nets:
                        return True
            # Plain loops rather than any(<generator>): this runs per request.
            for mask, nets in self._v6:  # noqa: SIM110
                if value & mask in nets:
                    return True
            return False
        value = _parse_v4(addr)
        if value is None:
            return False
        for mask, nets in self._v4:  # noqa: SIM110
            if value & mask in nets:
                return True
        return False

    __contains__ = contains

    @property
    def items(self) -> tuple[str, ...]:
        """The entries as written, for diagnostics and repr."""
        return self._items

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)

    def __repr__(self) -> str:
        return f"IPSet({list(self._items)!r})"
