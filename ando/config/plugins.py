"""The catalog the config layer validates `plugins:` blocks against: each built-in plugin's
name and priority from its class, its schemas from `schemas/plugins/NAME*.json`."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from ando.config.schemas import read_schema_file, schemas_dir
from ando.lua.serverless import serverless_plugins
from ando.plugins.catalog import PluginCatalog, PluginSpec
from ando.plugins.registry import builtin_plugins


@cache
def builtin_catalog() -> PluginCatalog:
    base = schemas_dir() / "plugins"
    specs = []
    # serverless-*-function: built-ins implemented on the Lua runtime (ando/lua/serverless.py)
    for name, cls in {**builtin_plugins(), **serverless_plugins()}.items():
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


# --- Lua plugins (ando/lua) -------------------------------------------------------------------


def lua_catalog(
    lua: Mapping[str, Any], config_file: str
) -> tuple[list[tuple[int, PluginSpec]], list[tuple[int, str]]]:
    """(index in ando.lua.plugins, spec) of the Lua plugins listed there (their schemas from
    the modules' `schema` tables), and load problems as (index in ando.lua.plugins, message
    with the Lua file:line). Lupa is only imported when a config has Lua plugins."""
    if not lua.get("plugins"):
        return [], []
    from ando.lua.plugin import load_lua_plugins

    classes, problems = load_lua_plugins(lua, config_file)
    specs = [
        (
            i,
            PluginSpec(
                name=cls.name,
                priority=cls.priority,
                schema=cls.lua_schema,
                kind="lua",
                source_file=cls.lua_file,
                check=cls.check_conf,
                references=cls.references,
            ),
        )
        for i, cls in classes
    ]
    return specs, problems
