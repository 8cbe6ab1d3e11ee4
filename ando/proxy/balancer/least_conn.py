"""Least connections (APISIX's ``least_conn`` type): fewest in-flight requests per unit of weight.

APISIX scores a node ``(active + 1) / weight`` and takes the lowest (admin API docs, and
``apisix/balancer/least_conn.lua``, which starts each score at ``1/weight`` and adds or removes
``1/weight`` per request). The ``+ 1`` means an idle heavy node beats an idle light one, so at low
concurrency traffic goes to the heaviest nodes first; that is APISIX's behaviour and is kept.

Ties are broken round-robin: each pick starts looking one node further along, and the first node
with the lowest score from there wins. A fixed order would send every request to the first node
whenever requests do not overlap (all scores equal), which is the common case at low load.

Hot path: unhealthy nodes score ``inf``, and the scores are kept twice: a list of ``n`` for
``min()`` and a doubled list of ``2 * n`` (second half mirroring the first) so that "first node
with the best score at or after ``start``" is ``index(best, start)`` without wrapping. A pick is
two C-level passes, no Python-level key function, no copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from math import inf

from .base import Group
from .node import Node

__all__ = ["LeastConn"]


class LeastConn(Group):
    """Lowest ``(active + 1) / weight`` in one group; fed by ``on_start``/``on_finish``."""

    __slots__ = ("_active", "_ring", "_rr", "_scores", "_weights")
    tracks = True

    def __init__(self, nodes: Iterable[Node]) -> None:
        super().__init__(nodes)
        self._weights: list[int] = [n.weight for n in self.nodes]
        self._active: list[int] = [0] * len(self.nodes)
        self._scores: list[float] = [1 / w for w in self._weights]
        self._ring: list[float] = self._scores * 2
        self._rr = 0

    def _select(self, request: object, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        n = len(self.nodes)
        if not n:
            return None
        r = self._rr
        self._rr = r + 1 if r + 1 < n else 0
        if not tried and (honour_down or not self._n_down):
            best = min(self._scores)
            if best == inf:
                return None  # every node of this group is down (priority failover)
            i = self._ring.index(best, r)
            return self.nodes[i - n if i >= n else i]
        return self._slow(r, tried, honour_down)

    def _slow(self, r: int, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        """Retries, and the all-down fail-open: score from the counters, excluding as asked."""
        nodes = self.nodes
        n = len(nodes)
        down = self._down
        active = self._active
        weights = self._weights
        best = -1
        best_score = inf
        for k in range(r, r + n):
            i = k - n if k >= n else k
            if (honour_down and down[i]) or nodes[i] in tried:
                continue
            score = (active[i] + 1) / weights[i]
            if score < best_score:
                best = i
                best_score = score
        return None if best < 0 else nodes[best]

    def on_start(self, node: Node) -> None:
        """Count one more in-flight request on ``node``."""
        i = self._index.get(node)
        if i is not None:
            self._active[i] += 1
            self._rescore(i)

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:
        """Count one fewer in-flight request on ``node`` (never below zero)."""
        i = self._index.get(node)
        if i is not None and self._active[i] > 0:
            self._active[i] -= 1
            self._rescore(i)

    def _health_changed(self) -> None:
        for i in range(len(self.nodes)):
            self._rescore(i)

    def _rescore(self, i: int) -> None:
        # Recomputed, not incremented, so the score never drifts from (active + 1) / weight.
        s = inf if self._down[i] else (self._active[i] + 1) / self._weights[i]
        self._scores[i] = s
        self._ring[i] = s
        self._ring[i + len(self.nodes)] = s
