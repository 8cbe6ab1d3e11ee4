"""The Plugin protocol: what a plugin is, the six phases it may implement, and how it answers.

One plugin is one module holding one `Plugin` subclass: its `name`, its `priority` (APISIX's
numbers, so mixed chains order the same) and the phase methods it needs. Its configuration schema
is `schemas/plugins/NAME.json` (plus `NAME.consumer.json` for what a consumer carries, e.g.
key-auth's `key`, and `NAME.metadata.json` for `plugin_metadata`). The lifecycle follows Caddy's
modules: `check_conf` validates beyond the schema at `ando validate` time (regexes, keys);
`__init__` provisions a plugin instance once per config snapshot (compiling everything per-request
work needs); the phase methods do only per-request work.

Phases, in request order (Pingora's ProxyHttp: each one optional, a no-op unless implemented):

- `rewrite(ctx)`: before anything is decided about the request. Authentication runs here and
  identifies the consumer (`ctx.attach_consumer`); request rewriting too.
- `access(ctx)`: the consumer's own plugins have been merged in; allow or refuse.
- `before_proxy(ctx)`: the upstream request is final, just before it goes out.
- `header_filter(ctx, head)`: the response head (the upstream's, or a gateway-made one) before
  it is sent: change `head.status` and its headers.
- `body_filter(ctx, chunk, eof)`: each response body chunk; returns what to send instead.
- `log(ctx)`: after the response went out (or the client left); cannot change anything.

`rewrite`, `access` and `before_proxy` end the request by returning a `Response` (never by
raising); returning None goes on. They may be `async def` when they must wait (a delay, Redis):
the pipeline only leaves its synchronous fast path for the plugins that are. An exception in any
phase fails that one request with a 500 and a log line naming the plugin, never the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

if TYPE_CHECKING:
    from ando.plugins.context import RequestContext, ResponseHead
    from ando.plugins.shared import SharedDict

Body = bytes | str | Mapping[str, Any] | list[Any] | None


class Response:
    """A response a plugin answers with. A mapping or list body is sent as JSON (APISIX's
    `core.response.exit(401, {message = ...})`), a str as UTF-8 text."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: Body = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.headers: list[tuple[str, str]] = list(
            headers.items() if isinstance(headers, Mapping) else headers or ()
        )
        if body is None:
            self.body, self.content_type = b"", "text/plain; charset=utf-8"
        elif isinstance(body, bytes):
            self.body, self.content_type = body, "text/plain; charset=utf-8"
        elif isinstance(body, str):
            self.body, self.content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            # a newline after the JSON, as APISIX's core.response.exit writes a table body
            body = orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)
            self.body, self.content_type = body, "application/json"
        for k, v in self.headers:
            if k.lower() == "content-type":
                self.content_type = v

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:60]!r})"


class BuildContext:
    """What a plugin instance is provisioned with, besides its configuration.

    `owner` names where the configuration was written ("route:1", "service:s", "consumer:jack",
    "consumer_group:g", "global_rule:1", "plugin_config:p"): node-wide state such as a rate-limit
    window is keyed by it, so the same limit shared by a service's routes counts once."""

    __slots__ = (
        "cache",
        "log",
        "make_upstream",
        "metadata",
        "owner",
        "shared",
        "snapshot",
        "worker_cache",
    )

    def __init__(
        self,
        *,
        owner: str,
        snapshot: Any,
        shared: SharedDict,
        cache: dict[Any, Any],
        metadata: Mapping[str, Any] | None = None,
        make_upstream: Callable[[Any], Any] | None = None,
        log: Callable[..., None] | None = None,
        worker_cache: dict[Any, Any] | None = None,
    ) -> None:
        self.owner = owner
        self.snapshot = snapshot  # ando.config.snapshot.Snapshot
        self.shared = shared
        # Lives as long as the snapshot: work shared by many instances (a consumer index).
        self.cache = cache
        self.metadata = metadata
        # Upstream resolution, for plugins that route (traffic-split): an upstream id (str) or
        # an inline upstream object -> the proxy's runtime upstream.
        self.make_upstream = make_upstream
        self.log = log or (lambda event, **fields: None)
        # Lives as long as the worker, across reloads: clients and connection pools (Redis) a
        # reload should not reopen. Key by everything that makes one differ.
        self.worker_cache = worker_cache if worker_cache is not None else {}

    def per_snapshot(self, key: Any, build: Callable[[], Any]) -> Any:
        """`build()` once per snapshot for `key`, shared by every instance that asks."""
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = build()
        return found

    def per_worker(self, key: Any, build: Callable[[], Any]) -> Any:
        """`build()` once per worker process for `key`, kept across reloads."""
        found = self.worker_cache.get(key)
        if found is None:
            found = self.worker_cache[key] = build()
        return found


class Plugin:
    """Base class of the built-in plugins. Subclasses set `name` and `priority` and override the
    phases they need; the chain binds only overridden ones, so an unused phase costs nothing."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    version: ClassVar[str] = "0.1"
    # "auth" plugins identify consumers; on a consumer their configuration is a credential, not
    # a plugin to run (APISIX's `type = 'auth'`).
    type: ClassVar[str] = "other"
    # When true, the schema file NAME.consumer.json validates a consumer's configuration.
    has_consumer_schema: ClassVar[bool] = False
    has_metadata_schema: ClassVar[bool] = False

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        self.conf = conf

    @classmethod
    def check_conf(
        cls, conf: dict[str, Any], on_consumer: bool
    ) -> list[tuple[tuple[Any, ...], str]]:
        """Problems the schema cannot express, as (path inside the conf, message). Runs at
        `ando validate` time on a conf the schema accepted (defaults applied)."""
        return []

    @classmethod
    def references(cls, conf: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, Any]]:
        """Other resources this configuration names, as (path inside the conf, section, id):
        `ando validate` reports any that does not exist (e.g. traffic-split's upstream_id)."""
        return []

    def rewrite(self, ctx: RequestContext) -> Response | None:
        return None

    def access(self, ctx: RequestContext) -> Response | None:
        return None

    def before_proxy(self, ctx: RequestContext) -> Response | None:
        return None

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        return None

    def body_filter(self, ctx: RequestContext, chunk: bytes, eof: bool) -> bytes:
        return chunk

    def log(self, ctx: RequestContext) -> None:
        return None


PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")


def implements(cls: type[Plugin], phase: str) -> bool:
    return getattr(cls, phase) is not getattr(Plugin, phase)
