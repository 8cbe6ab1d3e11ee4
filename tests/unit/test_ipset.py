"""ando.router.ipset: the address/CIDR sets behind remote_addrs, `ipmatch` and ip-restriction."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ando.router.ipset import IPSet, IPSetError

ENTRIES = [
    "10.0.0.0/8",
    "192.168.1.1/24",  # host bits set: masked to 192.168.1.0/24, as nginx and ipmatcher do
    "127.0.0.1",
    "::1",
    "2001:db8::/32",
    "[fe80::]/10",  # brackets around an IPv6 literal, as ipmatcher allows
]

# (address, expected)
CONTAINS: list[tuple[object, bool]] = [
    ("10.0.0.0", True),
    ("10.255.255.255", True),
    ("11.0.0.0", False),
    ("9.255.255.255", False),
    ("192.168.1.200", True),
    ("192.168.2.1", False),
    ("127.0.0.1", True),
    ("127.0.0.2", False),
    ("::1", True),
    ("::2", False),
    ("0:0:0:0:0:0:0:1", True),  # another spelling of ::1
    ("[::1]", True),
    ("2001:db8::", True),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
    ("2001:db9::", False),
    ("fe80::1234", True),
    ("fec0::1", False),
    # IPv4-mapped IPv6, as a dual-stack listener reports an IPv4 client
    ("::ffff:10.1.2.3", True),
    ("::ffff:0a01:0203", True),
    ("::ffff:127.0.0.1", True),
    ("::ffff:11.0.0.1", False),
    # IPv4-compatible (deprecated) addresses are not mapped
    ("::10.1.2.3", False),
    # never raises: anything unparsable is simply not contained
    ("", False),
    ("unknown", False),
    ("10.0.0.300", False),
    ("010.0.0.1", False),  # inet_pton refuses leading zeros, as in APISIX
    ("10.0.0", False),
    ("10.0.0.1 ", False),
    ("10.0.0.1, 10.0.0.2", False),
    ("10.0.0.1/8", False),
    ("fe80::1%eth0", False),
    (":::", False),
    ("10.0.0.1\x00", False),
    ("\ud800", False),
    ("١٠.0.0.1", False),
    (None, False),
    (167772161, False),
    (["10.0.0.1"], False),
    (b"10.0.0.1", False),
]


@pytest.fixture(scope="module")
def ipset() -> IPSet:
    return IPSet.parse(ENTRIES)


@pytest.mark.parametrize(("addr", "expected"), CONTAINS)
def test_contains(ipset: IPSet, addr: object, expected: bool) -> None:
    assert ipset.contains(addr) is expected  # type: ignore[arg-type]
    assert (addr in ipset) is expected


# (entries, address, expected)
SMALL: list[tuple[list[str], str, bool]] = [
    (["0.0.0.0/0"], "1.2.3.4", True),
    (["0.0.0.0/0"], "::1", False),
    (["0.0.0.0/0"], "::ffff:1.2.3.4", True),
    (["::/0"], "2001:db8::1", True),
    (["::/0"], "1.2.3.4", False),
    (["10.0.0.1/32"], "10.0.0.1", True),
    (["10.0.0.1/32"], "10.0.0.2", False),
    (["10.0.0.1/31"], "10.0.0.0", True),
    (["10.0.0.1/31"], "10.0.0.2", False),
    (["2001:db8::1/128"], "2001:db8::1", True),
    (["2001:db8::1/127"], "2001:db8::", True),
    (["2001:db8::1/64"], "2001:db8::ffff", True),
    (["2001:db8::1/64"], "2001:db8:0:1::", False),
    # a mapped entry also covers the plain IPv4 addresses it spells
    (["::ffff:10.0.0.0/104"], "10.9.8.7", True),
    (["::ffff:10.0.0.0/104"], "11.9.8.7", False),
    (["::ffff:10.0.0.0/104"], "::ffff:10.9.8.7", True),
    (["::ffff:1.2.3.4"], "1.2.3.4", True),
    ([], "1.2.3.4", False),
]


@pytest.mark.parametrize(("entries", "addr", "expected"), SMALL)
def test_small_sets(entries: list[str], addr: str, expected: bool) -> None:
    assert IPSet.parse(entries).contains(addr) is expected


# (entry, message)
BAD: list[tuple[object, str]] = [
    ("10.0.0.300", "'10.0.0.300' is not an IP address or CIDR"),
    ("", "'' is not an IP address or CIDR"),
    ("10.0.0", "'10.0.0' is not an IP address or CIDR"),
    ("010.0.0.1", "'010.0.0.1' is not an IP address or CIDR"),
    ("localhost", "'localhost' is not an IP address or CIDR"),
    ("fe80::1%eth0", "'fe80::1%eth0' is not an IP address or CIDR"),
    ("::1::2", "'::1::2' is not an IP address or CIDR"),
    (" 10.0.0.1", "' 10.0.0.1' is not an IP address or CIDR"),
    ("[10.0.0.1]", "'[10.0.0.1]' is not an IP address or CIDR"),
    (
        "10.0.0.0/33",
        "'10.0.0.0/33' is not an IP address or CIDR: the prefix length must be a number "
        "from 0 to 32",
    ),
    (
        "10.0.0.0/",
        "'10.0.0.0/' is not an IP address or CIDR: the prefix length must be a number from 0 to 32",
    ),
    (
        "10.0.0.0/255.0.0.0",
        "'10.0.0.0/255.0.0.0' is not an IP address or CIDR: the prefix length must be a number "
        "from 0 to 32",
    ),
    (
        "10.0.0.0/-1",
        "'10.0.0.0/-1' is not an IP address or CIDR: the prefix length must be a number "
        "from 0 to 32",
    ),
    (
        "::/129",
        "'::/129' is not an IP address or CIDR: the prefix length must be a number from 0 to 128",
    ),
    (
        "10.0.0.0/8/8",
        "'10.0.0.0/8/8' is not an IP address or CIDR: the prefix length must be a "
        "number from 0 to 32",
    ),
    (10, "10 is not an IP address or CIDR (expected a string)"),
    (None, "None is not an IP address or CIDR (expected a string)"),
]


@pytest.mark.parametrize(("entry", "message"), BAD)
def test_parse_errors(entry: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        IPSet.parse(["127.0.0.1", entry])  # type: ignore[list-item]
    assert str(info.value) == message
    assert isinstance(info.value, IPSetError)
    assert info.value.index == 1
    assert info.value.item == entry


def test_parse_refuses_a_single_string() -> None:
    with pytest.raises(TypeError):
        IPSet.parse("10.0.0.1")


def test_items_repr_and_bool() -> None:
    s = IPSet.parse(("10.0.0.0/8", "::1"))
    assert s.items == ("10.0.0.0/8", "::1")
    assert repr(s) == "IPSet(['10.0.0.0/8', '::1'])"
    assert s
    assert not IPSet.parse([])


@given(st.text())
def test_contains_never_raises(text: str) -> None:
    assert IPSet.parse(ENTRIES).contains(text) in (True, False)


v4_networks = st.builds(
    lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}",
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda a, p: f"{ipaddress.IPv6Address(a)}/{p}",
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
v4_addrs = st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a)))
v6_addrs = st.integers(0, 2**128 - 1).map(lambda a: str(ipaddress.IPv6Address(a)))


@given(st.lists(st.one_of(v4_networks, v6_networks), max_size=6), st.one_of(v4_addrs, v6_addrs))
def test_agrees_with_ipaddress(entries: list[str], addr: str) -> None:
    """Outside of the IPv4-mapped extension, membership is exactly ipaddress's."""
    parsed = ipaddress.ip_address(addr)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return
    networks = [ipaddress.ip_network(e, strict=False) for e in entries]
    mapped = [n for n in networks if n.version == 6 and n.subnet_of(_MAPPED)]  # type: ignore[arg-type]
    expected = any(parsed in n for n in networks if n.version == parsed.version)
    if isinstance(parsed, ipaddress.IPv4Address):
        expected = expected or any(
            ipaddress.IPv6Address(int(ipaddress.IPv6Address("::ffff:0:0")) + int(parsed)) in n
            for n in mapped
        )
    assert IPSet.parse(entries).contains(addr) is expected


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@given(v4_addrs, st.lists(v4_networks, max_size=4))
def test_mapped_addresses_match_like_ipv4(addr: str, entries: list[str]) -> None:
    s = IPSet.parse(entries)
    assert s.contains(f"::ffff:{addr}") is s.contains(addr)
