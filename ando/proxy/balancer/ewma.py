"""Latency-aware balancing (APISIX's ``ewma`` type): prefer the node answering fastest.

Follows ``apisix/balancer/ewma.lua`` (whose header credits Finagle's PeakEwma as inspiration):

- Each node keeps ``ewma`` and the time it was last updated. A finished request of ``rtt`` seconds
  updates it with a *time-based* weight: ``w = exp(-elapsed / 10 s)``,
  ``ewma = ewma * w + rtt * (1 - w)``. So the average covers roughly the last 10 seconds however
  many requests arrived in them, and a node first seen takes its first sample as is.
- A node's score is that average decayed to now as if an ``rtt`` of 0 had been observed
  (``ewma * exp(-elapsed / 10 s)``): a node that stopped getting traffic because it was slow is
  slowly forgiven and tried again. A node never measured scores 0, so new nodes get probed.
- A pick draws two different eligible nodes at random and takes the lower score ("power of two
  choices", APISIX's current ``_ewma_find``), which is O(1) and avoids the herd effect of always
  taking the single best node. Weights are not used, as in APISIX (weight 0 still excludes).

Picks never read the clock or call ``exp``: every score decays by the same factor
``exp(-now / 10 s)``, so comparing ``ewma * exp(-(now - last) / 10 s)`` between two nodes is
comparing ``log(ewma) + last / 10 s``, a number that only changes in ``on_finish``. Each node keeps
that ``rank``; a pick is two random draws and one float comparison.

Beyond APISIX, which only sees response times: a *failed* request records a peak, not an average.
Its sample is at least twice the worst score currently held by any node of the group (so the
failed node immediately ranks last), and the average jumps straight to it. It then decays like any
other score, so the node is retried once it has been quiet long enough.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from math import exp, inf, log

from .base import Group
from .node import Node

__all__ = ["DECAY_TIME", "Ewma"]

#: Seconds; APISIX's ``DECAY_TIME``.
DECAY_TIME = 10.0
# Failure penalty bounds: never 0 (or a fast failure would look like a fast success) and never so
# large that a burst of failures takes minutes to forgive.
_MIN_PENALTY = 0.001
_MAX_PENALTY = 60.0


class Ewma(Group):
    """Exponentially weighted moving average of response time, power-of-two-choices pick.

    ``clock`` (default :func:`time.monotonic`) and ``rng`` are injectable so tests are exact.
    """

    __slots__ = ("_all", "_clock", "_ewma", "_last", "_random", "_rank")
    tracks = True

    def __init__(
        self,
        nodes: Iterable[Node],
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(nodes)
        self._clock = clock
        self._all = tuple(range(len(self.nodes)))
        self._random = (rng or random.Random()).random
        self._ewma: list[float] = [0.0] * len(self.nodes)
        # -inf: the first sample gets weight exp(-inf) = 0 on the old (empty) average.
        self._last: list[float] = [-inf] * len(self.nodes)
        # log(ewma) + last / DECAY_TIME orders nodes as their decayed scores do, at any ``now``.
        self._rank: list[float] = [-inf] * len(self.nodes)

    def _select(self, request: object, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        if tried:
            candidates: Sequence[int] = self._eligible(tried, honour_down)
        elif honour_down and self._n_down:
            candidates = self._up
        else:
            candidates = self._all
        n = len(candidates)
        if n < 2:
            return self.nodes[candidates[0]] if n else None
        rnd = self._random
        i = int(rnd() * n)
        j = int(rnd() * (n - 1))
        a = candidates[i]
        b = candidates[j + 1 if j >= i else j]
        rank = self._rank
        # As APISIX: the first draw wins ties (and two unmeasured nodes tie at -inf).
        return self.nodes[b if rank[a] > rank[b] else a]

    def _score(self, i: int, now: float) -> float:
        td = now - self._last[i]
        return self._ewma[i] * exp(-td / DECAY_TIME) if td > 0 else self._ewma[i]

    def on_finish(self, node: Node, seconds: float, failed: bool) -> None:
        """Fold this response time into ``node``'s average; a failure sets a decaying peak."""
        i = self._index.get(node)
        if i is None:
            return
        now = self._clock()
        td = now - self._last[i]
        w = exp(-td / DECAY_TIME) if td > 0 else 1.0
        value = self._ewma[i] * w + seconds * (1.0 - w)
        if failed:
            worst = max(self._score(j, now) for j in range(len(self.nodes)))
            penalty = max(seconds, min(2.0 * worst, _MAX_PENALTY), _MIN_PENALTY)
            value = max(value, penalty)
        self._ewma[i] = value
        self._last[i] = now
        self._rank[i] = log(value) + now / DECAY_TIME if value > 0 else -inf

    def score(self, node: Node) -> float:
        """``node``'s current decayed average in seconds (for status pages and tests)."""
        i = self._index[node]
        return self._score(i, self._clock())
