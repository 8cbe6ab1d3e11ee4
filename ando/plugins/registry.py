"""The built-in plugins, by kind. Each kind's package lists its plugins in `PLUGINS`, so a new
plugin is one module plus one line there (and its schema file)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType

from ando.plugins import auth, observability, security, traffic, transform
from ando.plugins.base import Plugin


@cache
def builtin_plugins() -> Mapping[str, type[Plugin]]:
    found: dict[str, type[Plugin]] = {}
    for kind in (auth, traffic, security, transform, observability):
        for cls in kind.PLUGINS:
            if cls.name in found:
                raise RuntimeError(f"two built-in plugins named {cls.name!r}")
            found[cls.name] = cls
    return MappingProxyType(found)
