"""Finding consumers by credential, shared by the auth plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ando.plugins.base import BuildContext, Response


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


def secret_index(
    build: BuildContext, plugin: str, field: str, secret: str
) -> Mapping[str, tuple[Any, bytes]]:
    """{credential value: (consumer, its `secret` as UTF-8)}, as `credential_index` (the first
    consumer of a value wins): basic-auth's username -> password, hmac-auth's key_id ->
    secret_key. The bytes are what a constant-time comparison or an HMAC key needs."""

    def make() -> dict[str, tuple[Any, bytes]]:
        return {
            value: (consumer, str(consumer.plugins[plugin][secret]).encode("utf-8"))
            for value, consumer in credential_index(build, plugin, field).items()
        }

    return build.per_snapshot(("secrets", plugin, field, secret), make)


def consumers_with(build: BuildContext, plugin: str) -> list[tuple[Any, Mapping[str, Any]]]:
    """(consumer, its configuration of `plugin`) for every consumer that has one."""

    def make() -> list[tuple[Any, Mapping[str, Any]]]:
        return [
            (c, c.plugins[plugin]) for c in build.snapshot.consumers.values() if plugin in c.plugins
        ]

    return build.per_snapshot(("consumers_with", plugin), make)


class Anonymous:
    """APISIX's `anonymous_consumer` fallback of the auth plugins: when authentication fails, a
    configured anonymous consumer identifies the request instead of a refusal. The name is looked
    up once per config; one that names no consumer refuses with APISIX's 401 "Invalid user
    authorization". `hide`: a request header holding credentials (with `hide_credentials`),
    removed when the anonymous consumer is attached, as it is when a credential is accepted.
    `no_consumer_headers`: response headers of that 401 (key-auth's and jwt-auth's challenge)."""

    __slots__ = ("configured", "consumer", "hide", "no_consumer")

    def __init__(
        self,
        build: BuildContext,
        conf: Mapping[str, Any],
        hide: str | None = None,
        no_consumer_headers: Mapping[str, str] | None = None,
    ) -> None:
        name = conf.get("anonymous_consumer")
        self.configured = name is not None
        self.consumer = build.snapshot.consumers.get(name) if name is not None else None
        self.hide = hide
        self.no_consumer = (
            Response(401, _NO_ANONYMOUS_BODY, no_consumer_headers)
            if no_consumer_headers
            else _NO_ANONYMOUS
        )

    @property
    def usable(self) -> bool:
        """Whether a refused request goes on as the anonymous consumer."""
        return self.consumer is not None

    def refuse(self, ctx: Any, refusal: Response) -> Response | None:
        """`refusal`, or None after attaching the anonymous consumer to `ctx`."""
        if not self.configured:
            return refusal
        if self.consumer is None:
            return self.no_consumer
        if self.hide is not None:
            ctx.remove_header(self.hide)
        ctx.attach_consumer(self.consumer)
        return None


_NO_ANONYMOUS_BODY = {"message": "Invalid user authorization"}
_NO_ANONYMOUS = Response(401, _NO_ANONYMOUS_BODY)
