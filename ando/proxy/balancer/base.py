"""What every balancer shares: the protocol the proxy calls, and health bookkeeping for one group.

A balancer is built once per upstream per config snapshot and then called on every request, so
everything here that can be decided in the constructor is: the eligible nodes (weight > 0), their
indices, and the flags for health state. ``pick`` only reads lists and compares numbers.

Health follows APISIX ``balancer.lua`` (``fetch_health_nodes``): unhealthy nodes are left out of
the choice, but when *every* node is unhealthy the gateway ignores health and balances over all of
them ("all upstream nodes is unhealthy, use default"), because a health checker that is wrong about
everything is likelier than an upstream that is down everywhere, and a 502 helps no one. Nodes
already ``tried`` for this request are always excluded: a retry must go somewhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Protocol, runtime_checkable

from .node import Node

__all__ = ["NOTHING_TRIED", "Balancer", "Group"]

#: The default ``tried`` set: shared and immutable, so a first attempt allocates nothing.
NOTHING_TRIED: frozenset[Node] = frozenset()


@runtime_checkable
class Balancer(Protocol):
    """What the request lifecycle calls: ``pick`` per attempt, then ``on_start``/``on_finish``."""

    nodes: tuple[Node, ...]
    #: Whether ``on_start``/``on_finish`` do anything: the proxy skips both calls (and the clock
    #: read ``on_finish`` needs) for balancers that keep no per-request state.
    tracks: bool

    def pick(self, request: object, tried: AbstractSet[Node] = NOTHING_TRIED) -> Node | None:
        """Choose a node for ``request``, never one in ``tried``; None when nothing is left."""
        ...

    def on_start(self, node: Node) -> None:
        """A request to ``node`` is now in flight (least_conn counts these)."""
        ...

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:
        """The request to ``node`` ended after ``seconds`` (ewma learns from this)."""
        ...

    def mark_down(self, node: Node) -> None:
        """A health check (active or passive) found ``node`` unhealthy."""
        ...

    def mark_up(self, node: Node) -> None:
        """``node`` is healthy again."""
        ...


class Group(ABC):
    """Nodes of one priority under one algorithm; subclasses implement :meth:`_select`.

    ``_select(request, tried, honour_down)`` is the algorithm proper. ``honour_down`` is False only
    when every node of the whole upstream is down (the fail-open rule above); the priority wrapper
    computes that across groups, and a lone group computes it in :meth:`pick`.
    """

    __slots__ = ("_down", "_index", "_n_down", "_up", "nodes")
    tracks = False  # subclasses that override on_start/on_finish say True

    def __init__(self, nodes: Iterable[Node]) -> None:
        # dict.fromkeys: drop exact duplicates, keep config order (tie-breaks depend on it).
        self.nodes: tuple[Node, ...] = tuple(n for n in dict.fromkeys(nodes) if n.weight > 0)
        self._index: dict[Node, int] = {n: i for i, n in enumerate(self.nodes)}
        self._down: list[bool] = [False] * len(self.nodes)
        self._n_down = 0
        #: Indices of healthy nodes, rebuilt on each health change so picks need not filter.
        self._up: tuple[int, ...] = tuple(range(len(self.nodes)))

    def pick(self, request: object, tried: AbstractSet[Node] = NOTHING_TRIED) -> Node | None:
        """See :class:`Balancer`; health is ignored only when every node is down."""
        return self._select(request, tried, self._n_down != len(self.nodes))

    @abstractmethod
    def _select(self, request: object, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        """The algorithm: a node not in `tried` (and not down when `honour_down`), or None."""

    def on_start(self, node: Node) -> None:  # noqa: B027 - a no-op default, by design
        """No bookkeeping by default."""

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:  # noqa: B027
        """No bookkeeping by default."""

    def mark_down(self, node: Node) -> None:
        """Exclude ``node`` from picks until :meth:`mark_up` (unless all nodes are down)."""
        self._set_down(node, True)

    def mark_up(self, node: Node) -> None:
        """Return ``node`` to rotation."""
        self._set_down(node, False)

    def _set_down(self, node: Node, down: bool) -> bool:
        """Record health; return whether it changed, so the priority wrapper can keep its count."""
        i = self._index.get(node)
        if i is None or self._down[i] is down:
            return False
        self._down[i] = down
        self._n_down += 1 if down else -1
        self._up = tuple(j for j, d in enumerate(self._down) if not d)
        self._health_changed()
        return True

    def _health_changed(self) -> None:  # noqa: B027 - a no-op default, by design
        """Hook for balancers that precompute over the healthy set (called after ``_up``)."""

    def _eligible(self, tried: AbstractSet[Node], honour_down: bool) -> list[int]:
        """Indices a retry may use: not tried, and healthy unless failing open (allocates)."""
        nodes = self.nodes
        down = self._down
        return [
            i for i in range(len(nodes)) if not (honour_down and down[i]) and nodes[i] not in tried
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[n.addr for n in self.nodes]})"
