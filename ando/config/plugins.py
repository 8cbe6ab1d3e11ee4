"""The catalog the config layer validates `plugins:` blocks against: each built-in plugin's
name and priority from its class, its schemas from `schemas/plugins/NAME*.json`."""

from __future__ import annotations

from functools import cache

from ando.config.schemas import read_schema_file, schemas_dir
from ando.plugins.catalog import PluginCatalog, PluginSpec
from ando.plugins.registry import builtin_plugins


@cache
def builtin_catalog() -> PluginCatalog:
    base = schemas_dir() / "plugins"
    specs = []
    for name, cls in builtin_plugins().items():
        consumer = (
            read_schema_file(base / f"{name}.consumer.json") if cls.has_consumer_schema else None
        )
        metadata = (
            read_schema_file(base / f"{name}.metadata.json") if cls.has_metadata_schema else None
        )
        specs.append(
            PluginSpec(
                name=name,
                priority=cls.priority,
                schema=read_schema_file(base / f"{name}.json"),
                consumer_schema=consumer,
                metadata_schema=metadata,
                check=cls.check_conf,
                references=cls.references,
            )
        )
    return PluginCatalog.of(specs)
