"""Finding consumers by credential, shared by the auth plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ando.plugins.base import BuildContext


def credential_index(build: BuildContext, plugin: str, field: str) -> Mapping[str, Any]:
    """{credential value: consumer} over every consumer carrying `plugin` with `field`, built
    once per config (not per route). The first consumer of a value wins."""

    def make() -> Mapping[str, Any]:
        index: dict[str, Any] = {}
        for consumer in build.snapshot.consumers.values():
            conf = consumer.plugins.get(plugin)
            if conf is not None and conf.get(field) is not None:
                index.setdefault(str(conf[field]), consumer)
        return index

    return build.per_snapshot(("credentials", plugin, field), make)


def consumers_with(build: BuildContext, plugin: str) -> list[tuple[Any, Mapping[str, Any]]]:
    """(consumer, its configuration of `plugin`) for every consumer that has one."""

    def make() -> list[tuple[Any, Mapping[str, Any]]]:
        return [
            (c, c.plugins[plugin]) for c in build.snapshot.consumers.values() if plugin in c.plugins
        ]

    return build.per_snapshot(("consumers_with", plugin), make)
