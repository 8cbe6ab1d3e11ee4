"""A Snapshot compiled for serving: the router, one balancer per upstream, routes resolved.

Built once per config version, away from the request path; a request then needs only a router
walk and attribute reads. Inheritance from services is resolved here (hosts, upstream,
enable_websocket), as are upstream defaults (retries = nodes - 1) and route timeouts.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import Any

from ando.config.snapshot import (
    Route,
    Service,
    Snapshot,
    Timeout,
    Upstream,
    thaw,
    upstream_from_conf,
)
from ando.observability.metrics import RouteMetrics
from ando.plugins.base import Plugin
from ando.plugins.chain import ChainBuilder, PluginChain
from ando.plugins.registry import builtin_plugins
from ando.plugins.shared import SharedDict
from ando.plugins.vartemplate import VarTemplate
from ando.proxy.balancer import NOTHING_TRIED, Balancer, Node, make_balancer
from ando.proxy.health import HealthChecker
from ando.proxy.variables import Vars
from ando.router.expr import compile_expr
from ando.router.ipset import IPSet
from ando.router.router import RouteEntry, Router

DEFAULT_TIMEOUT = Timeout(60.0, 60.0, 60.0)


class UpstreamRuntime:
    __slots__ = (
        "balancer",
        "health",
        "id",
        "max_attempts",
        "node_hosts",
        "nodes",
        "only_node",
        "only_pool_key",
        "pass_host",
        "pool",
        "pool_keys",
        "record",
        "retry_timeout",
        "scheme",
        "timeout",
        "tls",
        "upstream_host",
    )

    def __init__(self, record: Upstream) -> None:
        self.record = record
        self.id = record.id
        self.health: HealthChecker | None = None  # when `checks` is set (ando/proxy/health.py)
        self.nodes = tuple(Node(n.host, n.port, n.weight, n.priority) for n in record.nodes)
        self.balancer: Balancer = make_balancer(
            record.type, self.nodes, hash_key=_hash_key(record) if record.type == "chash" else None
        )
        usable = [n for n in self.nodes if n.weight > 0]
        # One usable node: every balancer picks it (down or not: with all nodes down they fail
        # open), so the proxy takes it without asking; a retry finds it tried, as pick would.
        distinct = set(usable)
        self.only_node: Node | None = usable[0] if len(distinct) == 1 else None
        if len(self.nodes) == 1 and self.only_node is not None:
            # APISIX's pick_server (apisix/balancer.lua) answers an upstream of exactly one node
            # with that node on every try, without a picker: explicit `retries` retry it.
            self.balancer = _OneNode(self.balancer, self.only_node)
        retries = record.retries if record.retries is not None else max(len(usable) - 1, 0)
        self.max_attempts = 1 + retries
        self.retry_timeout = record.retry_timeout
        self.timeout = record.timeout
        self.pass_host = record.pass_host
        self.upstream_host = record.upstream_host.encode() if record.upstream_host else None
        # The Host header for pass_host "node" (and for a request without one): the node's
        # address, its port left out when it is the scheme's default, as a client would write it.
        default_port = 443 if record.scheme in ("https", "grpcs") else 80
        self.node_hosts: Mapping[Node, bytes] = {
            n: (n.addr[: -len(str(n.port)) - 1] if n.port == default_port else n.addr).encode()
            for n in self.nodes
        }
        self.pool = record.keepalive_pool
        self.scheme = record.scheme
        self.tls: ssl.SSLContext | None = None
        if record.scheme in ("https", "grpcs"):
            ctx = ssl.create_default_context()
            verify = bool(record.tls and record.tls.get("verify"))
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.tls = ctx
        # The keep-alive pool's key per node: a TLS connection is never handed to plain HTTP.
        self.pool_keys: Mapping[Node, str] = {
            n: n.addr if self.tls is None else "tls:" + n.addr for n in self.nodes
        }
        # The only node's, looked up here: a Node's hash is a Python call on every lookup.
        self.only_pool_key = self.pool_keys[self.only_node] if self.only_node else ""


class _OneNode:
    """The balancer of a one-node upstream: that node on every pick, tried or not (APISIX's
    pick_server). Health and request counts still reach the node's own balancer."""

    __slots__ = ("_inner", "_node", "nodes", "tracks")

    def __init__(self, inner: Balancer, node: Node) -> None:
        self._inner = inner
        self._node = node
        self.nodes = inner.nodes
        self.tracks = inner.tracks

    def pick(self, request: object, tried: AbstractSet[Node] = NOTHING_TRIED) -> Node | None:
        return self._node

    def on_start(self, node: Node) -> None:
        self._inner.on_start(node)

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:
        self._inner.on_finish(node, seconds, failed)

    def mark_down(self, node: Node) -> None:
        self._inner.mark_down(node)

    def mark_up(self, node: Node) -> None:
        self._inner.mark_up(node)


def _hash_key(record: Upstream) -> Callable[[object], str | None]:
    """chash key per APISIX's hash_on; a missing value falls back to the client address."""
    key = record.key or ""
    on = record.hash_on
    if on == "vars":
        name = key
    elif on == "header":
        name = "http_" + key.lower().replace("-", "_")
    elif on == "cookie":
        name = "cookie_" + key
    elif on == "consumer":
        name = "consumer_name"
    else:  # vars_combinations: "$remote_addr-${http_x}", core.utils.resolve_var's templates
        template = VarTemplate(key)

        def combined(v: object) -> str | None:
            # chash.lua: a key in which no variable resolved is no key at all (n_resolved == 0),
            # whatever literal text it has: the client address is hashed instead.
            assert isinstance(v, Vars)
            out, resolved = template.resolve(v.get)
            return out if resolved else v.client_addr

        return combined

    def lookup(v: object) -> str | None:
        assert isinstance(v, Vars)
        return v.get(name) or v.client_addr

    return lookup


class RouteRuntime:
    __slots__ = (
        "chain",
        "configured",
        "id",
        "metrics",
        "name",
        "record",
        "service_id",
        "timeout",
        "upstream",
        "websocket",
    )

    def __init__(
        self,
        record: Route,
        service: Service | None,
        upstream: UpstreamRuntime | None,
        chain: PluginChain | None = None,
    ) -> None:
        self.record = record
        self.chain = chain
        self.id = record.id
        self.name = record.name
        self.service_id = record.service_id
        self.upstream = upstream
        own = record.enable_websocket
        self.websocket = own if own is not None else bool(service and service.enable_websocket)
        base = upstream.timeout if upstream is not None else None
        self.timeout = record.timeout or base or DEFAULT_TIMEOUT
        self.metrics: RouteMetrics | None = None  # set when the prometheus plugin counts it
        # Every configured plugin, for `ando explain`: `chain` is None when none of them runs
        # in a phase (prometheus alone is served by the gateway itself).
        self.configured = chain


def enabled_plugins(snapshot: Snapshot) -> Mapping[str, type[Plugin]]:
    """The built-ins this node runs: `ando.plugins`, or all of them; plus the Lua plugins
    `ando.lua.plugins` names (ando/lua), loaded in this worker's Lua state."""
    from ando.lua.serverless import serverless_plugins  # built-ins on the Lua runtime

    every = {**builtin_plugins(), **serverless_plugins()}
    wanted = snapshot.node.plugins
    chosen = every if wanted is None else {n: c for n, c in every.items() if n in wanted}
    if snapshot.node.lua.get("plugins"):
        from ando.lua.plugin import load_lua_plugins

        classes, problems = load_lua_plugins(snapshot.node.lua, snapshot.file)
        if problems:
            raise RuntimeError(f"Lua plugins: {problems[0][1]}")
        chosen = {**chosen, **{cls.name: cls for _, cls in classes}}
    return MappingProxyType(dict(chosen))


class RuntimeConfig:
    __slots__ = (
        "global_chain",
        "global_configured",
        "global_metrics",
        "health_checked",
        "router",
        "routes",
        "snapshot",
        "upstreams",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        shared_state: SharedDict | None = None,
        plugins: Mapping[str, type[Plugin]] | None = None,
        log: Callable[..., None] | None = None,
        worker_cache: dict[Any, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        shared = {uid: UpstreamRuntime(u) for uid, u in snapshot.upstreams.items()}
        service_ups = {
            sid: UpstreamRuntime(s.upstream) for sid, s in snapshot.services.items() if s.upstream
        }
        self.upstreams: Mapping[str, UpstreamRuntime] = MappingProxyType(shared)

        def make_upstream(ref: Any) -> UpstreamRuntime | None:
            """For plugins that route (traffic-split): an upstream id (None when no upstream has
            it), or an inline upstream object as the plugin's configuration holds it (validated
            and defaulted by the plugin's schema), which becomes a record as a route's own
            does; its `id`, when the plugin sets one, names it in logs."""
            if isinstance(ref, str):
                return shared.get(ref)
            if isinstance(ref, Mapping):
                ref = upstream_from_conf(ref, str(ref.get("id", "inline")))
            return UpstreamRuntime(ref)

        chains = ChainBuilder(
            snapshot,
            plugins if plugins is not None else enabled_plugins(snapshot),
            shared_state if shared_state is not None else SharedDict(4096),
            make_upstream=make_upstream,
            log=log,
            worker_cache=worker_cache,
        )
        glob = self.global_configured = chains.global_chain
        counting = "prometheus" in chains.classes
        # Unmatched requests are counted (under route "") when a global rule has the plugin.
        self.global_metrics = bool(
            counting and glob is not None and glob.configured("prometheus") is not None
        )
        # Global rules that run nothing (only prometheus, say) leave 404s on the fast path.
        self.global_chain = glob if glob is not None and glob.has_phases else None
        routes: list[RouteRuntime] = []
        entries: list[RouteEntry] = []
        # Upstreams with health checks, named as APISIX names them in apisix_upstream_status.
        checked: list[tuple[str, UpstreamRuntime]] = [
            (f"/upstreams/{uid}", u) for uid, u in shared.items() if u.record.checks is not None
        ]
        checked += [
            (f"/services/{sid}", u) for sid, u in service_ups.items() if u.record.checks is not None
        ]
        for r in snapshot.routes:
            service = snapshot.services.get(r.service_id) if r.service_id else None
            upstream = _resolve_upstream(r, service, shared, service_ups)
            chain = chains.route_chain(r, service)
            prom = chain.configured("prometheus") if counting and chain is not None else None
            rt = RouteRuntime(r, service, upstream, chain)
            inline = r.upstream is not None and r.upstream_id is None
            if inline and upstream is not None and upstream.record.checks is not None:
                checked.append((f"/routes/{r.id}", upstream))
            if chain is not None and not chain.has_phases:
                rt.chain = None  # e.g. only prometheus: counted by the gateway, no plugin path
            routes.append(rt)
            hosts = r.hosts if r.hosts is not None else (service.hosts if service else None)
            if prom is not None:
                rt.metrics = _route_metrics(r, service, hosts, bool(prom.get("prefer_name")))
            if r.status == 0:
                continue  # disabled: kept for explain and the Admin API, never matched
            entries.append(
                RouteEntry(
                    payload=rt,
                    route_id=r.id,
                    uris=r.uris,
                    methods=frozenset(r.methods) if r.methods else None,
                    hosts=hosts,
                    remote_addrs=IPSet.parse(r.remote_addrs) if r.remote_addrs else None,
                    vars=compile_expr(thaw(r.vars)) if r.vars else None,
                    priority=r.priority,
                    order=r.order,
                )
            )
        self.routes = tuple(routes)
        self.health_checked = tuple(checked)
        self.router = Router(entries)


def _route_metrics(
    route: Route, service: Service | None, hosts: tuple[str, ...] | None, prefer_name: bool
) -> RouteMetrics:
    """APISIX's labels: ids, or names with `prefer_name` (an id where there is no name)."""
    route_label = (route.name or route.id) if prefer_name else route.id
    service_label = ""
    if service is not None:
        service_label = (service.name or service.id) if prefer_name else service.id
    elif route.service_id:
        service_label = route.service_id
    return RouteMetrics(route_label, service_label, tuple(route.uris), hosts)


def _resolve_upstream(
    route: Route,
    service: Service | None,
    shared: Mapping[str, UpstreamRuntime],
    service_ups: Mapping[str, UpstreamRuntime],
) -> UpstreamRuntime | None:
    """APISIX's precedence (apisix/upstream.lua, fetch): the route's upstream_id, then its own
    inline upstream, then its service's."""
    if route.upstream_id is not None:
        return shared.get(route.upstream_id)
    if route.upstream is not None:
        return UpstreamRuntime(route.upstream)
    if service is not None:
        if service.id in service_ups:
            return service_ups[service.id]
        if service.upstream_id is not None:
            return shared.get(service.upstream_id)
    return None
