"""Plugin chains: for each route, the ready lists of bound phase functions, built once per config.

Merging follows APISIX 3.x. For one plugin name the most specific configuration wins:
consumer > consumer group > route > plugin_config > service. Global rules are separate
instances that run first in every phase (their rewrite and access before the route's rewrite, as
APISIX's `run_global_rules` does). Auth plugins identify the consumer in `rewrite`; the
consumer's and its group's plugins then join the chain (auth plugins among them are credentials,
not plugins to run), their own `rewrite` runs (APISIX's rewrite_in_consumer), then `access`.

`_meta` on a plugin's configuration: `disable` drops it, `priority` reorders it, `filter` (a vars
expression) runs it only on requests that match, `error_response` replaces the body of the
responses it refuses with (status >= 400).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response, implements
from ando.router.expr import compile_expr

# Phases in which a plugin may answer (before the upstream is asked).
REQUEST_PHASES = ("rewrite", "access", "before_proxy")


class Entry:
    """One plugin's bound phase function in a chain."""

    __slots__ = ("fn", "is_async", "name", "phase", "plugin", "priority")

    def __init__(self, plugin: Plugin, phase: str, priority: int, meta: Mapping[str, Any]) -> None:
        self.plugin = plugin
        self.name = plugin.name
        self.phase = phase  # what a plugin_error event names (rewrite, access, ...)
        self.priority = priority
        fn = getattr(plugin, phase)
        self.is_async = inspect.iscoroutinefunction(fn)
        flt = meta.get("filter")
        error_response = meta.get("error_response")
        if error_response is not None and phase in REQUEST_PHASES:
            fn = _with_error_response(fn, error_response, self.is_async)
        if flt is not None:
            fn = _with_filter(fn, compile_expr(flt).evaluate, phase)
        self.fn: Callable[..., Any] = fn


def _with_filter(
    fn: Callable[..., Any], matches: Callable[..., bool], phase: str
) -> Callable[..., Any]:
    if phase == "body_filter":

        def filtered_body(ctx: Any, chunk: bytes, eof: bool) -> bytes:
            return fn(ctx, chunk, eof) if matches(ctx.var) else chunk

        return filtered_body

    def filtered(ctx: Any, *rest: Any) -> Any:
        return fn(ctx, *rest) if matches(ctx.var) else None

    return filtered


def _with_error_response(
    fn: Callable[..., Any], replacement: Any, is_async: bool
) -> Callable[..., Any]:
    def swap(resp: Any) -> Any:
        if isinstance(resp, Response) and resp.status >= 400:
            return Response(resp.status, replacement, resp.headers)
        return resp

    if is_async:

        async def replaced_async(ctx: Any) -> Any:
            return swap(await fn(ctx))

        return replaced_async

    async def swapped_later(pending: Any) -> Any:
        return swap(await pending)

    def replaced(ctx: Any) -> Any:
        result = fn(ctx)
        if result is None or isinstance(result, Response):
            return swap(result)
        return swapped_later(result)  # a sync phase that had to wait after all

    return replaced


class _Configured:
    """One plugin configuration and where it was written."""

    __slots__ = ("conf", "meta", "name", "owner")

    def __init__(self, name: str, conf: Mapping[str, Any], owner: str) -> None:
        self.name = name
        self.owner = owner
        plain = _thaw(conf)
        self.meta: dict[str, Any] = plain.pop("_meta", None) or {}
        self.conf = plain


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


class PluginChain:
    """The phase lists of one route (or of the global rules alone, for unmatched requests)."""

    __slots__ = (
        "_builder",
        "_by_consumer",
        "_merged",
        "access",
        "after_consumer",
        "before_consumer",
        "before_proxy",
        "body_filter",
        "consumer_rewrite",
        "global_access",
        "global_rewrite",
        "header_filter",
        "log",
        "names",
        "request_phases",
        "rewrite",
        "stages",
    )

    def __init__(
        self,
        builder: ChainBuilder,
        merged: dict[str, _Configured],
        consumer_names: frozenset[str] = frozenset(),
    ) -> None:
        self._builder = builder
        self._merged = merged
        self._by_consumer: dict[str, PluginChain] = {}
        own = builder.entries(merged.values())
        glob = builder.global_entries
        self.global_rewrite = glob["rewrite"]
        self.global_access = glob["access"]
        self.rewrite = own["rewrite"]
        # After a consumer joined: the rewrite of the plugins it brought (and only those).
        self.consumer_rewrite = tuple(e for e in own["rewrite"] if e.name in consumer_names)
        self.access = own["access"]
        self.before_proxy = glob["before_proxy"] + own["before_proxy"]
        self.header_filter = glob["header_filter"] + own["header_filter"]
        self.body_filter = glob["body_filter"] + own["body_filter"]
        self.log = glob["log"] + own["log"]
        self.names = tuple(merged)
        # What the pipeline walks: everything up to the point a consumer may join, then the
        # rest (the phases stay in order; the split is only where the chain may change).
        self.before_consumer = self.global_rewrite + self.global_access + self.rewrite
        self.after_consumer = self.access + self.before_proxy
        # The three in the pipeline's stage order (ando/proxy/pipeline.py), by index.
        self.stages = (self.before_consumer, self.consumer_rewrite, self.after_consumer)
        # False when only response-side phases run (a header_filter plugin, say): the request
        # goes straight to the upstream (no consumer can join without a request phase).
        self.request_phases = bool(self.before_consumer or self.after_consumer)

    @property
    def has_phases(self) -> bool:
        """False when no configured plugin runs in any phase (e.g. only `prometheus`, which
        the gateway itself serves): such a route keeps the plugin-free fast path."""
        return bool(
            self.before_consumer
            or self.after_consumer
            or self.header_filter
            or self.body_filter
            or self.log
        )

    def configured(self, name: str) -> Mapping[str, Any] | None:
        """The effective configuration of plugin `name` on this chain (the route's merged one,
        else a global rule's), or None when it is absent or `_meta.disable`d."""
        found = self._merged.get(name)
        if found is None:
            found = next((c for c in self._builder.global_configured if c.name == name), None)
        if found is None or found.meta.get("disable"):
            return None
        return found.conf

    def describe(self) -> list[dict[str, Any]]:
        """The plugins a request on this chain meets, in run order, with where each one's
        configuration came from (for `ando explain`)."""
        out = []
        for group in (self._builder.global_configured, tuple(self._merged.values())):
            rows = []
            for c in group:
                cls = self._builder.classes.get(c.name)
                if cls is None:
                    continue
                rows.append(
                    {
                        "name": c.name,
                        "from": c.owner,
                        "priority": c.meta.get("priority", cls.priority),
                        "disabled": bool(c.meta.get("disable")),
                        "phases": [
                            p for p in _ALL_PHASES if getattr(cls, p) is not getattr(Plugin, p)
                        ],
                        "conf": c.conf,
                    }
                )
            out.extend(sorted(rows, key=lambda r: -r["priority"]))
        return out

    def for_consumer(self, consumer: Any) -> PluginChain:
        """This chain with `consumer`'s (and its group's) plugins merged in; built on first use
        and kept for the life of the config."""
        found = self._by_consumer.get(consumer.username)
        if found is not None:
            return found
        builder = self._builder
        merged = dict(self._merged)
        brought: set[str] = set()
        layers: list[tuple[str, Mapping[str, Any]]] = []
        group = (
            builder.snapshot.consumer_groups.get(consumer.group_id) if consumer.group_id else None
        )
        if group is not None:
            layers.append((f"consumer_group:{group.id}", group.plugins))
        layers.append((f"consumer:{consumer.username}", consumer.plugins))
        for owner, plugins in layers:
            for name, conf in plugins.items():
                cls = builder.classes.get(name)
                if cls is None or cls.type == "auth":
                    continue  # a credential, or a plugin this node does not run
                merged[name] = _Configured(name, conf, owner)
                brought.add(name)
        chain = self if not brought else PluginChain(builder, merged, frozenset(brought))
        self._by_consumer[consumer.username] = chain
        return chain


class ChainBuilder:
    """Builds every chain of one config: plugin instances are made once per (owner, name), so a
    service's plugin is one instance shared by its routes."""

    def __init__(
        self,
        snapshot: Any,
        classes: Mapping[str, type[Plugin]],
        shared: Any,
        *,
        make_upstream: Callable[[Any], Any] | None = None,
        log: Callable[..., None] | None = None,
        worker_cache: dict[Any, Any] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.worker_cache = worker_cache if worker_cache is not None else {}
        self.classes = classes
        self.shared = shared
        self.make_upstream = make_upstream
        self.log = log
        self.cache: dict[Any, Any] = {}
        self._instances: dict[tuple[str, str], Plugin] = {}
        glob: list[_Configured] = []
        for rule in snapshot.global_rules.values():
            glob.extend(
                _Configured(n, c, f"global_rule:{rule.id}") for n, c in rule.plugins.items()
            )
        self.global_configured = tuple(glob)
        self.has_globals = bool(glob)
        self.global_entries = self.entries(glob)
        self.global_chain = PluginChain(self, {}) if glob else None

    def instance(self, configured: _Configured) -> Plugin:
        key = (configured.owner, configured.name)
        found = self._instances.get(key)
        if found is None:
            cls = self.classes[configured.name]
            build = BuildContext(
                owner=configured.owner,
                snapshot=self.snapshot,
                shared=self.shared,
                cache=self.cache,
                metadata=self.snapshot.plugin_metadata.get(configured.name),
                make_upstream=self.make_upstream,
                log=self.log,
                worker_cache=self.worker_cache,
            )
            found = self._instances[key] = cls(configured.conf, build)
        return found

    def entries(self, configured: Any) -> dict[str, tuple[Entry, ...]]:
        lists: dict[str, list[Entry]] = {p: [] for p in _ALL_PHASES}
        for c in configured:
            if c.meta.get("disable") or c.name not in self.classes:
                continue
            plugin = self.instance(c)
            cls = type(plugin)
            priority = c.meta.get("priority", cls.priority)
            for phase in _ALL_PHASES:
                if implements(cls, phase):
                    lists[phase].append(Entry(plugin, phase, priority, c.meta))
        return {p: tuple(sorted(v, key=lambda e: -e.priority)) for p, v in lists.items()}

    def route_chain(self, route: Any, service: Any) -> PluginChain | None:
        """None when neither the route nor the global rules have a plugin: such a route takes
        the proxy's plugin-free fast path."""
        merged: dict[str, _Configured] = {}
        if service is not None:
            for name, conf in service.plugins.items():
                merged[name] = _Configured(name, conf, f"service:{service.id}")
        if route.plugin_config_id is not None:
            pc = self.snapshot.plugin_configs.get(route.plugin_config_id)
            if pc is not None:
                for name, conf in pc.plugins.items():
                    merged[name] = _Configured(name, conf, f"plugin_config:{pc.id}")
        for name, conf in route.plugins.items():
            merged[name] = _Configured(name, conf, f"route:{route.id}")
        if not merged and not self.has_globals:
            return None  # (a consumer only joins a chain through an auth plugin on it)
        return PluginChain(self, merged)


_ALL_PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")
