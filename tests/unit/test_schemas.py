"""The JSON Schema files under schemas/: well-formed, in the dialect the loader supports,
and faithful to APISIX 3.x on realistic resources.

The loader validates with jsonschema (2020-12) and fastjsonschema (draft-07), so every
instance here is checked with both and the two must agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import fastjsonschema
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ando.config.schemas import bundle

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

RESOURCE_FILES = [
    "common",
    "route",
    "service",
    "upstream",
    "consumer",
    "consumer_group",
    "ssl",
    "plugin_config",
    "global_rule",
    "plugin_metadata",
    "node",
]
FILES = ["ando.schema.json"] + [f"resources/{name}.json" for name in RESOURCE_FILES]

ALLOWED_KEYWORDS = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "examples", "default",
    "type", "enum", "const", "properties", "required", "additionalProperties",
    "patternProperties", "propertyNames", "items", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minProperties", "maxProperties", "anyOf", "oneOf", "allOf", "not",
    "if", "then", "else",
}  # fmt: skip
SCHEMA_MAP_KEYWORDS = ("properties", "patternProperties", "$defs")
SCHEMA_LIST_KEYWORDS = ("anyOf", "oneOf", "allOf")
SCHEMA_KEYWORDS = (
    "additionalProperties", "propertyNames", "items", "not", "if", "then", "else",
)  # fmt: skip

CERT = "-----BEGIN CERTIFICATE-----\n" + "A" * 200 + "\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\n" + "B" * 200 + "\n-----END PRIVATE KEY-----\n"


def uri(rel: str) -> str:
    return (SCHEMAS / rel).as_uri()


def load(rel: str) -> dict:
    return json.loads((SCHEMAS / rel).read_text())


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {rel: load(rel) for rel in FILES}


@pytest.fixture(scope="module")
def registry(docs) -> Registry:
    return Registry().with_resources(
        (uri(rel), Resource.from_contents(doc, default_specification=DRAFT202012))
        for rel, doc in docs.items()
    )


def _validator(registry: Registry, rel: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": uri(rel)}, registry=registry)


@pytest.fixture(scope="module")
def fast(docs):
    cache: dict[str, object] = {}

    def get(rel: str):
        if rel not in cache:
            # The loader bundles (inlines $refs) before compiling, and so does this test.
            cache[rel] = fastjsonschema.compile(bundle(docs[rel], SCHEMAS / rel))
        return cache[rel]

    return get


def check_both(registry, fast, rel: str, instance) -> bool:
    """Validity of `instance` under schema `rel`; asserts the two validators agree."""
    slow_ok = _validator(registry, rel).is_valid(instance)
    try:
        fast(rel)(copy.deepcopy(instance))
        fast_ok = True
    except fastjsonschema.JsonSchemaValueException:
        fast_ok = False
    assert slow_ok == fast_ok, f"jsonschema={slow_ok} fastjsonschema={fast_ok} on {instance!r}"
    return slow_ok


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("rel", FILES)
def test_file_is_a_valid_2020_12_schema(rel):
    doc = json.loads((SCHEMAS / rel).read_text())
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == DIALECT
    # No $id: editors (yaml-language-server) then resolve the relative $refs next to the file
    # itself instead of fetching them from a URL.
    assert "$id" not in doc
    assert doc["title"]
    assert doc["description"]


def _walk(schema, where, out, in_properties=False):
    """Yield (where, schema, in_properties) for every subschema."""
    if not isinstance(schema, dict):
        return
    out.append((where, schema, in_properties))
    for kw in SCHEMA_MAP_KEYWORDS:
        for name, sub in schema.get(kw, {}).items():
            _walk(sub, f"{where}/{kw}/{name}", out, in_properties=kw == "properties")
    for kw in SCHEMA_LIST_KEYWORDS:
        for i, sub in enumerate(schema.get(kw, [])):
            _walk(sub, f"{where}/{kw}/{i}", out)
    for kw in SCHEMA_KEYWORDS:
        if kw in schema:
            _walk(schema[kw], f"{where}/{kw}", out)


@pytest.mark.parametrize("rel", FILES)
def test_only_the_shared_dialect_is_used(rel, docs, registry):
    nodes: list = []
    _walk(docs[rel], rel + "#", nodes)
    resolver = registry.resolver(base_uri=uri(rel))
    for where, schema, in_properties in nodes:
        unknown = set(schema) - ALLOWED_KEYWORDS
        assert not unknown, f"{where}: keywords outside the dialect: {unknown}"
        if "$ref" in schema:
            assert set(schema) <= {"$ref", "description"}, f"{where}: $ref with siblings"
            resolver.lookup(schema["$ref"])  # raises if it does not resolve
        if "default" in schema:
            assert in_properties, f"{where}: default outside a properties entry"
        if "pattern" in schema:
            assert schema["pattern"].startswith("^") and schema["pattern"].endswith("$"), where
        if isinstance(schema.get("items"), list) or "prefixItems" in schema:
            pytest.fail(f"{where}: array form of items")
        if schema.get("type") == "object" and "properties" in schema and where.count("/if") == 0:
            assert "additionalProperties" in schema, f"{where}: object left open"
        if in_properties and "/if/" not in where and "/then/" not in where:
            assert schema.get("description"), f"{where}: property without a description"


def _deref(schema, resolver):
    while isinstance(schema, dict) and "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    return schema, resolver


def _has_default(schema, resolver) -> bool:
    """Whether a `default` is reachable from `schema`, following $refs."""
    schema, resolver = _deref(schema, resolver)
    if not isinstance(schema, dict):
        return False
    if "default" in schema:
        return True
    subs = [s for kw in SCHEMA_MAP_KEYWORDS if kw != "$defs" for s in schema.get(kw, {}).values()]
    subs += [s for kw in SCHEMA_LIST_KEYWORDS for s in schema.get(kw, [])]
    subs += [schema[kw] for kw in SCHEMA_KEYWORDS if kw in schema]
    return any(_has_default(sub, resolver) for sub in subs)


@pytest.mark.parametrize("rel", FILES)
def test_defaults_under_anyof_only_where_branches_differ_by_type(rel, docs, registry):
    """The defaults applier picks an anyOf/oneOf branch by the instance's JSON type."""
    nodes: list = []
    _walk(docs[rel], rel + "#", nodes)
    resolver = registry.resolver(base_uri=uri(rel))
    for where, schema, _ in nodes:
        for kw in ("anyOf", "oneOf"):
            branches = [_deref(b, resolver) for b in schema.get(kw, [])]
            if not any(_has_default(b, r) for b, r in branches):
                continue
            types = [b.get("type") for b, _ in branches]
            assert all(isinstance(t, str) for t in types), f"{where}/{kw}: untyped branch"
            assert len(set(types)) == len(types), f"{where}/{kw}: branches share a type"


# --------------------------------------------------------------------------- valid resources

VALID = {
    "resources/route.json": [
        {"uri": "/hello", "upstream_id": 1},
        {
            "id": "r-1",
            "name": "api",
            "desc": "public API",
            "labels": {"env": "prod", "team": "edge"},
            "uris": ["/api/*", "/v2/api/*"],
            "methods": ["GET", "POST", "PURGE"],
            "hosts": ["api.example.com", "*.example.org"],
            "remote_addrs": ["10.0.0.0/8", "192.168.1.7", "::1", "fe80::/10"],
            "vars": [["arg_name", "==", "json"], ["http_x_debug", "~~", "^on$"]],
            "priority": 10,
            "status": 0,
            "timeout": {"connect": 3, "send": 3, "read": 3.5},
            "enable_websocket": True,
            "plugins": {"limit-count": {"count": 2, "time_window": 60}},
            "plugin_config_id": "pc1",
            "upstream": {
                "type": "roundrobin",
                "nodes": {"127.0.0.1:1980": 1, "[::1]:8080": 0, "backend.internal": 2},
            },
            "create_time": 1700000000,
            "update_time": 1700000001,
        },
        {"uri": "/svc", "host": "example.com", "remote_addr": "127.0.0.1", "service_id": "s1"},
        {"uri": "/only-plugins", "plugins": {"echo": {"body": "hi"}}},
    ],
    "resources/upstream.json": [
        {"nodes": {"httpbin.org:80": 1}},
        {
            "id": 7,
            "type": "chash",
            "hash_on": "header",
            "key": "X-User-Id",
            "nodes": [
                {"host": "10.0.0.1", "port": 8080, "weight": 100, "priority": 1},
                {"host": "backend.local", "port": 8081, "weight": 0, "metadata": {"zone": 1}},
                {"host": "10.0.0.3", "weight": 1},
            ],
            "retries": 2,
            "retry_timeout": 0,
            "timeout": {"connect": 1, "send": 2, "read": 5},
            "scheme": "https",
            "pass_host": "rewrite",
            "upstream_host": "internal.example.com",
            "keepalive_pool": {"size": 64, "idle_timeout": 30, "requests": 500},
            "checks": {
                "active": {
                    "type": "http",
                    "http_path": "/healthz",
                    "host": "foo.com",
                    "healthy": {"interval": 2, "successes": 1},
                    "unhealthy": {"interval": 1, "http_failures": 2},
                    "req_headers": ["User-Agent: ando"],
                },
                "passive": {
                    "healthy": {"http_statuses": [200, 201], "successes": 3},
                    "unhealthy": {"http_statuses": [500], "tcp_failures": 2},
                },
            },
            "tls": {"client_cert": CERT, "client_key": KEY, "verify": True},
            "labels": {"version": "v2"},
        },
        {"type": "chash", "key": "remote_addr", "nodes": {"127.0.0.1:80": 1}},
        {"type": "chash", "key": "arg_user", "hash_on": "vars", "nodes": {"a:1": 1}},
        {"type": "chash", "hash_on": "consumer", "nodes": {"127.0.0.1:80": 1}},
        {"type": "least_conn", "pass_host": "node", "nodes": [{"host": "a", "weight": 1}]},
        # APISIX 3.x (on APISIX-Runtime) sets each node's own Host, retries included
        {"pass_host": "node", "nodes": {"a:1": 1, "b:1": 1}},
        {"type": "ewma", "nodes": {}, "scheme": "grpc", "tls": {"client_cert_id": 3}},
    ],
    "resources/service.json": [
        {
            "id": "s1",
            "name": "users",
            "upstream": {"nodes": {"127.0.0.1:1980": 1}},
            "plugins": {"key-auth": {}},
            "hosts": ["users.example.com"],
            "enable_websocket": False,
        },
        {"upstream_id": "u1"},
    ],
    "resources/consumer.json": [
        {"username": "jack", "plugins": {"key-auth": {"key": "auth-one"}}},
        {"username": "team-a_bot", "group_id": "g1", "desc": "CI", "labels": {"org": "a"}},
    ],
    "resources/consumer_group.json": [
        {"id": "company_a", "plugins": {"limit-count": {"count": 200, "time_window": 60}}},
    ],
    "resources/ssl.json": [
        {"id": 1, "cert": CERT, "key": KEY, "snis": ["example.com", "*.example.com"]},
        {
            "cert": CERT,
            "key": KEY,
            "sni": "test.com",
            "certs": [CERT],
            "keys": [KEY],
            "client": {"ca": CERT, "depth": 2},
            "ssl_protocols": ["TLSv1.2", "TLSv1.3"],
            "status": 1,
            "labels": {"k": "v"},
        },
        {"type": "client", "cert": CERT, "key": KEY},
    ],
    "resources/plugin_config.json": [
        {"id": "pc1", "desc": "cors for all", "plugins": {"cors": {}}},
    ],
    "resources/global_rule.json": [{"id": 1, "plugins": {"prometheus": {}}}],
    "resources/plugin_metadata.json": [
        {"id": "http-logger", "log_format": {"host": "$host", "@timestamp": "$time_iso8601"}},
    ],
    "resources/node.json": [
        {},
        {
            "listen": ["0.0.0.0:9080", {"addr": "[::]:9443", "tls": True, "http2": True}],
            "workers": 4,
            "admin": {
                "enabled": True,
                "listen": "127.0.0.1:9180",
                "keys": [
                    {"name": "admin", "key": "edd1c9f034335f136f87ad84b625c8f1", "role": "admin"},
                    {"name": "ro", "key": "4054f7cf07e344346cd3f287985e76a2", "role": "viewer"},
                ],
            },
            "etcd": {"hosts": ["http://127.0.0.1:2379"], "prefix": "/apisix", "timeout": 5},
            "limits": {"max_body_size": 1048576, "header_timeout": 30},
            "observability": {
                "access_log": {"path": "/var/log/ando/access.log"},
                "prometheus": {"enabled": False},
                "status": {"listen": "0.0.0.0:7085"},
            },
            "lua": {"paths": ["lua/"], "plugins": ["my-plugin"], "unsafe": False},
            "plugins": ["key-auth", "limit-count", "proxy-rewrite"],
        },
        {"workers": "auto"},
    ],
}


@pytest.mark.parametrize(
    ("rel", "instance"), [(rel, inst) for rel, insts in VALID.items() for inst in insts]
)
def test_valid_apisix_resources_pass(registry, fast, rel, instance):
    assert check_both(registry, fast, rel, instance)


def test_whole_apisix_standalone_file_passes(registry, fast):
    whole = {
        "routes": [
            {"id": 1, "uri": "/hello", "upstream_id": 1},
            {"id": 2, "uri": "/svc/*", "service_id": "s1", "plugin_config_id": "pc1"},
        ],
        "services": [{"id": "s1", "upstream_id": 1}],
        "upstreams": [{"id": 1, "nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k"}}}],
        "consumer_groups": [{"id": "g", "plugins": {}}],
        "ssls": [{"id": 1, "cert": CERT, "key": KEY, "sni": "a.com"}],
        "plugin_configs": [{"id": "pc1", "plugins": {}}],
        "global_rules": [{"id": 1, "plugins": {"prometheus": {}}}],
        "plugin_metadata": [{"id": "file-logger", "path": "logs/file.log"}],
    }
    assert check_both(registry, fast, "ando.schema.json", whole)
    assert check_both(registry, fast, "ando.schema.json", {"ando": {"workers": 2}, **whole})
    assert not check_both(registry, fast, "ando.schema.json", {**whole, "stream_route": []})
    broken = copy.deepcopy(whole)
    broken["routes"][0]["methods"] = ["FETCH"]
    assert not check_both(registry, fast, "ando.schema.json", broken)


# --------------------------------------------------------------------------- invalid resources

UP = {"nodes": {"127.0.0.1:80": 1}}
INVALID = {
    "uri and uris together": ("route", {"uri": "/a", "uris": ["/b"], "upstream": UP}),
    "neither uri nor uris": ("route", {"upstream": UP}),
    "host and hosts together": ("route", {"uri": "/", "host": "a.com", "hosts": ["b.com"],
                                          "upstream": UP}),
    "remote_addr and remote_addrs together": (
        "route", {"uri": "/", "remote_addr": "1.2.3.4", "remote_addrs": ["::1"], "upstream": UP}
    ),
    "bad method": ("route", {"uri": "/", "methods": ["FETCH"], "upstream": UP}),
    "lower-case method": ("route", {"uri": "/", "methods": ["get"], "upstream": UP}),
    "route without a target": ("route", {"uri": "/"}),
    "host with a trailing newline": (
        "route",
        {"uri": "/", "host": "a.com\n", "upstream": UP},
    ),
    "username with a trailing newline": ("consumer", {"username": "jack\n"}),
    "bad host pattern": ("route", {"uri": "/", "host": "a b.com", "upstream": UP}),
    "bad remote_addr": ("route", {"uri": "/", "remote_addr": "300.1.1.1", "upstream": UP}),
    "bad cidr": ("route", {"uri": "/", "remote_addr": "10.0.0.0/33", "upstream": UP}),
    "status 2": ("route", {"uri": "/", "status": 2, "upstream": UP}),
    "timeout missing read": ("route", {"uri": "/", "upstream": UP,
                                       "timeout": {"connect": 1, "send": 1}}),
    "timeout zero": ("route", {"uri": "/", "upstream": UP,
                               "timeout": {"connect": 0, "send": 1, "read": 1}}),
    "unknown route field": ("route", {"uri": "/", "upstream": UP, "url": "/x"}),
    "id with a slash": ("route", {"id": "a/b", "uri": "/", "upstream": UP}),
    "id zero": ("route", {"id": 0, "uri": "/", "upstream": UP}),
    "label value with space": ("route", {"uri": "/", "upstream": UP, "labels": {"k": "a b"}}),
    "chash without key": ("upstream", {"type": "chash", "nodes": {"a:1": 1}}),
    "chash on vars with unknown var": ("upstream", {"type": "chash", "key": "cookie_x",
                                                    "nodes": {"a:1": 1}}),
    "chash on header with bad name": ("upstream", {"type": "chash", "hash_on": "header",
                                                   "key": "x y", "nodes": {"a:1": 1}}),
    "rewrite without upstream_host": ("upstream", {"pass_host": "rewrite", "nodes": {"a:1": 1}}),
    "node weight -1 (map)": ("upstream", {"nodes": {"127.0.0.1:80": -1}}),
    "node weight -1 (list)": ("upstream", {"nodes": [{"host": "a", "port": 80, "weight": -1}]}),
    "node without weight": ("upstream", {"nodes": [{"host": "a", "port": 80}]}),
    "node port 0": ("upstream", {"nodes": [{"host": "a", "port": 0, "weight": 1}]}),
    "unknown node field": ("upstream", {"nodes": [{"host": "a", "weight": 1, "zone": "x"}]}),
    "bad node address": ("upstream", {"nodes": {"a b:80": 1}}),
    "unknown balancer": ("upstream", {"type": "random", "nodes": UP["nodes"]}),
    "unknown scheme": ("upstream", {"scheme": "ftp", "nodes": UP["nodes"]}),
    "upstream without nodes": ("upstream", {"type": "roundrobin"}),
    "passive check alone": ("upstream", {"nodes": UP["nodes"], "checks": {"passive": {}}}),
    "active successes 0": ("upstream", {"nodes": UP["nodes"],
                                        "checks": {"active": {"healthy": {"successes": 0}}}}),
    "status 600": ("upstream", {"nodes": UP["nodes"], "checks": {
        "active": {"unhealthy": {"http_statuses": [600]}}}}),
    "keepalive size 0": ("upstream", {"nodes": UP["nodes"], "keepalive_pool": {"size": 0}}),
    "tls cert without key": ("upstream", {"nodes": UP["nodes"], "tls": {"client_cert": CERT}}),
    "tls cert id and cert": ("upstream", {"nodes": UP["nodes"], "tls": {
        "client_cert_id": 1, "client_cert": CERT, "client_key": KEY}}),
    "unknown upstream field": ("upstream", {"nodes": UP["nodes"], "discovery": "dns"}),
    "service unknown field": ("service", {"uri": "/"}),
    "consumer without username": ("consumer", {"plugins": {}}),
    "consumer bad username": ("consumer", {"username": "jack.smith"}),
    "consumer_group without plugins": ("consumer_group", {"id": "g"}),
    "ssl without sni": ("ssl", {"cert": CERT, "key": KEY}),
    "ssl with sni and snis": ("ssl", {"cert": CERT, "key": KEY, "sni": "a.com",
                                      "snis": ["b.com"]}),
    "ssl short cert": ("ssl", {"cert": "x", "key": KEY, "sni": "a.com"}),
    "ssl client without key": ("ssl", {"type": "client", "cert": CERT}),
    "ssl old protocol": ("ssl", {"cert": CERT, "key": KEY, "sni": "a.com",
                                 "ssl_protocols": ["SSLv3"]}),
    "plugin_config without plugins": ("plugin_config", {"id": 1}),
    "global_rule without plugins": ("global_rule", {"id": 1}),
    "plugin_metadata without id": ("plugin_metadata", {"log_format": {}}),
    "node unknown field": ("node", {"listener": ["0.0.0.0:9080"]}),
    "node listen without port": ("node", {"listen": ["0.0.0.0"]}),
    "node listen port 70000": ("node", {"listen": ["0.0.0.0:70000"]}),
    "node listen object without addr": ("node", {"listen": [{"tls": True}]}),
    "node workers 0": ("node", {"workers": 0}),
    "node workers many": ("node", {"workers": "many"}),
    "admin key too short": ("node", {"admin": {"keys": [{"name": "a", "key": "short",
                                                         "role": "admin"}]}}),
    "admin role unknown": ("node", {"admin": {"keys": [{"name": "a", "key": "longenough",
                                                        "role": "root"}]}}),
    "etcd without hosts": ("node", {"etcd": {"prefix": "/ando"}}),
    "etcd host not a url": ("node", {"etcd": {"hosts": ["127.0.0.1:2379"]}}),
    "negative body size": ("node", {"limits": {"max_body_size": -1}}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_resources_fail(registry, fast, case):
    kind, instance = INVALID[case]
    assert not check_both(registry, fast, f"resources/{kind}.json", instance)


def test_defaults_match_apisix(registry, fast):
    """fastjsonschema fills `default`s in; they must be APISIX's."""
    route = fast("resources/route.json")(
        {"uri": "/", "upstream": {"nodes": [{"host": "a", "port": 80, "weight": 1}]}}
    )
    assert route["priority"] == 0
    assert route["status"] == 1
    up = route["upstream"]
    assert (up["type"], up["hash_on"], up["scheme"], up["pass_host"]) == (
        "roundrobin",
        "vars",
        "http",
        "pass",
    )
    assert up["nodes"][0]["priority"] == 0
    pool = fast("resources/upstream.json")({"nodes": {}, "keepalive_pool": {}})["keepalive_pool"]
    assert pool == {"size": 320, "idle_timeout": 60, "requests": 1000}
    checks = fast("resources/upstream.json")(
        {"nodes": {}, "checks": {"active": {"healthy": {}, "unhealthy": {}}}}
    )["checks"]["active"]
    assert checks["timeout"] == 1 and checks["concurrency"] == 10
    assert checks["healthy"] == {"interval": 1, "http_statuses": [200, 302], "successes": 2}
    assert checks["unhealthy"]["http_statuses"] == [429, 404, 500, 501, 502, 503, 504, 505]
    assert checks["unhealthy"]["timeouts"] == 3
    node = fast("resources/node.json")({"admin": {}, "etcd": {"hosts": ["http://e:2379"]}})
    assert node["listen"] == ["0.0.0.0:9080"]
    assert node["workers"] == "auto"
    assert node["admin"] == {"enabled": False, "listen": "127.0.0.1:9180"}
    assert node["etcd"]["prefix"] == "/ando" and node["etcd"]["timeout"] == 30
