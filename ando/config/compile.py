"""Validate a parsed Document and compile it into a Snapshot, reporting every problem in one pass.

Order matters for the quality of the messages: the shape of each resource is checked first
(schema), and only resources whose shape is right go on to the checks that read their fields
(ids, references, expressions, certificates), so one typo yields one message, not a cascade.
A config with any problem is refused whole: APISIX drops a bad item and loads the rest; Ando never
silently loses a route.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

from ando.config.addresses import parse_host_port
from ando.config.diagnostics import ConfigError, Diagnostic, Path
from ando.config.plugins import builtin_catalog, lua_catalog
from ando.config.schemas import SchemaChecker, resource_checker, suggest
from ando.config.snapshot import (
    DEFAULT_PORTS,
    EMPTY,
    SSL,
    Certificate,
    Consumer,
    ConsumerGroup,
    GlobalRule,
    Listener,
    NodeSettings,
    PluginConfig,
    Route,
    Service,
    Snapshot,
    freeze,
    side_listener,
    timeout_from_conf,
    upstream_from_conf,
)
from ando.config.tls import check_certificate_pair
from ando.config.yamlload import Document
from ando.plugins.catalog import PluginCatalog, PluginSpec
from ando.router.expr import ExprError, compile_expr
from ando.router.ipset import IPSet

# Top-level section -> schema name of one of its items.
SECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "routes": "route",
        "services": "service",
        "upstreams": "upstream",
        "consumers": "consumer",
        "consumer_groups": "consumer_group",
        "ssls": "ssl",
        "plugin_configs": "plugin_config",
        "global_rules": "global_rule",
        "plugin_metadata": "plugin_metadata",
    }
)
_WITH_PLUGINS = (
    "routes",
    "services",
    "consumers",
    "consumer_groups",
    "plugin_configs",
    "global_rules",
)

_META_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "disable": {"type": "boolean"},
        "priority": {"type": "integer"},
        "error_response": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "filter": {"type": "array"},
    },
    "additionalProperties": False,
}
_checkers: dict[bytes, SchemaChecker] = {}


def _checker_for(schema: Mapping[str, Any]) -> SchemaChecker:
    """Plugin schemas compiled once per process, keyed by content (Lua plugins re-register theirs
    on every reload, usually unchanged)."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    found = _checkers.get(key)
    if found is None:
        plain = orjson.loads(key)
        plain.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        found = _checkers[key] = SchemaChecker(plain)
    return found


class _Build:
    """The state of one build: the document, the diagnostics so far, what is known valid."""

    def __init__(self, doc: Document, catalog: PluginCatalog) -> None:
        self.doc = doc
        self.catalog = catalog
        self.all_plugins = catalog
        self.diags: list[Diagnostic] = []
        self.source_files: list[str] = []  # Lua modules the config loads
        # section -> list of (index, item) whose schema check passed
        self.valid: dict[str, list[tuple[int, dict[str, Any]]]] = {s: [] for s in SECTIONS}
        # section -> id -> index
        self.ids: dict[str, dict[str, int]] = {s: {} for s in SECTIONS}

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.diags.append(self.doc.diagnostic(path, message, key=key))

    def schema(self, checker: SchemaChecker, instance: Any, path: Path) -> bool:
        problems = checker.problems(instance)
        for p in problems:
            self.error((*path, *p.path), p.message, key=p.at_key)
        return not problems


def build_snapshot(
    doc: Document,
    *,
    catalog: PluginCatalog | None = None,
    early: Sequence[Diagnostic] = (),
) -> Snapshot:
    """The one function that turns a parsed file into a Snapshot (or a ConfigError listing every
    problem). `early` carries what the YAML stage already found, so all are reported together."""
    b = _Build(doc, catalog if catalog is not None else builtin_catalog())
    b.diags.extend(early)
    data = doc.data
    if data is None:
        b.error((), "the file has no content; an empty config is written `routes: []`")
        raise ConfigError(b.diags)
    if not isinstance(data, dict):
        b.error((), "the top level must be a mapping of sections (ando:, routes:, upstreams:, ...)")
        raise ConfigError(b.diags)

    known = ["ando", *SECTIONS]
    for key in data:
        if key not in known:
            b.error((key,), f"unknown section '{key}'{suggest(key, known)}", key=True)

    node = _node_settings(b, data.get("ando"))
    if node is not None and node.plugins is not None:
        for i, name in enumerate(node.plugins):
            if name not in b.all_plugins:
                b.error(("ando", "plugins", i), _unknown_plugin(name, b.all_plugins))
        b.catalog = b.all_plugins.only(node.plugins)
    if node is not None and node.lua.get("plugins"):
        _add_lua_plugins(b, node)  # Lua plugins (ando/lua): always enabled once listed

    for section, kind in SECTIONS.items():
        items = data.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            b.error((section,), f"expected a list of {section}, got {type(items).__name__}")
            continue
        checker = resource_checker(kind)
        for i, item in enumerate(items):
            path = (section, i)
            if not isinstance(item, dict):
                b.error(path, f"each item of {section} must be an object")
                continue
            if section in _WITH_PLUGINS and isinstance(item.get("plugins"), dict):
                for name, conf in item["plugins"].items():
                    if conf is None:  # `key-auth:` with no value means {}
                        item["plugins"][name] = {}
            if b.schema(checker, item, path):
                checker.apply_defaults(item)
                b.valid[section].append((i, item))

    if node is not None and not data.get("ssls"):
        for i, lst in enumerate(node.listen):
            if lst.tls:
                b.error(("ando", "listen", i), "tls: true needs at least one certificate in ssls")
    _assign_ids(b)
    _check_plugins(b)
    _check_limit_count_groups(b)
    _check_references(b)
    _check_fields(b)
    if b.diags:
        raise ConfigError(b.diags)
    assert node is not None
    return _compile(b, node)


# --- node settings --------------------------------------------------------------------------


def _add_lua_plugins(b: _Build, node: NodeSettings) -> None:
    """Lua plugins named by ando.lua.plugins join the catalog (ando/lua); a module that does not
    load is reported at its entry, with the Lua file:line."""
    specs, problems = lua_catalog(node.lua, b.doc.file)
    for i, message in problems:
        b.error(("ando", "lua", "plugins", i), message)
    fresh = []
    for i, spec in specs:
        if spec.name in b.all_plugins:
            b.error(
                ("ando", "lua", "plugins", i),
                f"Lua plugin '{spec.name}' has the name of a built-in plugin",
            )
            continue
        fresh.append(spec)
        if spec.source_file:
            b.source_files.append(spec.source_file)
    b.all_plugins = PluginCatalog.of([*b.all_plugins.specs.values(), *fresh])
    b.catalog = PluginCatalog.of([*b.catalog.specs.values(), *fresh])


_ANY_HOST = frozenset({"0.0.0.0", "::"})


def _overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether listening on `a` and on `b` would take the same port on some address."""
    return a[1] == b[1] and (a[0] == b[0] or a[0] in _ANY_HOST or b[0] in _ANY_HOST)


def _node_settings(b: _Build, raw: Any) -> NodeSettings | None:
    settings: dict[str, Any] = {} if raw is None else raw
    checker = resource_checker("node")
    if not b.schema(checker, settings, ("ando",)):
        return None
    checker.apply_defaults(settings)
    listeners: list[Listener] = []
    seen: dict[tuple[str, int], int] = {}
    for i, entry in enumerate(settings.get("listen", [])):
        spec = {"addr": entry} if isinstance(entry, str) else entry
        path: Path = (
            ("ando", "listen", i) if isinstance(entry, str) else ("ando", "listen", i, "addr")
        )
        try:
            host, port = parse_host_port(str(spec["addr"]))
        except ValueError as e:
            b.error(path, str(e))
            continue
        if (host, port) in seen:
            b.error(path, f"{host}:{port} is already listed at listen[{seen[(host, port)]}]")
            continue
        seen[(host, port)] = i
        if spec.get("http2"):
            b.error(
                ("ando", "listen", i, "http2"), "HTTP/2 is not supported yet; remove http2: true"
            )
        listeners.append(
            Listener(host, port, bool(spec.get("tls", False)), bool(spec.get("http2", False)))
        )
    observability = settings.get("observability", {})
    taken = [(f"ando.listen[{i}]", hp) for hp, i in seen.items()]
    for side in ("status", "prometheus"):  # the side listeners: the same address rules
        enabled, addr = side_listener(observability, side)
        path = ("ando", "observability", side, "listen")
        try:
            hp = parse_host_port(addr)
        except ValueError as e:
            b.error(path, str(e))
            continue
        if not enabled:
            continue
        # Every listener binds with SO_REUSEPORT: two servers on one port would both bind, and
        # the kernel would split connections between them.
        clash = next((name for name, other in taken if _overlap(hp, other)), None)
        if clash is not None:
            b.error(path, f"{addr} overlaps {clash}: one port cannot serve both")
        taken.append((f"ando.observability.{side}.listen", hp))
    plugins = settings.get("plugins")
    return NodeSettings(
        listen=tuple(listeners),
        workers=settings.get("workers", "auto"),
        limits=freeze(settings.get("limits", {})),
        admin=freeze(settings.get("admin", {})),
        etcd=freeze(settings["etcd"]) if "etcd" in settings else None,
        observability=freeze(settings.get("observability", {})),
        lua=freeze(settings.get("lua", {})),
        plugins=tuple(plugins) if plugins is not None else None,
    )


# --- ids ------------------------------------------------------------------------------------


def _id_text(value: Any) -> str:
    return str(value)


def _assign_ids(b: _Build) -> None:
    """APISIX's rule: `id`, else (consumers) `username`, else `arr_<1-based index>`."""
    for section, items in b.valid.items():
        ids = b.ids[section]
        for i, item in items:
            if section == "consumers":
                ident, where = item["username"], "username"
            elif "id" in item:
                ident, where = _id_text(item["id"]), "id"
            else:
                ident, where = f"arr_{i + 1}", None
            if ident in ids:
                first = b.doc.locate((section, ids[ident]))
                what = "username" if section == "consumers" else "id"
                b.error(
                    (section, i, where) if where else (section, i),
                    f"duplicate {what} '{ident}' (also {section}[{ids[ident]}] at line {first[0]})",
                )
                continue
            ids[ident] = i
            item["id"] = ident


# --- plugins --------------------------------------------------------------------------------


def _unknown_plugin(name: str, catalog: PluginCatalog) -> str:
    if len(catalog) == 0:
        return f"unknown plugin '{name}' (this build of Ando has no plugins yet)"
    return f"unknown plugin '{name}'{suggest(name, list(catalog))}"


def _plugin_confs(b: _Build) -> Iterator[tuple[str, int, str, Any]]:
    """(section, index, plugin name, its configuration) for every plugin of every valid item
    that carries plugins, in file order."""
    for section in _WITH_PLUGINS:
        for i, item in b.valid[section]:
            plugins = item.get("plugins")
            if isinstance(plugins, dict):
                for name, conf in plugins.items():
                    yield section, i, name, conf


def _check_plugins(b: _Build) -> None:
    for section, i, name, conf in _plugin_confs(b):
        path = (section, i, "plugins", name)
        spec = b.catalog.get(name)
        if spec is None:
            if name in b.all_plugins:
                b.error(
                    path,
                    f"plugin '{name}' is not enabled on this node (ando.plugins)",
                    key=True,
                )
            else:
                b.error(path, _unknown_plugin(name, b.all_plugins), key=True)
            continue
        _check_plugin_conf(b, spec, conf, path, on_consumer=section == "consumers")
    for i, item in b.valid["plugin_metadata"]:
        name = item["id"]
        spec = b.catalog.get(name)
        if spec is None:
            b.error(("plugin_metadata", i, "id"), _unknown_plugin(name, b.all_plugins))
        elif spec.metadata_schema is None:
            b.error(("plugin_metadata", i, "id"), f"plugin '{name}' takes no plugin_metadata")
        else:
            fields = {k: v for k, v in item.items() if k != "id"}
            checker = _checker_for(spec.metadata_schema)
            if b.schema(checker, fields, ("plugin_metadata", i)):
                checker.apply_defaults(fields)
                item.update(fields)


def _check_limit_count_groups(b: _Build) -> None:
    """limit-count configurations that share a `group` share one counter, so they must be the
    same configuration (defaults filled in), as APISIX refuses otherwise ("group conf
    mismatched"): which count would the shared counter enforce?"""
    first: dict[str, tuple[dict[str, Any], Path]] = {}
    for section, i, name, conf in _plugin_confs(b):
        if name != "limit-count" or not isinstance(conf, dict):
            continue
        group = conf.get("group")
        if not isinstance(group, str):
            continue
        body = {k: v for k, v in conf.items() if k != "_meta"}
        path = (section, i, "plugins", name)
        seen = first.setdefault(group, (body, path))
        if seen[0] != body:
            where = f"{seen[1][0]}[{seen[1][1]}]"
            b.error(
                (*path, "group"),
                f"limit-count group '{group}' is configured differently in {where}: every "
                "limit-count of a group shares one counter, so their configurations must be "
                "the same (APISIX: group conf mismatched)",
            )


def _check_plugin_conf(
    b: _Build, spec: PluginSpec, conf: Any, path: Path, *, on_consumer: bool
) -> None:
    if not isinstance(conf, dict):
        b.error(path, f"the configuration of plugin '{spec.name}' must be an object")
        return
    meta = conf.get("_meta")
    if meta is not None and b.schema(_checker_for(_META_SCHEMA), meta, (*path, "_meta")):
        flt = meta.get("filter")
        if flt is not None:
            _check_expr(b, flt, (*path, "_meta", "filter"))
    body = {k: v for k, v in conf.items() if k != "_meta"}
    schema = (
        spec.consumer_schema if on_consumer and spec.consumer_schema is not None else spec.schema
    )
    checker = _checker_for(schema)
    if b.schema(checker, body, path):
        checker.apply_defaults(body)
        conf.update(body)
        if spec.check is not None:
            for where, message in spec.check(body, on_consumer):
                b.error((*path, *where), message)


def _check_expr(b: _Build, rule: Any, path: Path) -> None:
    try:
        compile_expr(rule)
    except ExprError as e:
        b.error((*path, *e.path), e.message)


# --- references -----------------------------------------------------------------------------


def _ref(b: _Build, value: Any, target: str, path: Path) -> None:
    ident = _id_text(value)
    ids = b.ids[target]
    if ident in ids:
        return
    if not ids:
        b.error(path, f"'{ident}' does not exist: the file defines no {target}")
        return
    sample = ", ".join(list(ids)[:8]) + (", ..." if len(ids) > 8 else "")
    hint = suggest(ident, list(ids))
    b.error(path, f"'{ident}' does not exist in {target} (defined: {sample}){hint}")


def _check_references(b: _Build) -> None:
    for i, route in b.valid["routes"]:
        for field, target in (
            ("service_id", "services"),
            ("upstream_id", "upstreams"),
            ("plugin_config_id", "plugin_configs"),
        ):
            if field in route:
                _ref(b, route[field], target, ("routes", i, field))
    for i, service in b.valid["services"]:
        if "upstream_id" in service:
            _ref(b, service["upstream_id"], "upstreams", ("services", i, "upstream_id"))
    for i, consumer in b.valid["consumers"]:
        if "group_id" in consumer:
            _ref(b, consumer["group_id"], "consumer_groups", ("consumers", i, "group_id"))
    for section, i, name, conf in _plugin_confs(b):
        spec = b.catalog.get(name)
        if spec is None or spec.references is None or not isinstance(conf, dict):
            continue
        for where, target, ident in spec.references(conf):
            _ref(b, ident, target, (section, i, "plugins", name, *where))
    services = {s["id"]: s for _, s in b.valid["services"]}
    configs = {c["id"]: c for _, c in b.valid["plugin_configs"]}
    for i, route in b.valid["routes"]:
        if "upstream" in route or "upstream_id" in route:
            continue
        service = services.get(_id_text(route.get("service_id")))
        if service is not None and ("upstream" in service or "upstream_id" in service):
            continue
        if route.get("plugins") or (service or {}).get("plugins"):
            continue  # a plugin may answer by itself (mocking, redirect, ...)
        if configs.get(_id_text(route.get("plugin_config_id")), {}).get("plugins"):
            continue
        if "service_id" in route and service is None:
            continue  # already reported as a missing reference
        b.error(
            ("routes", i),
            "route has no upstream: set upstream, upstream_id, or a service_id whose service "
            "has one",
        )


# --- field-level checks that a schema cannot express ----------------------------------------


def _check_fields(b: _Build) -> None:
    for i, route in b.valid["routes"]:
        base: Path = ("routes", i)
        if "vars" in route:
            _check_expr(b, route["vars"], (*base, "vars"))
        _check_addrs(b, route, base)
        if "filter_func" in route:
            # APISIX runs it (loadstring) as one more predicate after vars; ignoring it would
            # widen the route, so the file is refused instead.
            b.error(
                (*base, "filter_func"),
                "filter_func is a Lua function, which Ando's router does not run: express the "
                'condition with vars (e.g. [["arg_x", "==", "y"]]) or remove it',
                key=True,
            )
        if isinstance(route.get("upstream"), dict):
            _check_upstream(b, route["upstream"], (*base, "upstream"))
    for i, service in b.valid["services"]:
        if isinstance(service.get("upstream"), dict):
            _check_upstream(b, service["upstream"], ("services", i, "upstream"))
    for i, upstream in b.valid["upstreams"]:
        _check_upstream(b, upstream, ("upstreams", i))
    for i, ssl in b.valid["ssls"]:
        _check_ssl(b, ssl, ("ssls", i))


def _check_addrs(b: _Build, route: dict[str, Any], base: Path) -> None:
    if "remote_addr" in route:
        _check_ip(b, route["remote_addr"], (*base, "remote_addr"))
    for j, addr in enumerate(route.get("remote_addrs", [])):
        _check_ip(b, addr, (*base, "remote_addrs", j))


def _check_ip(b: _Build, value: str, path: Path) -> None:
    try:
        IPSet.parse([value])
    except ValueError as e:
        b.error(path, str(e))


def _check_upstream(b: _Build, up: dict[str, Any], path: Path) -> None:
    nodes = up.get("nodes")
    default_port = DEFAULT_PORTS.get(up.get("scheme", "http"))
    if isinstance(nodes, dict):
        for addr in nodes:
            try:
                parse_host_port(addr, default_port)
            except ValueError as e:
                b.error((*path, "nodes", addr), str(e), key=True)
    elif isinstance(nodes, list):
        for j, node in enumerate(nodes):
            host = node.get("host", "")
            try:
                parse_host_port(
                    f"[{host}]" if ":" in host and not host.startswith("[") else host, 0
                )
            except ValueError as e:
                b.error((*path, "nodes", j, "host"), str(e))


def _check_ssl(b: _Build, ssl: dict[str, Any], path: Path) -> None:
    pairs: list[tuple[Any, Any, Path, Path]] = []
    if "cert" in ssl and "key" in ssl:
        pairs.append((ssl["cert"], ssl["key"], (*path, "cert"), (*path, "key")))
    certs, keys = ssl.get("certs", []), ssl.get("keys", [])
    if len(certs) != len(keys):
        b.error(
            (*path, "keys"), f"{len(certs)} certs but {len(keys)} keys: they pair up by position"
        )
    for j, (cert, key) in enumerate(zip(certs, keys, strict=False)):
        pairs.append((cert, key, (*path, "certs", j), (*path, "keys", j)))
    for cert, key, cert_path, key_path in pairs:
        for which, message in check_certificate_pair(cert, key):
            b.error(cert_path if which == "cert" else key_path, message)
    if ssl.get("type", "server") == "server" and not ssl.get("sni") and not ssl.get("snis"):
        b.error(path, "an ssl needs at least one SNI (sni or snis)")


# --- compiling records ----------------------------------------------------------------------


def _one_or_many(item: Mapping[str, Any], one: str, many: str) -> tuple[Any, ...] | None:
    if many in item:
        return tuple(item[many])
    if one in item:
        return (item[one],)
    return None


def _opt_id(item: Mapping[str, Any], field: str) -> str | None:
    return _id_text(item[field]) if field in item else None


def _compile(b: _Build, node: NodeSettings) -> Snapshot:
    v = b.valid
    upstreams = {u["id"]: upstream_from_conf(u, u["id"]) for _, u in v["upstreams"]}
    services = {
        s["id"]: Service(
            id=s["id"],
            upstream_id=_opt_id(s, "upstream_id"),
            upstream=upstream_from_conf(s["upstream"], f"service:{s['id']}")
            if "upstream" in s
            else None,
            plugins=freeze(s.get("plugins", {})),
            hosts=tuple(h.lower() for h in s["hosts"]) if "hosts" in s else None,
            enable_websocket=s.get("enable_websocket"),
            name=s.get("name"),
            desc=s.get("desc"),
            labels=freeze(s.get("labels", {})),
        )
        for _, s in v["services"]
    }
    routes = tuple(
        Route(
            id=r["id"],
            uris=_one_or_many(r, "uri", "uris") or (),
            methods=tuple(r["methods"]) if "methods" in r else None,
            hosts=tuple(h.lower() for h in _one_or_many(r, "host", "hosts") or ()) or None,
            remote_addrs=_one_or_many(r, "remote_addr", "remote_addrs"),
            vars=freeze(r["vars"]) if "vars" in r else None,
            priority=int(r.get("priority", 0)),
            status=int(r.get("status", 1)),
            timeout=timeout_from_conf(r.get("timeout")),
            enable_websocket=r.get("enable_websocket"),
            service_id=_opt_id(r, "service_id"),
            upstream_id=_opt_id(r, "upstream_id"),
            upstream=upstream_from_conf(r["upstream"], f"route:{r['id']}")
            if "upstream" in r
            else None,
            plugins=freeze(r.get("plugins", {})),
            plugin_config_id=_opt_id(r, "plugin_config_id"),
            name=r.get("name"),
            desc=r.get("desc"),
            labels=freeze(r.get("labels", {})),
            order=i,
        )
        for i, r in v["routes"]
    )
    consumers = {
        c["username"]: Consumer(
            username=c["username"],
            group_id=_opt_id(c, "group_id"),
            plugins=freeze(c.get("plugins", {})),
            desc=c.get("desc"),
            labels=freeze(c.get("labels", {})),
        )
        for _, c in v["consumers"]
    }
    groups = {
        g["id"]: ConsumerGroup(
            g["id"],
            freeze(g.get("plugins", {})),
            g.get("name"),
            g.get("desc"),
            freeze(g.get("labels", {})),
        )
        for _, g in v["consumer_groups"]
    }
    ssls = {}
    for _, s in v["ssls"]:
        certs = []
        if "cert" in s and "key" in s:
            certs.append(Certificate(s["cert"], s["key"]))
        certs += [
            Certificate(c, k) for c, k in zip(s.get("certs", []), s.get("keys", []), strict=True)
        ]
        ssls[s["id"]] = SSL(
            id=s["id"],
            type=s.get("type", "server"),
            snis=tuple(x.lower() for x in _one_or_many(s, "sni", "snis") or ()),
            certificates=tuple(certs),
            client=freeze(s["client"]) if "client" in s else None,
            ssl_protocols=tuple(s["ssl_protocols"]) if "ssl_protocols" in s else None,
            status=int(s.get("status", 1)),
            labels=freeze(s.get("labels", {})),
        )
    configs = {
        c["id"]: PluginConfig(
            c["id"],
            freeze(c.get("plugins", {})),
            c.get("name"),
            c.get("desc"),
            freeze(c.get("labels", {})),
        )
        for _, c in v["plugin_configs"]
    }
    rules = {
        g["id"]: GlobalRule(g["id"], freeze(g.get("plugins", {}))) for _, g in v["global_rules"]
    }
    metadata = {
        m["id"]: freeze({k: x for k, x in m.items() if k != "id"}) for _, m in v["plugin_metadata"]
    }
    ro = MappingProxyType
    return Snapshot(
        source_files=tuple(b.source_files),
        file=b.doc.file,
        node=node,
        routes=routes,
        services=ro(services),
        upstreams=ro(upstreams),
        consumers=ro(consumers),
        consumer_groups=ro(groups),
        ssls=ro(ssls),
        plugin_configs=ro(configs),
        global_rules=ro(rules),
        plugin_metadata=ro(metadata) if metadata else EMPTY,
    )
