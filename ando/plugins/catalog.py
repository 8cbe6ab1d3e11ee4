"""What plugins exist: each one's name, priority and configuration schemas.

The config layer validates every `plugins:` block against this catalog, so a plugin is only
accepted once it is registered here with a real implementation behind it. Issue by issue the
built-in plugins add themselves; Lua plugins (ando/lua) register theirs at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin as the config layer sees it. `consumer_schema` applies when the plugin is
    configured on a consumer (APISIX's auth plugins take credentials there, e.g. key-auth's
    `key`); `metadata_schema` validates its `plugin_metadata` entry."""

    name: str
    priority: int
    schema: Mapping[str, Any]
    consumer_schema: Mapping[str, Any] | None = None
    metadata_schema: Mapping[str, Any] | None = None
    kind: str = "python"
    source_file: str | None = None  # the file it was loaded from (Lua plugins)
    # Checks beyond the schema, on a conf the schema accepted: (conf, on_consumer) -> a list of
    # (path inside the conf, message).
    check: Callable[[dict[str, Any], bool], list[tuple[tuple[Any, ...], str]]] | None = None
    # Other resources a conf names: conf -> a list of (path inside the conf, section, id).
    references: Callable[[dict[str, Any]], list[tuple[tuple[Any, ...], str, Any]]] | None = None


@dataclass(frozen=True, slots=True)
class PluginCatalog:
    specs: Mapping[str, PluginSpec] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, specs: Iterable[PluginSpec]) -> PluginCatalog:
        return cls(MappingProxyType({s.name: s for s in specs}))

    def get(self, name: str) -> PluginSpec | None:
        return self.specs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def only(self, names: Iterable[str]) -> PluginCatalog:
        """The catalog restricted to the plugins a node enables (`ando.plugins`)."""
        wanted = set(names)
        return PluginCatalog(MappingProxyType({n: s for n, s in self.specs.items() if n in wanted}))
