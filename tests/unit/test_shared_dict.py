"""SharedDict (ando/plugins/shared.py): node-wide numeric state shared by forked workers.

Single-process semantics (get/set/delete, incr's fixed window, update's read-modify-write,
expiry, eviction in a full bucket), then several forked processes on one dict: every increment
counted exactly once, and writes seen across processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import time

import pytest

from ando.plugins.shared import SLOTS_PER_BUCKET, SharedDict

fork = multiprocessing.get_context("fork")


def test_set_get_delete():
    d = SharedDict(64)
    assert d.get("a") is None
    d.set("a", 1.5, 2.5)
    assert d.get("a") == (1.5, 2.5)
    d.set("a", 3.0)
    assert d.get("a") == (3.0, 0.0)
    d.delete("a")
    assert d.get("a") is None
    d.delete("never-there")  # no error


def test_incr_is_a_fixed_window():
    d = SharedDict(64)
    before = time.time()
    n, expires = d.incr("w", 1, ttl=0.3)
    assert n == 1 and before + 0.3 <= expires <= time.time() + 0.3
    n2, expires2 = d.incr("w", 2, ttl=5)  # a live entry keeps its expiry
    assert (n2, expires2) == (3, expires)
    assert d.get("w") == (3.0, 0.0)
    time.sleep(0.35)
    assert d.get("w") is None
    n3, expires3 = d.incr("w", 1, ttl=0.3)  # a new window
    assert n3 == 1 and expires3 > expires


def test_incr_without_ttl_never_expires_and_takes_negative_deltas():
    d = SharedDict(64)
    assert d.incr("c", 1) == (1.0, 0.0)
    assert d.incr("c", -1) == (0.0, 0.0)
    assert d.incr("c", -1) == (-1.0, 0.0)


def test_update_reads_modifies_and_writes_under_one_lock():
    d = SharedDict(64)
    calls = []

    def change(a: float, b: float, existed: bool) -> tuple[float, float, float]:
        calls.append((a, b, existed))
        return a + 1, b + 10, a * 100

    assert d.update("u", change, ttl=0.5) == 0.0
    assert d.update("u", change, ttl=0.5) == 100.0
    assert calls == [(0.0, 0.0, False), (1.0, 10.0, True)]
    assert d.get("u") == (2.0, 20.0)
    time.sleep(0.3)
    d.update("u", change, ttl=0.5)  # the expiry restarts at every update
    time.sleep(0.3)
    assert d.get("u") == (3.0, 30.0)  # 0.6 s after the first update, 0.3 s after the last
    time.sleep(0.25)
    assert d.get("u") is None


def test_update_that_raises_changes_nothing_and_releases_the_lock():
    d = SharedDict(64)
    d.set("e", 7.0)

    def boom(a: float, b: float, existed: bool) -> tuple[float, float, float]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        d.update("e", boom)
    assert d.get("e") == (7.0, 0.0)
    assert d.incr("e", 1) == (8.0, 0.0)  # not deadlocked


def test_a_full_bucket_evicts_an_expired_entry_first_then_the_soonest_to_expire():
    d = SharedDict(SLOTS_PER_BUCKET)  # one bucket: every key competes for its slots
    assert d.capacity == SLOTS_PER_BUCKET
    for i in range(SLOTS_PER_BUCKET):
        d.set(f"k{i}", float(i), ttl=100 + i)
    d.set("short", 99.0, ttl=0.1)  # evicts k0, the soonest to expire
    assert d.get("k0") is None and d.get("short") == (99.0, 0.0)
    time.sleep(0.15)
    d.set("new", 1.0, ttl=100)  # takes the expired slot, not a live one
    assert [d.get(f"k{i}") for i in range(1, SLOTS_PER_BUCKET)] == [
        (float(i), 0.0) for i in range(1, SLOTS_PER_BUCKET)
    ]
    assert d.get("new") == (1.0, 0.0)


def test_many_keys_stay_apart():
    d = SharedDict(4096)
    for i in range(500):
        d.incr(f"key-{i}", i)
    assert all(d.get(f"key-{i}") == (float(i), 0.0) for i in range(500))


def _hammer(d: SharedDict, keys: list[str], rounds: int, go: multiprocessing.Event) -> None:
    go.wait(10)  # all start together, so they contend
    for _ in range(rounds):
        for k in keys:
            d.incr(k, 1, ttl=60)
            d.update(k + ":rmw", lambda a, b, existed: (a + 1, b, a), ttl=60)
    os._exit(0)


def test_forked_processes_count_every_increment_exactly_once():
    d = SharedDict(1024)  # made before fork, as the master does
    keys = ["one", "two", "three"]
    go = fork.Event()
    procs = [fork.Process(target=_hammer, args=(d, keys, 2500, go)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for k in keys:
        assert d.get(k) == (10000.0, 0.0)
        assert d.get(k + ":rmw") == (10000.0, 0.0)  # read-modify-write: no lost update


def _write_then_read(d: SharedDict) -> None:
    a, b = d.get("from-parent") or (-1.0, -1.0)
    d.set("child-saw", a, b)
    d.set("from-child", 42.0)
    os._exit(0)


def test_writes_are_seen_across_processes():
    d = SharedDict(64)
    d.set("from-parent", 1.0, 2.0)
    p = fork.Process(target=_write_then_read, args=(d,))
    p.start()
    p.join(10)
    assert p.exitcode == 0
    assert d.get("child-saw") == (1.0, 2.0)
    assert d.get("from-child") == (42.0, 0.0)


def _hold_forever(d: SharedDict, ready: multiprocessing.Event) -> None:
    def stuck(a: float, b: float, existed: bool) -> tuple[float, float, float]:
        ready.set()
        time.sleep(60)  # killed here, inside the critical section
        return a, b, 0.0

    d.update("held", stuck)


def _incr_once(d: SharedDict) -> None:
    d.incr("held", 1)
    os._exit(0)


def test_a_worker_killed_inside_an_operation_does_not_block_the_others():
    d = SharedDict(64)
    ready = fork.Event()
    holder = fork.Process(target=_hold_forever, args=(d, ready))
    holder.start()
    assert ready.wait(10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    other = fork.Process(target=_incr_once, args=(d,))
    other.start()
    other.join(2)
    stuck = other.exitcode is None
    if stuck:
        other.kill()
        other.join(5)
    assert not stuck, "an operation on the key blocked after its lock's holder was killed"


def test_a_keys_hash_bytes_inside_another_entrys_value_are_not_taken_for_the_key():
    """Keys are found by searching the bucket's bytes for the key's hash: the same eight bytes
    inside another entry's value (not at a slot's start) must not count."""
    d = SharedDict(capacity=8)  # one bucket: every key shares it
    wanted = d._key_hash("wanted")
    lookalike = struct.unpack("<d", wanted.to_bytes(8, "little"))[0]
    d.set("other", lookalike, lookalike)  # the hash's bytes, twice, off the slot boundaries
    assert d.get("wanted") is None
    assert d.incr("wanted", 5) == (5.0, 0.0)  # a new entry, not the other one's value
    assert d.incr("wanted", 1) == (6.0, 0.0)
    other = d.get("other")
    assert other is not None and struct.pack("<dd", *other) == struct.pack(
        "<dd", lookalike, lookalike
    )
