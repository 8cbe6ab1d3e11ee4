"""The Snapshot: one immutable, fully validated picture of the config.

A Snapshot is what the gateway serves from. It is built once per config version (by
`ando.config.compile.build_snapshot`, the one function `validate` and `run` share) and then only
read, so workers can swap to a new one with a single reference assignment while requests in
flight keep the one they started with. Everything here is frozen: records are frozen dataclasses,
mappings are read-only views and lists are tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ando.config.addresses import parse_host_port

FrozenMap = Mapping[str, Any]
EMPTY: FrozenMap = MappingProxyType({})


def freeze(value: Any) -> Any:
    """Deep-freeze plain data: dict -> read-only mapping, list -> tuple."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items()}) if value else EMPTY
    if isinstance(value, list):
        return tuple([freeze(v) for v in value])
    return value


def thaw(value: Any) -> Any:
    """Back to plain JSON-able data (for the Admin API, `ando explain`, etcd)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def with_defaults(conf: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`conf`'s values over `defaults`, as plain data. For settings objects the code reads with
    their defaults: a schema's defaults fill only the objects a file actually has."""
    given = {k: v for k, v in conf.items() if v is not None} if conf else {}
    return thaw({**defaults, **given})


# Where the master's side servers listen unless told (schemas/resources/node.json's defaults).
SIDE_LISTEN_DEFAULTS = {"status": "127.0.0.1:7085", "prometheus": "127.0.0.1:9091"}


def side_listener(observability: Mapping[str, Any], side: str) -> tuple[bool, str]:
    """(enabled, listen) of the `status` or `prometheus` side server, with the schema's
    defaults (which fill in only the objects a file actually has)."""
    settings = observability.get(side) or {}
    listen = settings.get("listen", SIDE_LISTEN_DEFAULTS[side])
    return bool(settings.get("enabled", True)), str(listen)


@dataclass(frozen=True, slots=True)
class Timeout:
    connect: float
    send: float
    read: float


@dataclass(frozen=True, slots=True)
class UpstreamNode:
    host: str
    port: int
    weight: int
    priority: int = 0
    metadata: FrozenMap = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class KeepalivePool:
    size: int
    idle_timeout: float
    requests: int


@dataclass(frozen=True, slots=True)
class Upstream:
    id: str
    type: str
    nodes: tuple[UpstreamNode, ...]
    hash_on: str
    key: str | None
    retries: int | None  # None: APISIX's default, the number of nodes - 1
    retry_timeout: float
    timeout: Timeout | None
    scheme: str
    pass_host: str
    upstream_host: str | None
    keepalive_pool: KeepalivePool
    checks: FrozenMap | None
    tls: FrozenMap | None
    name: str | None
    desc: str | None
    labels: FrozenMap


# The port a node without one gets, by upstream scheme (APISIX's).
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType(
    {"http": 80, "https": 443, "grpc": 80, "grpcs": 443}
)


def timeout_from_conf(raw: Mapping[str, Any] | None) -> Timeout | None:
    """A `timeout` object (connect/send/read seconds) as a record; None when not set."""
    if not raw:
        return None
    return Timeout(
        float(raw.get("connect", 60)), float(raw.get("send", 60)), float(raw.get("read", 60))
    )


def nodes_from_conf(raw: Any, scheme: str) -> tuple[UpstreamNode, ...]:
    """Both APISIX node spellings, `{"host:port": weight}` and `[{host, port, weight}]`, as
    records; a node without a port gets the scheme's. Raises ValueError on a bad address (a
    validated config never has one)."""
    default_port = DEFAULT_PORTS.get(scheme, 80)
    out: list[UpstreamNode] = []
    if isinstance(raw, Mapping):
        for addr, weight in raw.items():
            host, port = parse_host_port(addr, default_port)
            out.append(UpstreamNode(host, port, int(weight)))
    elif isinstance(raw, list | tuple):
        for n in raw:
            host = n["host"].strip("[]")
            out.append(
                UpstreamNode(
                    host,
                    int(n.get("port") or default_port),
                    int(n.get("weight", 1)),
                    int(n.get("priority", 0)),
                    freeze(n.get("metadata", {})),
                )
            )
    return tuple(out)


def upstream_from_conf(raw: Mapping[str, Any], ident: str) -> Upstream:
    """An upstream object as written (a resource, a route's or service's inline one, or a
    plugin's, e.g. traffic-split's) as a record, its unset fields at APISIX's defaults. Shared
    by the compiler and the proxy so that every upstream means the same thing wherever it is
    written."""
    scheme = raw.get("scheme", "http")
    pool = raw.get("keepalive_pool", {})
    return Upstream(
        id=ident,
        type=raw.get("type", "roundrobin"),
        nodes=nodes_from_conf(raw.get("nodes", {}), scheme),
        hash_on=raw.get("hash_on", "vars"),
        key=raw.get("key"),
        retries=raw.get("retries"),
        retry_timeout=float(raw.get("retry_timeout", 0)),
        timeout=timeout_from_conf(raw.get("timeout")),
        scheme=scheme,
        pass_host=raw.get("pass_host", "pass"),
        upstream_host=raw.get("upstream_host"),
        keepalive_pool=KeepalivePool(
            int(pool.get("size", 320)),
            float(pool.get("idle_timeout", 60)),
            int(pool.get("requests", 1000)),
        ),
        checks=freeze(raw["checks"]) if "checks" in raw else None,
        tls=freeze(raw["tls"]) if "tls" in raw else None,
        name=raw.get("name"),
        desc=raw.get("desc"),
        labels=freeze(raw.get("labels", {})),
    )


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    uris: tuple[str, ...]
    methods: tuple[str, ...] | None
    hosts: tuple[str, ...] | None
    remote_addrs: tuple[str, ...] | None
    vars: tuple[Any, ...] | None  # the expression as written; compiled by the router
    priority: int
    status: int
    timeout: Timeout | None
    enable_websocket: bool | None  # None: not set, the service's value applies (APISIX)
    service_id: str | None
    upstream_id: str | None
    upstream: Upstream | None
    plugins: FrozenMap
    plugin_config_id: str | None
    name: str | None
    desc: str | None
    labels: FrozenMap
    order: int  # position in the file: the last tie-break of routing


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    upstream_id: str | None
    upstream: Upstream | None
    plugins: FrozenMap
    hosts: tuple[str, ...] | None
    enable_websocket: bool | None
    name: str | None
    desc: str | None
    labels: FrozenMap


@dataclass(frozen=True, slots=True)
class Consumer:
    username: str
    group_id: str | None
    plugins: FrozenMap
    desc: str | None
    labels: FrozenMap


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    id: str
    plugins: FrozenMap
    name: str | None
    desc: str | None
    labels: FrozenMap


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class SSL:
    id: str
    type: str
    snis: tuple[str, ...]
    certificates: tuple[Certificate, ...]  # the first is `cert`/`key`, then `certs`/`keys`
    client: FrozenMap | None
    ssl_protocols: tuple[str, ...] | None
    status: int
    labels: FrozenMap


@dataclass(frozen=True, slots=True)
class PluginConfig:
    id: str
    plugins: FrozenMap
    name: str | None
    desc: str | None
    labels: FrozenMap


@dataclass(frozen=True, slots=True)
class GlobalRule:
    id: str
    plugins: FrozenMap


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: bool
    http2: bool


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The `ando:` block. Sections later issues give meaning to stay as frozen mappings here
    (already validated and defaulted by schemas/resources/node.json)."""

    listen: tuple[Listener, ...]
    workers: int | str  # "auto" or a count
    limits: FrozenMap
    admin: FrozenMap
    etcd: FrozenMap | None
    observability: FrozenMap
    lua: FrozenMap
    plugins: tuple[str, ...] | None  # None: every built-in is enabled


@dataclass(frozen=True, slots=True)
class Snapshot:
    file: str
    node: NodeSettings
    routes: tuple[Route, ...]
    services: Mapping[str, Service]
    upstreams: Mapping[str, Upstream]
    consumers: Mapping[str, Consumer]
    consumer_groups: Mapping[str, ConsumerGroup]
    ssls: Mapping[str, SSL]
    plugin_configs: Mapping[str, PluginConfig]
    global_rules: Mapping[str, GlobalRule]
    plugin_metadata: Mapping[str, FrozenMap]
    # Files besides the config whose change changes what it means (the Lua modules it loads):
    # the runtime watches them and reloads when one changes.
    source_files: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        return {
            "routes": len(self.routes),
            "services": len(self.services),
            "upstreams": len(self.upstreams),
            "consumers": len(self.consumers),
            "consumer_groups": len(self.consumer_groups),
            "ssls": len(self.ssls),
            "plugin_configs": len(self.plugin_configs),
            "global_rules": len(self.global_rules),
            "plugin_metadata": len(self.plugin_metadata),
        }

    def summary(self) -> str:
        return ", ".join(f"{kind} {n}" for kind, n in self.counts().items())
