"""Priority groups (APISIX ``apisix/balancer/priority.lua``): failover between tiers of nodes.

Nodes are grouped by ``priority``, highest first, each group with its own balancer of the
upstream's type. A pick asks each group in turn and takes the first answer, so a lower group serves
only when every node of the groups above is down or already tried for this request (admin API
docs: "A node with low priority will only be used when all the nodes with higher priority have been
tried or are unavailable"). Fail-back is immediate: once a higher node is marked up again, the next
pick returns to it.

The fail-open rule of :mod:`.base` applies to the upstream as a whole: only when every node of every
group is down is health ignored, and then the highest group is used again, as APISIX does by
rebuilding its picker from all nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from .base import NOTHING_TRIED, Group
from .node import Node

__all__ = ["PriorityBalancer"]


class PriorityBalancer:
    """Groups of one balancer type, asked in priority order (highest first)."""

    __slots__ = ("_by_node", "_groups", "_n_down", "nodes", "tracks")

    def __init__(self, groups: Sequence[Group]) -> None:
        self._groups: tuple[Group, ...] = tuple(g for g in groups if g.nodes)
        self.nodes: tuple[Node, ...] = tuple(n for g in self._groups for n in g.nodes)
        self._by_node: dict[Node, Group] = {n: g for g in self._groups for n in g.nodes}
        self._n_down = 0
        self.tracks = any(g.tracks for g in self._groups)

    def pick(self, request: object, tried: AbstractSet[Node] = NOTHING_TRIED) -> Node | None:
        """The first node any group offers, highest priority first; None when all are tried."""
        honour_down = self._n_down != len(self.nodes)
        for group in self._groups:
            node = group._select(request, tried, honour_down)
            if node is not None:
                return node
        return None

    def on_start(self, node: Node) -> None:
        """Forward to the node's group."""
        group = self._by_node.get(node)
        if group is not None:
            group.on_start(node)

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:
        """Forward to the node's group."""
        group = self._by_node.get(node)
        if group is not None:
            group.on_finish(node, seconds, failed)

    def mark_down(self, node: Node) -> None:
        """Exclude ``node``; its group's lower neighbours take over once the whole group is down."""
        group = self._by_node.get(node)
        if group is not None and group._set_down(node, True):
            self._n_down += 1

    def mark_up(self, node: Node) -> None:
        """Return ``node`` to rotation (and its group to serving, if it was failed over)."""
        group = self._by_node.get(node)
        if group is not None and group._set_down(node, False):
            self._n_down -= 1

    def __repr__(self) -> str:
        return f"PriorityBalancer({list(self._groups)!r})"
