"""What the runtime needs from a gateway, and where the real one comes from.

The runtime only starts, reloads and drains a gateway; it never looks inside one. Keeping that
surface to five members (plus an optional `ssl_context(listener)` for `tls: true` listeners)
lets the process machinery be tested end to end with a tiny gateway of the test's own, and keeps
`runtime/` from depending on how the proxy is built.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from typing import Protocol

from ando.config.snapshot import Listener, Snapshot


class GatewayLike(Protocol):
    def swap(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` from now on; requests in flight finish on the one they started with."""

    def protocol_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]: ...

    def begin_drain(self) -> None:
        """No new keep-alive requests; close idle connections."""

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight, False if `timeout` passed first."""


GatewayFactory = Callable[[Snapshot], GatewayLike]


def ssl_context_for(gateway: GatewayLike, listener: Listener) -> ssl.SSLContext | None:
    """The TLS context a gateway wants on `listener`'s socket, if it offers one (optional: a
    gateway may as well terminate TLS inside its protocol)."""
    make = getattr(gateway, "ssl_context", None)
    return make(listener) if make is not None else None


class ServingUnavailable(Exception):
    """This build has no gateway to serve with (the proxy package is not part of it)."""


def default_gateway_factory() -> GatewayFactory:
    """The proxy's Gateway, imported only when serving (so `ando validate` stays light). It is
    imported in the master, before forking, so every worker starts with the code already loaded."""
    try:
        from ando.plugins.shared import SharedDict
        from ando.proxy.gateway import Gateway
    except ModuleNotFoundError as e:
        if e.name in ("ando.proxy", "ando.proxy.gateway"):
            raise ServingUnavailable(str(e)) from None
        raise
    # Node-wide plugin state (rate-limit windows, ...): mapped here, in the master, so every
    # worker forked from it, respawned ones included, shares the same memory.
    shared_state = SharedDict()
    return functools.partial(Gateway, shared_state=shared_state)
