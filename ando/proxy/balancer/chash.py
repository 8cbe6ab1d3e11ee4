"""Consistent hashing (APISIX's ``chash`` type): the same key goes to the same node.

A ketama-style ring, as APISIX's ``resty.chash``: every node owns points on a 32-bit circle,
:data:`POINTS_PER_WEIGHT` (160, resty.chash's ``CONSISTENT_POINTS``) per unit of weight, and a key
belongs to the first point at or after its hash. Adding a node therefore moves only the keys that
now land on the new node's points (about ``1/(N+1)`` of them) and removing one moves only its keys.

Hash functions, chosen by measurement: a node's points are consecutive 32-bit words of
SHAKE-256 of its ``addr`` (one call per node, and a node's first ``k`` points do not depend on how
many it gets). CRC-32 of near-identical strings (``"10.0.0.1:80#0"``, ``"#1"``...) clusters on the
circle instead, which skewed load 6:1 and moved 2-3x too many keys. Request keys use ``zlib.crc32``
(as resty.chash does): uniform enough for a lookup and ten times cheaper per request than a
cryptographic hash. Neither is Python's ``hash()``, which is salted per process: every worker, and
every Ando node behind the same load balancer, must send a key to the same upstream node.

Weights are divided by their gcd before points are laid out, so the common "all weights equal"
upstream has exactly 160 points per node whatever the weight, and adding or removing a node of the
same weight leaves every other node's points where they were. Rings are capped at
:data:`MAX_POINTS`; beyond that points are scaled down proportionally.

Retries and unhealthy nodes walk the ring clockwise to the next point of an eligible node, which is
what APISIX does on retry (``picker:next``) and is equivalent to rebuilding the ring without the
unhealthy node (which APISIX does after a health change), without the rebuild.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from functools import reduce
from hashlib import shake_256
from math import gcd
from struct import unpack
from zlib import crc32

from .base import Group
from .node import Node

__all__ = ["MAX_POINTS", "POINTS_PER_WEIGHT", "ConsistentHash", "HashKey"]

#: A function from the opaque request to its hash key; see :class:`ConsistentHash`.
HashKey = Callable[[object], "str | bytes | None"]

POINTS_PER_WEIGHT = 160
MAX_POINTS = 160 * 256


def _node_points(addr: str, count: int) -> tuple[int, ...]:
    """``count`` ring positions for ``addr``: a fixed, well-spread stream of 32-bit words."""
    return unpack(f">{count}I", shake_256(addr.encode()).digest(4 * count))


def _key_hash(key: str | bytes) -> int:
    """The per-request hash: CRC-32 of the UTF-8 key, same value in every process."""
    return crc32(key.encode() if isinstance(key, str) else key)


class ConsistentHash(Group):
    """A hash ring over one group of nodes, keyed by ``hash_key(request)``.

    ``hash_key`` must implement APISIX's ``hash_on``/``key`` lookup *including its fallback*: when
    the configured variable, header, cookie or consumer is missing, APISIX hashes the client's
    ``remote_addr`` instead (``apisix/balancer/chash.lua``, ``fetch_chash_hash_key``; admin API
    docs: "it will default to remote_address"), so the caller's ``hash_key`` returns the remote
    address in that case. If it still returns None or an empty key, the request is not pinned: such
    requests step around the ring so a missing key never turns one node into a hot spot.
    """

    __slots__ = ("_hash_key", "_live", "_owners", "_points", "_spread", "_stride")

    def __init__(self, nodes: Iterable[Node], hash_key: HashKey) -> None:
        super().__init__(nodes)
        self._hash_key = hash_key
        self._spread = 0
        points, owners = self._build_ring()
        self._points: list[int] = points
        self._owners: list[int] = owners
        # Owner of each point once unhealthy nodes are skipped; None while the group is all down.
        self._live: list[int] | None = owners
        # Key-less requests advance by a stride coprime with the ring size (~0.618 of a turn), so
        # they visit every point once per turn: a weighted spread with no per-request hashing.
        size = len(points)
        stride = max(1, int(size * 0.6180339887))
        while size and gcd(stride, size) != 1:
            stride += 1
        self._stride = stride

    def _build_ring(self) -> tuple[list[int], list[int]]:
        nodes = self.nodes
        if not nodes:
            return [], []
        g = reduce(gcd, (n.weight for n in nodes))
        units = [n.weight // g for n in nodes]
        per_unit = min(POINTS_PER_WEIGHT, MAX_POINTS / sum(units))
        ring: list[tuple[int, str, int]] = []
        for i, node in enumerate(nodes):
            count = max(1, round(units[i] * per_unit))
            ring.extend((p, node.addr, i) for p in _node_points(node.addr, count))
        # Sorting by (hash, addr) makes the owner of a colliding point independent of node order.
        ring.sort()
        return [p for p, _, _ in ring], [i for _, _, i in ring]

    def _select(self, request: object, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        points = self._points
        size = len(points)
        if not size:
            return None
        key = self._hash_key(request)
        if key:
            pos = bisect(points, _key_hash(key))
            if pos == size:
                pos = 0
        else:
            pos = self._spread = (self._spread + self._stride) % size
        if not tried:
            if not (honour_down and self._n_down):
                return self.nodes[self._owners[pos]]
            live = self._live
            return None if live is None else self.nodes[live[pos]]
        return self._walk(pos, tried, honour_down)

    def _health_changed(self) -> None:
        # One backwards pass over two turns of the ring: each point learns the first healthy
        # owner at or after it. O(ring) per health change instead of a walk per request.
        owners = self._owners
        size = len(owners)
        if not self._n_down:
            self._live = owners
            return
        if not self._up:
            self._live = None
            return
        down = self._down
        live = [0] * size
        nxt = -1
        for p in range(2 * size - 1, -1, -1):
            i = owners[p % size]
            if not down[i]:
                nxt = i
            live[p % size] = nxt
        self._live = live

    def _walk(self, pos: int, tried: AbstractSet[Node], honour_down: bool) -> Node | None:
        """From ring position ``pos``, the first point clockwise whose node may be chosen."""
        nodes = self.nodes
        down = self._down
        if not any(
            not (honour_down and down[i]) and nodes[i] not in tried for i in range(len(nodes))
        ):
            return None  # checked first, so the walk below always ends within one turn
        owners = self._owners
        size = len(owners)
        while True:
            i = owners[pos]
            if not (honour_down and down[i]) and nodes[i] not in tried:
                return nodes[i]
            pos += 1
            if pos == size:
                pos = 0
