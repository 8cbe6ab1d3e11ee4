"""Weighted round robin: nginx's smooth algorithm (APISIX's ``roundrobin`` type).

Each pick adds every node's weight to its ``current`` score, takes the highest and subtracts the
total from the winner. Over ``sum(weights)`` picks every node is chosen exactly ``weight`` times,
interleaved rather than in bursts: 5:1:1 gives ``a a b a c a a``, not ``a a a a a b c``.

The sequence is periodic (period ``sum(weights) / gcd``), so for ordinary weights it is computed
once in the constructor (and again on a health change) and a pick is one list index. A retry
(``tried`` not empty), or weights whose period exceeds :data:`MAX_SCHEDULE` or is too costly to
precompute, runs the algorithm itself over the eligible nodes, as nginx does when it skips tried
peers (APISIX's ``swrr.lua`` does the same; its ``roundrobin.lua`` instead re-asks
``resty.roundrobin`` until it gets an untried node).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from functools import reduce
from math import gcd

from .base import Group
from .node import Node

__all__ = ["MAX_SCHEDULE", "RoundRobin", "smooth_schedule"]

#: Longest precomputed cycle; above this a pick runs the O(nodes) loop instead (8 bytes per entry).
MAX_SCHEDULE = 4096
#: Budget for building a cycle (period x nodes steps), so a reload never stalls on a huge upstream.
_MAX_BUILD_STEPS = 1 << 18


def smooth_schedule(weights: Sequence[int]) -> list[int] | None:
    """One full period of smooth weighted round robin as indices into ``weights``.

    Weights are divided by their gcd first: scaling every weight by one factor does not change the
    sequence, only its length. Returns None when the period is longer than :data:`MAX_SCHEDULE`
    or too costly to simulate; equal weights (the service-discovery case) are plain rotation.
    """
    if not weights:
        return []
    g = reduce(gcd, weights)
    w = [x // g for x in weights]
    total = sum(w)
    if total == len(w):
        return list(range(total))
    if total > MAX_SCHEDULE or total * len(w) > _MAX_BUILD_STEPS:
        return None
    current = [0] * len(w)
    out: list[int] = []
    for _ in range(total):
        best = 0
        for i, wi in enumerate(w):
            current[i] += wi
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


class RoundRobin(Group):
    """Smooth weighted round robin over one group of nodes."""

    __slots__ = ("_all", "_current", "_pos", "_schedule", "_weights")

    def __init__(self, nodes: Iterable[Node]) -> None:
        super().__init__(nodes)
        self._weights: list[int] = [n.weight for n in self.nodes]
        self._current: list[int] = [0] * len(self.nodes)
        self._all: tuple[Node, ...] | None = self._build(range(len(self.nodes)))
        self._schedule = self._all
        self._pos = 0

    def _build(self, indices: Iterable[int]) -> tuple[Node, ...] | None:
        idx = list(indices)
        order = smooth_schedule([self._weights[i] for i in idx])
        if order is None:
            return None
        return tuple(self.nodes[idx[k]] for k in order)

    def _health_changed(self) -> None:
        # Health changes are rare: rebuilding here keeps picks O(1) while nodes are down.
        self._schedule = self._build(self._up)
        self._pos = 0

    def _select(self, request: object, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        schedule = self._schedule if honour_down else self._all
        if schedule is not None and not tried:
            n = len(schedule)
            if not n:
                return None
            pos = self._pos
            if pos >= n:
                pos = 0
            self._pos = pos + 1
            return schedule[pos]
        return self._scan(tried, honour_down)

    def _scan(self, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        """The algorithm itself; excluded nodes neither gain weight nor count in the total."""
        nodes = self.nodes
        weights = self._weights
        current = self._current
        down = self._down
        best = -1
        best_cw = 0
        total = 0
        for i in range(len(nodes)):
            if (honour_down and down[i]) or nodes[i] in tried:
                continue
            w = weights[i]
            cw = current[i] + w
            current[i] = cw
            total += w
            if best < 0 or cw > best_cw:
                best = i
                best_cw = cw
        if best < 0:
            return None
        current[best] = best_cw - total
        return nodes[best]
