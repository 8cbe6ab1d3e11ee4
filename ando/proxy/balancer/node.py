"""The upstream node a balancer hands out.

A node is created once per config snapshot and then only read on the hot path: its ``addr`` (what
the upstream pool, logs and metrics key on) and its hash (balancers keep per-node state in dicts and
callers pass ``tried`` sets of nodes) are computed here, once, instead of on every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Node"]


@dataclass(frozen=True, slots=True)
class Node:
    """One upstream server: ``host``, ``port``, APISIX ``weight`` and ``priority``.

    ``weight`` 0 keeps a node in the config but out of rotation (APISIX accepts 0 and never sends it
    traffic). ``priority`` groups nodes for failover: a lower group is used only when every node of
    the higher ones is down or already tried (default 0; negative values make backups).

    ``addr`` is ``"host:port"`` with an IPv6 literal bracketed (``"[::1]:80"``), the spelling
    APISIX uses as a node key and the one a URL authority needs.
    """

    host: str
    port: int
    weight: int
    priority: int = 0
    addr: str = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("node host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"node port out of range: {self.port}")
        if self.weight < 0:
            raise ValueError(f"node weight must be >= 0, got {self.weight}")
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        # A frozen dataclass refuses plain assignment; these two are derived, set exactly once.
        object.__setattr__(self, "addr", f"{host}:{self.port}")
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.weight, self.priority)))

    def __hash__(self) -> int:
        # Precomputed: the default dataclass hash builds a tuple on every set/dict lookup.
        return self._hash
