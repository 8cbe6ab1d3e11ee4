"""From text to Snapshot: every class of diagnostic with its exact line:column, defaults, ids,
references, and APISIX standalone files written in APISIX's own format."""

from __future__ import annotations

from pathlib import Path

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.snapshot import Snapshot, UpstreamNode
from ando.config.source import load_snapshot, snapshot_from_text
from ando.plugins.catalog import PluginCatalog, PluginSpec
from tests.support.certs import make_cert

FIXTURES = Path(__file__).parent.parent / "fixtures" / "apisix"

# A catalog standing in for the plugin pipeline, shaped like APISIX's key-auth, so the plumbing
# of plugin validation is exercised before any real plugin exists.
KEY_AUTH = PluginSpec(
    name="key-auth",
    priority=2500,
    schema={
        "type": "object",
        "properties": {
            "header": {"type": "string", "default": "apikey"},
            "query": {"type": "string", "default": "apikey"},
            "hide_credentials": {"type": "boolean", "default": False},
        },
        "additionalProperties": False,
    },
    consumer_schema={
        "type": "object",
        "properties": {"key": {"type": "string", "minLength": 1}},
        "required": ["key"],
        "additionalProperties": False,
    },
    metadata_schema={
        "type": "object",
        "properties": {"log_format": {"type": "object"}},
        "additionalProperties": False,
    },
)
CATALOG = PluginCatalog.of([KEY_AUTH])


def build(
    text: str, env: dict[str, str] | None = None, catalog: PluginCatalog = CATALOG
) -> Snapshot:
    return snapshot_from_text(text, "t.yaml", environ=env or {}, catalog=catalog)


def problems(text: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build(text, **kw)
    return [d.format() for d in e.value.diagnostics]


UP = "upstream: {nodes: {'127.0.0.1:1980': 1}}"


# --- the APISIX standalone fixtures -------------------------------------------------------


def test_apisix_inline_upstreams_file():
    snap = load_snapshot(str(FIXTURES / "inline-upstreams.yaml"), environ={}, catalog=CATALOG)
    r1, r2 = snap.routes
    assert (r1.id, r2.id) == ("arr_1", "arr_2")  # APISIX's default ids
    assert r1.uris == ("/hello",) and r1.upstream.type == "roundrobin"
    assert r1.upstream.nodes == (UpstreamNode("127.0.0.1", 1980, 1),)
    assert r2.hosts == ("*.example.com",) and r2.methods == ("GET", "HEAD") and r2.priority == 10
    assert (
        r2.upstream.type == "chash"
        and r2.upstream.hash_on == "header"
        and r2.upstream.key == "X-User"
    )
    assert [(n.host, n.port, n.weight, n.priority) for n in r2.upstream.nodes] == [
        ("127.0.0.1", 1981, 1, 0),
        ("127.0.0.2", 1981, 2, -1),
    ]


def test_apisix_upstream_references_file():
    snap = load_snapshot(str(FIXTURES / "upstream-refs.yaml"), environ={}, catalog=CATALOG)
    assert set(snap.upstreams) == {"1", "backend2"}  # integer ids become strings, as in etcd keys
    u1 = snap.upstreams["1"]
    assert u1.retries == 2 and u1.timeout.read == 3.0
    assert {(n.host, n.port, n.weight) for n in u1.nodes} == {
        ("127.0.0.1", 1980, 1),
        ("127.0.0.1", 1981, 3),
    }
    u2 = snap.upstreams["backend2"]
    assert u2.nodes == (UpstreamNode("backend.example.com", 443, 1),)  # https default port
    assert u2.pass_host == "rewrite" and u2.upstream_host == "internal.example.com"
    routes = {r.id: r for r in snap.routes}
    assert routes["1"].upstream_id == "1"
    assert routes["2"].service_id == "1" and routes["2"].uris == ("/v1/*", "/v2/*")
    assert routes["2"].remote_addrs == ("10.0.0.0/8", "::1")
    assert routes["2"].vars == (("arg_version", "==", "2"), ("http_x_env", "~~", "^(prod|stage)$"))
    assert routes["3"].status == 0 and routes["3"].enable_websocket is True
    assert snap.services["1"].hosts == ("api.example.com",)


def test_apisix_consumers_plugin_configs_global_rules_file():
    snap = load_snapshot(str(FIXTURES / "consumers.yaml"), environ={}, catalog=CATALOG)
    route = snap.routes[0]
    # `key-auth:` with no value means {}, then the plugin's defaults apply.
    assert dict(route.plugins["key-auth"]) == {
        "header": "apikey",
        "query": "apikey",
        "hide_credentials": False,
    }
    assert route.plugin_config_id == "common"
    assert snap.plugin_configs["common"].plugins["key-auth"]["header"] == "X-Key"
    jack = snap.consumers["jack"]
    assert jack.group_id == "company_a" and dict(jack.plugins["key-auth"]) == {"key": "user-key"}
    assert set(snap.consumers) == {"jack", "rose"}
    assert snap.global_rules["1"].plugins["key-auth"]["hide_credentials"] is True
    assert snap.plugin_metadata["key-auth"]["log_format"]["host"] == "$host"


def test_default_config_is_valid():
    snap = load_snapshot(str(Path(__file__).parents[2] / "config" / "ando.yaml"), environ={})
    assert snap.routes and snap.node.listen[0].port == 9080


def test_default_config_starts_with_the_editor_schema_line():
    first = (Path(__file__).parents[2] / "config" / "ando.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/ando.schema.json"


# --- defaults and node settings -----------------------------------------------------------


def test_schema_defaults_are_applied():
    snap = build(f"routes:\n  - uri: /a\n    {UP}\n")
    r = snap.routes[0]
    assert (r.priority, r.status, r.enable_websocket) == (0, 1, None)  # None: the service decides
    up = r.upstream
    assert (up.type, up.hash_on, up.scheme, up.pass_host) == ("roundrobin", "vars", "http", "pass")
    assert (up.keepalive_pool.size, up.keepalive_pool.idle_timeout, up.keepalive_pool.requests) == (
        320,
        60,
        1000,
    )
    node = snap.node
    assert [(lst.host, lst.port) for lst in node.listen] == [("0.0.0.0", 9080)]
    assert node.workers == "auto" and node.plugins is None


def test_node_settings_listen_forms():
    cert, key = _cert_and_key()
    snap = build(
        "ando:\n  workers: 2\n  listen:\n    - '127.0.0.1:8080'\n    - {addr: '[::1]:8443', tls: true}\n"
        + _ssl_yaml(cert, key)
    )
    assert snap.node.workers == 2
    assert [(lst.host, lst.port, lst.tls) for lst in snap.node.listen] == [
        ("127.0.0.1", 8080, False),
        ("::1", 8443, True),
    ]


def test_tls_listener_needs_certificates_and_http2_is_refused():
    found = problems(
        "ando:\n  listen:\n    - {addr: '0.0.0.0:9443', tls: true, http2: true}\nroutes: []\n"
    )
    assert found == [
        "t.yaml:3:7: ando.listen[0]: tls: true needs at least one certificate in ssls",
        "t.yaml:3:48: ando.listen[0].http2: HTTP/2 is not supported yet; remove http2: true",
    ]


def test_snapshot_is_immutable():
    snap = build(f"routes:\n  - uri: /a\n    plugins: {{key-auth: {{}}}}\n    {UP}\n")
    with pytest.raises(AttributeError):
        snap.routes[0].uris = ("/b",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.routes[0].plugins["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.upstreams["x"] = 1  # type: ignore[index]


def test_empty_route_list_is_valid_but_an_empty_file_is_not():
    assert build("routes: []\n").routes == ()
    assert problems("") == [
        "t.yaml:1:1: the file has no content; an empty config is written `routes: []`"
    ]
    assert problems("# only a comment\n#END\n")[0].endswith(
        "an empty config is written `routes: []`"
    )


# --- every class of diagnostic, with exact positions ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown top-level section, with a suggestion
        (
            "servces: []\n",
            "t.yaml:1:1: servces: unknown section 'servces'; did you mean 'services'?",
        ),
        (
            "- a\n",
            "t.yaml:1:1: the top level must be a mapping of sections (ando:, routes:, upstreams:, ...)",
        ),
        ("routes: {}\n", "t.yaml:1:9: routes: expected a list of routes, got dict"),
        ("routes: [3]\n", "t.yaml:1:10: routes[0]: each item of routes must be an object"),
        # unknown field, pointing at the key
        (
            f"routes:\n  - uri: /a\n    methds: [GET]\n    {UP}\n",
            "t.yaml:3:5: routes[0].methds: unknown field 'methds'; did you mean 'methods'?",
        ),
        # wrong type
        (
            f"routes:\n  - uri: /a\n    priority: high\n    {UP}\n",
            't.yaml:3:15: routes[0].priority: expected integer, got string "high"',
        ),
        # enum with a suggestion
        (
            "upstreams:\n  - type: round_robin\n    nodes: {'a:1': 1}\n",
            't.yaml:2:11: upstreams[0].type: "round_robin" is not one of "roundrobin", "chash", "ewma", '
            "\"least_conn\"; did you mean 'roundrobin'?",
        ),
        # minimum
        (
            "upstreams:\n  - nodes: {'a:1': -1}\n",
            't.yaml:2:20: upstreams[0].nodes["a:1"]: must be >= 0, got -1',
        ),
        # mutually exclusive fields
        (
            f"routes:\n  - uri: /a\n    uris: [/b]\n    {UP}\n",
            "t.yaml:2:5: routes[0]: fields 'uri' and 'uris' cannot be used together; choose one",
        ),
        # conditional requirement
        (
            "upstreams:\n  - nodes: {'a:1': 1}\n    type: chash\n",
            "t.yaml:2:5: upstreams[0]: missing required field 'key' (required when type is \"chash\")",
        ),
        # duplicate ids
        (
            f"routes:\n  - id: r\n    uri: /a\n    {UP}\n  - id: r\n    uri: /b\n    {UP}\n",
            "t.yaml:5:9: routes[1].id: duplicate id 'r' (also routes[0] at line 2)",
        ),
        # 1 and "1" are the same id
        (
            "upstreams:\n  - id: 1\n    nodes: {'a:1': 1}\n  - id: '1'\n    nodes: {'a:1': 1}\n",
            "t.yaml:4:9: upstreams[1].id: duplicate id '1' (also upstreams[0] at line 2)",
        ),
        # consumer usernames
        (
            "consumers:\n  - username: jack\n  - username: jack\n",
            "t.yaml:3:15: consumers[1].username: duplicate username 'jack' (also consumers[0] at line 2)",
        ),
        # dangling references, with a suggestion
        (
            "upstreams:\n  - id: backend\n    nodes: {'a:1': 1}\nroutes:\n  - uri: /a\n    upstream_id: backnd\n",
            "t.yaml:6:18: routes[0].upstream_id: 'backnd' does not exist in upstreams (defined: backend); "
            "did you mean 'backend'?",
        ),
        (
            "routes:\n  - uri: /a\n    service_id: 7\n",
            "t.yaml:3:17: routes[0].service_id: '7' does not exist: the file defines no services",
        ),
        (
            f"routes:\n  - uri: /a\n    plugin_config_id: pc\n    {UP}\n",
            "t.yaml:3:23: routes[0].plugin_config_id: 'pc' does not exist: the file defines no plugin_configs",
        ),
        (
            "consumers:\n  - username: a\n    group_id: g\n",
            "t.yaml:3:15: consumers[0].group_id: 'g' does not exist: the file defines no consumer_groups",
        ),
        # a service without an upstream, used by a route without one
        (
            "services:\n  - id: s\nroutes:\n  - uri: /a\n    service_id: s\n",
            "t.yaml:4:5: routes[0]: route has no upstream: set upstream, upstream_id, or a service_id whose "
            "service has one",
        ),
        # vars expressions
        (
            f"routes:\n  - uri: /a\n    vars: [[arg_a, '=~', x]]\n    {UP}\n",
            "t.yaml:3:20: routes[0].vars[0][1]: unknown operator '=~'; did you mean '~~'?",
        ),
        (f"routes:\n  - uri: /a\n    vars: [[http_x, '~~', '(']]\n    {UP}\n", None),
        # IPs and CIDRs
        (f"routes:\n  - uri: /a\n    remote_addr: 10.0.0.300\n    {UP}\n", None),
        (
            f"routes:\n  - uri: /a\n    remote_addrs: ['10.0.0.0/8', '10.0.0.0/33']\n    {UP}\n",
            None,
        ),
        # node addresses
        (
            "upstreams:\n  - nodes: {'10.0.0.1:99999': 1}\n",
            't.yaml:2:13: upstreams[0].nodes["10.0.0.1:99999"]: "10.0.0.1:99999" is not a valid node address '
            "(host:port, port 1-65535)",
        ),
        # plugins
        (
            f"routes:\n  - uri: /a\n    plugins: {{key-auht: {{}}}}\n    {UP}\n",
            "t.yaml:3:15: routes[0].plugins.key-auht: unknown plugin 'key-auht'; did you mean 'key-auth'?",
        ),
        (
            f"routes:\n  - uri: /a\n    plugins:\n      key-auth: {{header: 5}}\n    {UP}\n",
            "t.yaml:4:26: routes[0].plugins.key-auth.header: expected string, got integer 5",
        ),
        (
            f"routes:\n  - uri: /a\n    plugins:\n      key-auth: [1]\n    {UP}\n",
            "t.yaml:4:17: routes[0].plugins.key-auth: the configuration of plugin 'key-auth' must be an object",
        ),
        (
            "consumers:\n  - username: a\n    plugins:\n      key-auth: {}\n",
            "t.yaml:4:17: consumers[0].plugins.key-auth: missing required field 'key'",
        ),
        (
            f"routes:\n  - uri: /a\n    plugins:\n      key-auth: {{_meta: {{disable: 1}}}}\n    {UP}\n",
            "t.yaml:4:35: routes[0].plugins.key-auth._meta.disable: expected boolean, got integer 1",
        ),
        (
            f"routes:\n  - uri: /a\n    plugins:\n      key-auth: {{_meta: {{filter: [[a, '=', b]]}}}}\n    {UP}\n",
            "t.yaml:4:39: routes[0].plugins.key-auth._meta.filter[0][1]: unknown operator '='; did you mean '=='?",
        ),
        (
            "plugin_metadata:\n  - id: nope\n",
            "t.yaml:2:9: plugin_metadata[0].id: unknown plugin 'nope'",
        ),
        (
            "ando:\n  plugins: [key-auth, jwt-auth]\nroutes: []\n",
            "t.yaml:2:23: ando.plugins[1]: unknown plugin 'jwt-auth'; did you mean 'key-auth'?",
        ),
        # YAML-level problems come in the same list
        (
            f"routes:\n  - uri: /a\n    uri: /b\n    {UP}\n",
            "t.yaml:3:5: routes[0].uri: duplicate key 'uri' (first defined at line 2)",
        ),
        (
            f"routes:\n  - uri: ${{{{NOPE}}}}\n    {UP}\n",
            "t.yaml:2:10: routes[0].uri: environment variable NOPE not set and no default given "
            "(write ${{NOPE:=default}} to give one)",
        ),
        (
            "routes: [\n",
            "t.yaml:2:1: invalid YAML: while parsing a flow node: did not find expected node content",
        ),
        # node settings
        (
            "ando:\n  lmits: {}\nroutes: []\n",
            "t.yaml:2:3: ando.lmits: unknown field 'lmits'; did you mean 'limits'?",
        ),
        ("ando:\n  workers: 0\nroutes: []\n", "t.yaml:2:12: ando.workers: must be >= 1, got 0"),
        (
            "ando:\n  listen: ['0.0.0.0:80', '0.0.0.0:80']\nroutes: []\n",
            "t.yaml:2:26: ando.listen[1]: 0.0.0.0:80 is already listed at listen[0]",
        ),
        (  # a side server on a port the gateway listens on (here through 0.0.0.0)
            "ando:\n  listen: ['0.0.0.0:9080']\n"
            "  observability: {prometheus: {listen: '127.0.0.1:9080'}}\nroutes: []\n",
            "t.yaml:3:40: ando.observability.prometheus.listen: 127.0.0.1:9080 overlaps "
            "ando.listen[0]: one port cannot serve both",
        ),
        (
            "ando:\n  observability:\n    prometheus: {listen: '127.0.0.1:7085'}\nroutes: []\n",
            "t.yaml:3:26: ando.observability.prometheus.listen: 127.0.0.1:7085 overlaps "
            "ando.observability.status.listen: one port cannot serve both",
        ),
    ],
)
def test_diagnostic(text, expected):
    found = problems(text)
    if expected is None:
        assert len(found) == 1, found
    else:
        assert expected in found, found


def test_regex_and_cidr_messages_say_what_is_wrong():
    (regex,) = problems(f"routes:\n  - uri: /a\n    vars: [[http_x, '~~', '(']]\n    {UP}\n")
    assert (
        regex.startswith("t.yaml:3:27: routes[0].vars[0][2]: ")
        and "bad regular expression" in regex
    )
    (cidr,) = problems(f"routes:\n  - uri: /a\n    remote_addrs: ['10.0.0.0/33']\n    {UP}\n")
    assert cidr.startswith("t.yaml:3:20: routes[0].remote_addrs[0]: ") and "10.0.0.0/33" in cidr


def test_all_problems_reported_in_one_pass_sorted_by_position():
    text = (
        "routes:\n"
        "  - uri: /a\n"
        "    methods: [GTE]\n"
        "    upstream_id: u\n"
        "  - uri: /b\n"
        "    upstream_id: missing\n"
        "upstreams:\n"
        "  - nodes: {'a:1': x}\n"
        "bogus: 1\n"
    )
    found = problems(text)
    assert len(found) == 4
    lines = [int(f.split(":")[1]) for f in found]
    assert lines == sorted(lines) == [3, 6, 8, 9]


def test_a_bad_item_is_reported_once_not_as_a_cascade():
    # The route's shape is wrong, so its references are not checked on top of that.
    found = problems("routes:\n  - uri: 5\n    upstream_id: nope\n")
    assert found == ["t.yaml:2:10: routes[0].uri: expected string, got integer 5"]


# --- certificates ---------------------------------------------------------------------------


def _cert_and_key(cn: str = "example.com") -> tuple[str, str]:
    return make_cert(cn)


def _ssl_yaml(cert: str, key: str, snis: str = "[example.com]") -> str:
    ind = "\n      "
    return (
        "ssls:\n  - id: s1\n"
        f"    snis: {snis}\n"
        f"    cert: |{ind}{ind.join(cert.strip().splitlines())}\n"
        f"    key: |{ind}{ind.join(key.strip().splitlines())}\n"
    )


def test_matching_certificate_and_key_are_accepted():
    cert, key = _cert_and_key()
    snap = build(_ssl_yaml(cert, key))
    assert snap.ssls["s1"].snis == ("example.com",)
    assert snap.ssls["s1"].certificates[0].cert.startswith("-----BEGIN CERTIFICATE-----")


def test_key_of_another_certificate_is_refused():
    cert, _ = _cert_and_key()
    _, other_key = _cert_and_key()
    (found,) = problems(_ssl_yaml(cert, other_key))
    assert (
        found.startswith("t.yaml:")
        and "ssls[0].key: the private key does not match the certificate" in found
    )


def test_garbage_certificate_is_refused_with_its_position():
    cert, key = _cert_and_key()
    broken = cert.replace("MII", "XXX", 1)
    found = problems(_ssl_yaml(broken, key))
    assert any(
        "ssls[0].cert: not a PEM certificate" in f and f.startswith("t.yaml:4:11:") for f in found
    ), found


def test_ssl_needs_an_sni():
    cert, key = _cert_and_key()
    found = problems(_ssl_yaml(cert, key, snis="[]"))
    assert any("ssls[0].snis" in f for f in found), found


def test_side_listener_addresses_are_checked_like_listen():
    text = """\
ando:
  observability:
    status: {listen: "10.0.0.300:7085"}
    prometheus: {listen: "[::::]:9091"}
routes: []
"""
    assert problems(text) == [
        "t.yaml:3:22: ando.observability.status.listen: '10.0.0.300:7085': '10.0.0.300' is not "
        "a valid host name or IP address",
        "t.yaml:4:26: ando.observability.prometheus.listen: '[::::]:9091': '::::' is not an "
        "IPv6 address",
    ]
