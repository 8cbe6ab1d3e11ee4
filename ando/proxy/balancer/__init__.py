"""Load balancers for upstream nodes, with APISIX's four ``type`` values and node priorities.

:func:`make_balancer` is what the config compiler calls, once per upstream per snapshot; the proxy
then calls ``pick`` per attempt and reports back with ``on_start``/``on_finish``, while health
checks call ``mark_down``/``mark_up``. See :class:`Balancer` for the protocol and each module for
the algorithm and the APISIX source it follows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from itertools import groupby

from .base import NOTHING_TRIED, Balancer, Group
from .chash import ConsistentHash, HashKey
from .ewma import Ewma
from .least_conn import LeastConn
from .node import Node
from .priority import PriorityBalancer
from .roundrobin import RoundRobin

__all__ = [
    "KINDS",
    "NOTHING_TRIED",
    "Balancer",
    "ConsistentHash",
    "Ewma",
    "LeastConn",
    "Node",
    "PriorityBalancer",
    "RoundRobin",
    "make_balancer",
]

#: APISIX's upstream ``type`` values.
KINDS = frozenset({"roundrobin", "chash", "least_conn", "ewma"})


def make_balancer(
    kind: str,
    nodes: Sequence[Node],
    *,
    hash_key: HashKey | None = None,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer for one upstream.

    ``kind`` is the upstream ``type``. ``hash_key`` is required for ``chash`` (APISIX requires a
    ``key`` there too) and must already apply APISIX's ``remote_addr`` fallback; see
    :class:`ConsistentHash`. ``clock`` and ``rng`` only matter to ``ewma`` and exist for tests.

    Nodes with weight 0 are dropped. With one priority level the group's balancer is returned
    as is, saving the priority loop on every pick; with several, a :class:`PriorityBalancer`.
    An upstream with no usable node gets a balancer whose ``pick`` always returns None (502).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown balancer type {kind!r}; expected one of {sorted(KINDS)}")
    if kind == "chash" and hash_key is None:
        raise ValueError("balancer type 'chash' needs a hash_key")
    shared_rng = rng or random.Random()

    def group(members: Sequence[Node]) -> Group:
        if kind == "roundrobin":
            return RoundRobin(members)
        if kind == "chash":
            assert hash_key is not None
            return ConsistentHash(members, hash_key)
        if kind == "least_conn":
            return LeastConn(members)
        return Ewma(members, clock=clock, rng=shared_rng)

    usable = [n for n in nodes if n.weight > 0]
    # sorted() is stable: config order survives within a priority, which tie-breaks rely on.
    ordered = sorted(usable, key=lambda n: -n.priority)
    groups = [group(list(members)) for _, members in groupby(ordered, key=lambda n: n.priority)]
    if len(groups) == 1:
        return groups[0]
    return PriorityBalancer(groups)
