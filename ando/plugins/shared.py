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
state for limiting, not storage). An entry holds two floats, `a` and `b`, and an expiry time
(wall-clock seconds, so every process reads the same clock).

The memory is a shared anonymous mapping; the locks are process-shared semaphores (futexes:
taking a free one costs no system call, a tenth of an fcntl lock's cost, which was 15% of a
loaded worker's time). A worker killed inside an operation (OOM killer, SIGKILL) would leave its
stripe locked for good, so a lock not obtained within STALE_LOCK seconds (critical sections last
microseconds) is taken over: its holder is presumed dead, and the release that follows restores
the lock. A holder that was only frozen that long (SIGSTOP, a debugger) fails its own release,
which fails that one request.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

SLOTS_PER_BUCKET = 8
_SLOT = struct.Struct("<Qddd")  # key hash (0: empty), expires (0: never), a, b
_LOCK_STRIPES = 64
_BUCKET = struct.Struct("<" + "Qddd" * SLOTS_PER_BUCKET)
_EXPIRES = struct.Struct("<d")
_FIELDS = 4 * SLOTS_PER_BUCKET
_INF = float("inf")


_HASH_CACHE_MAX = 4096
_T = TypeVar("_T")
STALE_LOCK = 1.0


class SharedDict:
    __slots__ = ("_buckets", "_hashes", "_locks", "_mem", "capacity", "takeovers")

    def __init__(self, capacity: int = 65536) -> None:
        """Made in the master before fork (or in-process, for one worker)."""
        self._buckets = max(capacity // SLOTS_PER_BUCKET, 1)
        self.capacity = self._buckets * SLOTS_PER_BUCKET
        self._mem = mmap.mmap(-1, self.capacity * _SLOT.size)  # MAP_SHARED | MAP_ANONYMOUS
        fork = multiprocessing.get_context("fork")
        self._locks = tuple(fork.Lock() for _ in range(_LOCK_STRIPES))
        self.takeovers = 0  # locks this process took over from a presumed-dead holder
        # Keys repeat (one per client, route, consumer): their hashes are kept per process.
        self._hashes: dict[str, int] = {}

    def _key_hash(self, key: str) -> int:
        h = self._hashes.get(key)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
            h = h or 1
            if len(self._hashes) >= _HASH_CACHE_MAX:
                self._hashes.clear()
            self._hashes[key] = h
        return h

    def _find(self, h: int, now: float) -> tuple[int, bool]:
        """The slot offset for key hash `h` in its bucket and whether it holds a live entry:
        its own slot, else a free or expired one, else the one expiring soonest."""
        base = (h % self._buckets) * _BUCKET.size
        mem = self._mem
        # The usual case, a key already there: its hash's bytes found by a C search of the
        # bucket (only at a slot's start: the same bytes inside a float do not count).
        end = base + _BUCKET.size
        wanted = h.to_bytes(8, "little")
        at = mem.find(wanted, base, end)
        while at >= 0:
            if (at - base) % _SLOT.size == 0:
                exp = _EXPIRES.unpack_from(mem, at + 8)[0]
                return at, exp == 0.0 or exp > now
            at = mem.find(wanted, at + 1, end)
        fields = _BUCKET.unpack_from(mem, base)  # the whole bucket in one call
        victim = -1
        victim_exp = _INF
        for i in range(0, _FIELDS, 4):
            kh = fields[i]
            exp = fields[i + 1]
            live = kh != 0 and (exp == 0.0 or exp > now)
            if kh == h:
                return base + (i >> 2) * _SLOT.size, live
            if not live:
                if victim_exp > -1.0:
                    victim, victim_exp = i >> 2, -1.0
            elif exp != 0.0 and exp < victim_exp:
                victim, victim_exp = i >> 2, exp
        if victim < 0:
            victim = 0  # every entry lives forever: take the first
        return base + victim * _SLOT.size, False

    def _locked(self, key: str, body: Callable[..., _T], x: Any = None, y: Any = None) -> _T:
        """`body(mem, offset, live, key hash, now, x, y)` under the lock of `key`'s bucket (a
        module function and two arguments: no closure made per call)."""
        h = self._key_hash(key)
        lock = self._locks[(h % self._buckets) % _LOCK_STRIPES]
        if not lock.acquire(True, STALE_LOCK):
            self.takeovers += 1
        try:
            now = time.time()
            off, live = self._find(h, now)
            return body(self._mem, off, live, h, now, x, y)
        finally:
            lock.release()

    def get(self, key: str) -> tuple[float, float] | None:
        """(a, b) of a live entry, or None."""
        return self._locked(key, _read)

    def set(self, key: str, a: float, b: float = 0.0, ttl: float = 0.0) -> None:
        self._locked(key, _write, (a, b), ttl)

    def delete(self, key: str) -> None:
        self._locked(key, _clear)

    def incr(self, key: str, delta: float, ttl: float = 0.0) -> tuple[float, float]:
        """Add `delta` to `a` and return (a, expires). A missing or expired entry starts at
        `delta` and expires `ttl` seconds from now (never when ttl is 0): a fixed window."""
        return self._locked(key, _add, delta, ttl)

    def update(
        self,
        key: str,
        change: Callable[[float, float, bool], tuple[float, float, float]],
        ttl: float = 0.0,
    ) -> float:
        """Read-modify-write under the entry's lock: `change(a, b, existed)` returns the new
        (a, b) and a result handed back to the caller. The entry's expiry restarts at `ttl`.
        `change` must be quick and must not touch this dict; if it raises, nothing changes."""
        return self._locked(key, _apply, change, ttl)


# What SharedDict's operations do to a slot, under its lock: (mem, offset, live, key hash, now,
# and the operation's two arguments).


def _read(mem: mmap.mmap, off: int, live: bool, h: int, now: float, x: Any, y: Any) -> Any:
    if not live:
        return None
    _kh, _exp, a, b = _SLOT.unpack_from(mem, off)
    return a, b


def _write(mem: mmap.mmap, off: int, live: bool, h: int, now: float, ab: Any, ttl: float) -> None:
    _SLOT.pack_into(mem, off, h, now + ttl if ttl > 0 else 0.0, ab[0], ab[1])


def _clear(mem: mmap.mmap, off: int, live: bool, h: int, now: float, x: Any, y: Any) -> None:
    if live:
        _SLOT.pack_into(mem, off, 0, 0.0, 0.0, 0.0)


def _add(
    mem: mmap.mmap, off: int, live: bool, h: int, now: float, delta: float, ttl: float
) -> tuple[float, float]:
    if live:
        _kh, exp, a, _b = _SLOT.unpack_from(mem, off)
        a += delta
        _SLOT.pack_into(mem, off, h, exp, a, _b)
        return a, exp
    exp = now + ttl if ttl > 0 else 0.0
    _SLOT.pack_into(mem, off, h, exp, delta, 0.0)
    return delta, exp


def _apply(
    mem: mmap.mmap, off: int, live: bool, h: int, now: float, change: Any, ttl: float
) -> float:
    if live:
        _kh, _exp, a, b = _SLOT.unpack_from(mem, off)
    else:
        a = b = 0.0
    a, b, result = change(a, b, live)
    _SLOT.pack_into(mem, off, h, now + ttl if ttl > 0 else 0.0, a, b)
    return result
