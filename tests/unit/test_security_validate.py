"""`ando validate` on the security plugins: their schemas (APISIX's fields and defaults) and the
checks beyond them (CIDRs that parse, IPv4 and IPv6; regexes that compile; cors's credential
rule), each reported at the line and column of the offending item."""

from __future__ import annotations

from ando.config.snapshot import Snapshot
from tests.support.config import UP, config_problems, snapshot


def document(plugins_yaml: str, extra: str = "") -> str:
    return f"routes:\n  - uri: /a\n    {UP}\n    plugins:\n{plugins_yaml}{extra}"


def build(plugins_yaml: str, extra: str = "") -> Snapshot:
    return snapshot(document(plugins_yaml, extra))


def at(plugins_yaml: str, needle: str, extra: str = "") -> str:
    """`t.yaml:LINE:COL` of the first `needle` in the document (1-based, as diagnostics)."""
    text = document(plugins_yaml, extra)
    offset = text.index(needle)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"t.yaml:{line}:{col}"


def problems(plugins_yaml: str, extra: str = "") -> list[str]:
    return config_problems(document(plugins_yaml, extra))


def conf(snap: Snapshot, name: str) -> dict:
    return dict(snap.routes[0].plugins[name])


def test_defaults_are_apisix_ones():
    snap = build(
        "      ip-restriction: {whitelist: [127.0.0.1]}\n"
        "      ua-restriction: {denylist: [bot]}\n"
        "      referer-restriction: {whitelist: ['*.example.com']}\n"
        "      uri-blocker: {block_rules: [x]}\n"
        "      cors: {}\n"
        "      csrf: {key: k}\n"
        "      real-ip: {source: http_x_real_ip}\n"
    )
    assert conf(snap, "ip-restriction") == {
        "whitelist": ("127.0.0.1",),
        "message": "Your IP address is not allowed",
        "response_code": 403,
    }
    assert conf(snap, "ua-restriction") == {
        "denylist": ("bot",),
        "bypass_missing": False,
        "message": "Not allowed",
    }
    assert conf(snap, "referer-restriction") == {
        "whitelist": ("*.example.com",),
        "bypass_missing": False,
        "message": "Your referer host is not allowed",
    }
    assert conf(snap, "uri-blocker") == {
        "block_rules": ("x",),
        "rejected_code": 403,
        "case_insensitive": False,
    }
    assert conf(snap, "cors") == {
        "allow_origins": "*",
        "allow_methods": "*",
        "allow_headers": "*",
        "max_age": 5,
        "allow_credential": False,
    }
    assert conf(snap, "csrf") == {"key": "k", "expires": 7200, "name": "apisix-csrf-token"}
    assert conf(snap, "real-ip") == {"source": "http_x_real_ip", "recursive": False}


def test_ipv4_and_ipv6_cidrs_are_accepted():
    build(
        "      ip-restriction:\n"
        "        blacklist: [10.0.0.0/8, 1.2.3.4, '2001:db8::/32', '::/0', '[::1]', '::1',"
        " '::ffff:10.0.0.0/104', 'fe80::1:2:3:4/64']\n"
        "      real-ip: {source: http_x_forwarded_for, trusted_addresses: ['fd00::/8', 0.0.0.0/0]}\n"
    )


def test_bad_cidrs_are_reported_at_their_item():
    plugins = (
        "      ip-restriction:\n"
        "        whitelist:\n"
        "          - 10.0.0.0/8\n"
        "          - '2001:db8::/129'\n"
        "          - 'fe80::1%eth0'\n"
        "          - 10.0.0.300\n"
        "      real-ip:\n"
        "        source: http_x_forwarded_for\n"
        "        trusted_addresses: ['::1', '2001:db8:::1']\n"
    )
    bad_prefix, zone, bad_v6 = "'2001:db8::/129'", "'fe80::1%eth0'", "'2001:db8:::1'"
    assert problems(plugins) == [
        f"{at(plugins, bad_prefix)}: routes[0].plugins.ip-restriction.whitelist[1]:"
        " invalid ip address: '2001:db8::/129' is not an IP address or CIDR: the prefix length"
        " must be a number from 0 to 128",
        f"{at(plugins, zone)}: routes[0].plugins.ip-restriction.whitelist[2]:"
        " invalid ip address: 'fe80::1%eth0' is not an IP address or CIDR",
        f"{at(plugins, '10.0.0.300')}: routes[0].plugins.ip-restriction.whitelist[3]:"
        " invalid ip address: '10.0.0.300' is not an IP address or CIDR",
        f"{at(plugins, bad_v6)}: routes[0].plugins.real-ip.trusted_addresses[1]:"
        " invalid ip address: '2001:db8:::1' is not an IP address or CIDR",
    ]
    assert at(plugins, bad_prefix) == "t.yaml:8:13"


def test_exactly_one_list():
    plugins = (
        "      ip-restriction: {whitelist: [1.2.3.4], blacklist: [1.2.3.4]}\n"
        "      ua-restriction: {message: hi}\n"
    )
    assert problems(plugins) == [
        f"{at(plugins, '{whitelist')}: routes[0].plugins.ip-restriction: fields 'whitelist' and"
        " 'blacklist' cannot be used together; choose one",
        f"{at(plugins, '{message')}: routes[0].plugins.ua-restriction:"
        " needs one of: 'allowlist', 'denylist'",
    ]


def test_bad_regexes_are_reported_at_their_item():
    plugins = (
        "      uri-blocker: {block_rules: [ok, '(open']}\n"
        "      ua-restriction: {allowlist: ['[bad']}\n"
        "      cors: {allow_origins_by_regex: ['*x']}\n"
    )
    open_, bad, star = "'(open'", "'[bad'", "'*x'"
    assert [f.split(": invalid")[0] for f in problems(plugins)] == [
        f"{at(plugins, open_)}: routes[0].plugins.uri-blocker.block_rules[1]",
        f"{at(plugins, bad)}: routes[0].plugins.ua-restriction.allowlist[0]",
        f"{at(plugins, star)}: routes[0].plugins.cors.allow_origins_by_regex[0]",
    ]


def test_cors_credentials_cannot_go_with_a_star():
    plugins = "      cors: {allow_credential: true, allow_origins: 'http://a.com'}\n"
    assert problems(plugins) == [
        f"{at(plugins, 'true')}: routes[0].plugins.cors.allow_credential: you can not set '*' for"
        " other option when 'allow_credential' is true ('*' in allow_methods, allow_headers:"
        " list the values, or use '**')"
    ]
    build(
        "      cors: {allow_credential: true, allow_origins: '**', allow_methods: '**',"
        " allow_headers: '**'}\n"
    )


def test_cors_origins_format_and_metadata():
    plugins = "      cors: {allow_origins: 'a.com'}\n"
    meta = "plugin_metadata:\n  - id: cors\n    allow_origins: {EX: 'nope'}\n"
    assert [f.split(": ", 2)[:2] for f in problems(plugins, meta)] == [
        [at(plugins, "'a.com'", meta), "routes[0].plugins.cors.allow_origins"],
        [at(plugins, "'nope'", meta), "plugin_metadata[0].allow_origins.EX"],
    ]
    snap = build(
        "      cors: {allow_origins_by_metadata: [EX]}\n",
        "plugin_metadata:\n  - id: cors\n    allow_origins: {EX: 'https://a.com,http://b.com:81'}\n",
    )
    assert dict(snap.plugin_metadata["cors"]["allow_origins"]) == {
        "EX": "https://a.com,http://b.com:81"
    }


def test_other_field_checks():
    found = problems(
        "      ip-restriction: {whitelist: [1.2.3.4], response_code: 401}\n"
        "      referer-restriction: {blacklist: ['http://evil.com']}\n"
        "      csrf: {expires: 10}\n"
        "      real-ip: {trusted_addresses: [1.2.3.4]}\n"
    )
    assert [f.split(": ", 2)[1] for f in found] == [
        "routes[0].plugins.ip-restriction.response_code",
        "routes[0].plugins.referer-restriction.blacklist[0]",
        "routes[0].plugins.csrf",
        "routes[0].plugins.real-ip",
    ]
