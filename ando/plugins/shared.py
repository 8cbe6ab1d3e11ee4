"""Node-wide numeric state that every worker of a node sees: rate-limit windows, leaky buckets,
concurrent-request counts, circuit-breaker state.

A plugin's counters must count for the node, not per worker (`limit-count: {count: 10}` with 4
workers admits 10 requests, not 40). The master creates one SharedDict before forking, so every
worker (and a respawned one) maps the same anonymous shared memory; an entry survives reloads,
which keeps a window's count when the config changes.

The table is a fixed array of buckets of SLOTS_PER_BUCKET slots. A key hashes (blake2b, stable
across processes, unlike `hash()`) to one bucket and lives only there, so one lock per bucket
group makes every operation atomic across processes without a global lock. A full bucket evicts
an expired entry, or else the one that expires soonest (nginx's shared dicts evict too: this is
state for limiting, not storage). An entry holds two floats, `a` and `b`, and an expiry time.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
import time
from collections.abc import Callable

SLOTS_PER_BUCKET = 8
_SLOT = struct.Struct("<Qddd")  # key hash (0: empty), expires (0: never), a, b
_LOCK_STRIPES = 64


def _key_hash(key: str) -> int:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return h or 1


class SharedDict:
    __slots__ = ("_buckets", "_locks", "_mem", "capacity")

    def __init__(self, capacity: int = 65536) -> None:
        """Made in the master before fork (or in-process, for one worker)."""
        self._buckets = max(capacity // SLOTS_PER_BUCKET, 1)
        self.capacity = self._buckets * SLOTS_PER_BUCKET
        self._mem = mmap.mmap(-1, self.capacity * _SLOT.size)  # MAP_SHARED | MAP_ANONYMOUS
        ctx = multiprocessing.get_context("fork")
        self._locks = tuple(ctx.Lock() for _ in range(_LOCK_STRIPES))

    def _find(self, h: int, now: float) -> tuple[int, bool]:
        """The slot offset for key hash `h` in its bucket and whether it holds a live entry:
        its own slot, else a free or expired one, else the one expiring soonest."""
        base = (h % self._buckets) * SLOTS_PER_BUCKET * _SLOT.size
        mem = self._mem
        victim = -1
        victim_exp = float("inf")
        for i in range(SLOTS_PER_BUCKET):
            off = base + i * _SLOT.size
            kh, exp, _a, _b = _SLOT.unpack_from(mem, off)
            live = kh != 0 and (exp == 0.0 or exp > now)
            if kh == h:
                return off, live
            if not live:
                if victim_exp > -1.0:
                    victim, victim_exp = off, -1.0
            elif exp != 0.0 and exp < victim_exp:
                victim, victim_exp = off, exp
        if victim < 0:
            victim = base  # every entry lives forever: take the first
        return victim, False

    def _lock(self, h: int) -> multiprocessing.synchronize.Lock:  # type: ignore[name-defined]
        return self._locks[(h % self._buckets) % _LOCK_STRIPES]

    def get(self, key: str) -> tuple[float, float] | None:
        """(a, b) of a live entry, or None."""
        h = _key_hash(key)
        with self._lock(h):
            off, live = self._find(h, time.time())
            if not live:
                return None
            _kh, _exp, a, b = _SLOT.unpack_from(self._mem, off)
            return a, b

    def set(self, key: str, a: float, b: float = 0.0, ttl: float = 0.0) -> None:
        h = _key_hash(key)
        now = time.time()
        with self._lock(h):
            off, _live = self._find(h, now)
            _SLOT.pack_into(self._mem, off, h, now + ttl if ttl > 0 else 0.0, a, b)

    def delete(self, key: str) -> None:
        h = _key_hash(key)
        with self._lock(h):
            off, live = self._find(h, time.time())
            if live:
                _SLOT.pack_into(self._mem, off, 0, 0.0, 0.0, 0.0)

    def incr(self, key: str, delta: float, ttl: float = 0.0) -> tuple[float, float]:
        """Add `delta` to `a` and return (a, expires). A missing or expired entry starts at
        `delta` and expires `ttl` seconds from now (never when ttl is 0): a fixed window."""
        h = _key_hash(key)
        now = time.time()
        with self._lock(h):
            off, live = self._find(h, now)
            if live:
                _kh, exp, a, b = _SLOT.unpack_from(self._mem, off)
                a += delta
            else:
                exp, a, b = (now + ttl if ttl > 0 else 0.0), delta, 0.0
            _SLOT.pack_into(self._mem, off, h, exp, a, b)
            return a, exp

    def update(
        self,
        key: str,
        change: Callable[[float, float, bool], tuple[float, float, float]],
        ttl: float = 0.0,
    ) -> float:
        """Read-modify-write under the entry's lock: `change(a, b, existed)` returns the new
        (a, b) and a result handed back to the caller. The entry's expiry restarts at `ttl`.
        `change` must be quick and must not touch this dict."""
        h = _key_hash(key)
        now = time.time()
        with self._lock(h):
            off, live = self._find(h, now)
            if live:
                _kh, _exp, a, b = _SLOT.unpack_from(self._mem, off)
            else:
                a = b = 0.0
            a, b, result = change(a, b, live)
            _SLOT.pack_into(self._mem, off, h, now + ttl if ttl > 0 else 0.0, a, b)
            return result
