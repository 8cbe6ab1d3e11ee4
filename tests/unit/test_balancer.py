"""ando.proxy.balancer: APISIX's four balancer types, priority failover, health and retries."""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import pytest

from ando.proxy.balancer import (
    KINDS,
    NOTHING_TRIED,
    Balancer,
    ConsistentHash,
    Ewma,
    LeastConn,
    Node,
    PriorityBalancer,
    RoundRobin,
    make_balancer,
)
from ando.proxy.balancer.roundrobin import MAX_SCHEDULE, smooth_schedule


class FakeClock:
    """A clock the test moves by hand, so decay is exact."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def nodes_of(*weights: int, priority: int = 0, prefix: str = "10.0.0.") -> list[Node]:
    return [Node(f"{prefix}{i + 1}", 80, w, priority) for i, w in enumerate(weights)]


def key_of(request: object) -> str | None:
    """Requests in these tests are their own hash key."""
    return request  # type: ignore[return-value]


def build(kind: str, nodes: Sequence[Node], **kw: object) -> Balancer:
    if kind == "chash":
        kw.setdefault("hash_key", key_of)
    if kind == "ewma":
        kw.setdefault("rng", random.Random(7))
        kw.setdefault("clock", FakeClock())
    return make_balancer(kind, nodes, **kw)  # type: ignore[arg-type]


def picks(b: Balancer, count: int, keys: Sequence[object] | None = None) -> Counter[Node]:
    out: Counter[Node] = Counter()
    for i in range(count):
        node = b.pick(keys[i % len(keys)] if keys else f"k{i}")
        assert node is not None
        out[node] += 1
    return out


ALL_KINDS = sorted(KINDS)


# --- Node -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "addr"),
    [
        ("10.0.0.1", "10.0.0.1:8080"),
        ("example.com", "example.com:8080"),
        ("::1", "[::1]:8080"),
        ("2001:db8::17", "[2001:db8::17]:8080"),
        ("[2001:db8::17]", "[2001:db8::17]:8080"),
        ("fe80::1%eth0", "[fe80::1%eth0]:8080"),
    ],
)
def test_node_addr_brackets_ipv6(host: str, addr: str) -> None:
    assert Node(host, 8080, 1).addr == addr


def test_node_is_frozen_slotted_and_hashable() -> None:
    a = Node("10.0.0.1", 80, 1)
    assert not hasattr(a, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.weight = 2  # type: ignore[misc]
    assert a == Node("10.0.0.1", 80, 1) and hash(a) == hash(Node("10.0.0.1", 80, 1))
    assert a != Node("10.0.0.1", 80, 2) and a != Node("10.0.0.1", 80, 1, priority=1)
    assert {a: 1}[Node("10.0.0.1", 80, 1)] == 1
    assert "addr" not in repr(a) and a.priority == 0


@pytest.mark.parametrize("args", [("", 80, 1), ("h", 0, 1), ("h", 65536, 1), ("h", 80, -1)])
def test_node_rejects_nonsense(args: tuple[str, int, int]) -> None:
    with pytest.raises(ValueError):
        Node(*args)


# --- make_balancer --------------------------------------------------------------------------------


def test_make_balancer_rejects_unknown_kind_and_chash_without_key() -> None:
    with pytest.raises(ValueError, match="unknown balancer type"):
        make_balancer("random", nodes_of(1))
    with pytest.raises(ValueError, match="hash_key"):
        make_balancer("chash", nodes_of(1))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_one_priority_level_gets_the_plain_group(kind: str) -> None:
    b = build(kind, nodes_of(1, 2))
    assert isinstance(b, Balancer)
    assert isinstance(b, (RoundRobin, ConsistentHash, LeastConn, Ewma))
    multi = build(kind, nodes_of(1) + nodes_of(1, priority=-1, prefix="10.9.0."))
    assert isinstance(multi, PriorityBalancer) and isinstance(multi, Balancer)


# --- behaviour every kind shares ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_weight_zero_is_never_picked(kind: str) -> None:
    nodes = nodes_of(3, 0, 1, 0)
    b = build(kind, nodes)
    got = picks(b, 2000)
    # least_conn sends idle traffic to the heaviest node only, so "at least one, never weight 0"
    assert nodes[0] in got and set(got) <= {nodes[0], nodes[2]}
    assert nodes[1] not in b.nodes and nodes[3] not in b.nodes


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_no_usable_node_picks_none(kind: str) -> None:
    for nodes in ([], nodes_of(0, 0)):
        b = build(kind, nodes)
        assert b.pick("k") is None
        assert b.pick("k", {Node("10.0.0.1", 80, 0)}) is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_single_node(kind: str) -> None:
    (only,) = nodes = nodes_of(5)
    b = build(kind, nodes)
    assert all(b.pick(f"k{i}") is only for i in range(50))
    assert b.pick("k", frozenset({only})) is None
    # What lets the proxy skip pick() for a one-node upstream: down, it is still the pick.
    b.mark_down(only)
    assert b.pick("k") is only


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tracks_says_whether_on_start_and_on_finish_matter(kind: str) -> None:
    # The proxy calls on_start/on_finish only when `tracks`: least_conn counts requests in
    # flight, ewma learns latencies; the others keep no per-request state.
    wants = kind in ("least_conn", "ewma")
    assert build(kind, nodes_of(1, 2)).tracks is wants
    multi = build(kind, nodes_of(1) + nodes_of(1, priority=-1, prefix="10.9.0."))
    assert isinstance(multi, PriorityBalancer) and multi.tracks is wants


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (5, 1, 1), (1, 2, 3, 0, 4)])
def test_retries_visit_every_node_once_then_none(kind: str, weights: tuple[int, ...]) -> None:
    nodes = nodes_of(*weights)
    usable = {n for n in nodes if n.weight}
    b = build(kind, nodes)
    for attempt in range(20):
        request = f"req-{attempt}"
        tried: set[Node] = set()
        while (node := b.pick(request, tried)) is not None:
            assert node in usable and node not in tried
            tried.add(node)
        assert tried == usable
        assert b.pick(request, frozenset(tried)) is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_retries_skip_down_nodes_too(kind: str) -> None:
    nodes = nodes_of(3, 1, 2, 1, 1)
    b = build(kind, nodes)
    b.mark_down(nodes[0])
    b.mark_down(nodes[3])
    up = {nodes[1], nodes[2], nodes[4]}
    for attempt in range(20):
        tried: set[Node] = set()
        while (node := b.pick(f"req-{attempt}", tried)) is not None:
            assert node in up and node not in tried
            tried.add(node)
        assert tried == up


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_down_nodes_are_skipped_until_marked_up(kind: str) -> None:
    nodes = nodes_of(1, 1, 1, 1)
    b = build(kind, nodes)
    b.mark_down(nodes[0])
    b.mark_down(nodes[2])
    b.mark_down(nodes[2])  # twice is once
    assert set(picks(b, 500)) == {nodes[1], nodes[3]}
    b.mark_up(nodes[2])
    assert set(picks(b, 500)) == {nodes[1], nodes[2], nodes[3]}
    b.mark_up(nodes[0])
    b.mark_up(nodes[0])
    assert set(picks(b, 500)) == set(nodes)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_all_down_fails_open_like_apisix(kind: str) -> None:
    # APISIX balancer.lua: "all upstream nodes is unhealthy, use default" -- balance over all.
    nodes = nodes_of(1, 1, 1)
    b = build(kind, nodes)
    for n in nodes:
        b.mark_down(n)
    assert set(picks(b, 500)) == set(nodes)
    # tried still excludes while failing open
    assert b.pick("k", set(nodes)) is None


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_unknown_nodes_are_ignored(kind: str) -> None:
    nodes = nodes_of(1, 1)
    stranger = Node("192.0.2.1", 80, 1)
    b = build(kind, nodes)
    b.on_start(stranger)
    b.on_finish(stranger, 0.5, True)
    b.mark_down(stranger)
    b.mark_up(stranger)
    assert set(picks(b, 200)) == set(nodes)


# --- roundrobin -----------------------------------------------------------------------------------


def reference_swrr(weights: Sequence[int], count: int) -> list[int]:
    """nginx's smooth weighted round robin, straight from its description, for comparison."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(count):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def test_roundrobin_is_smooth() -> None:
    a, b_, c = nodes = nodes_of(5, 1, 1)
    rr = make_balancer("roundrobin", nodes)
    assert [rr.pick(None) for _ in range(14)] == [a, a, b_, a, c, a, a] * 2


@pytest.mark.parametrize(
    "weights", [(1,), (1, 1, 1), (5, 1, 1), (3, 2, 1, 4), (500, 100, 100), (7, 13, 2, 9, 1)]
)
def test_roundrobin_exact_shares(weights: tuple[int, ...]) -> None:
    nodes = nodes_of(*weights)
    rr = make_balancer("roundrobin", nodes)
    total = sum(weights) // math.gcd(*weights)
    for k in (1, 3):
        got = Counter(rr.pick(None) for _ in range(total * k))
        assert [got[n] * sum(weights) for n in nodes] == [w * total * k for w in weights]


def test_roundrobin_schedule_matches_reference_algorithm() -> None:
    rng = random.Random(1)
    cases = [[3, 3, 3], [1] * 7, [2, 4], [7]]
    cases += [[rng.randint(1, 20) for _ in range(rng.randint(1, 8))] for _ in range(50)]
    for weights in cases:
        schedule = smooth_schedule(weights)
        assert schedule is not None
        assert schedule * 3 == reference_swrr(weights, 3 * len(schedule))


def test_roundrobin_long_period_runs_the_loop_and_stays_exact() -> None:
    weights = (4999, 3001, 2000)  # gcd 1, period 10,000 > MAX_SCHEDULE
    assert sum(weights) > MAX_SCHEDULE and smooth_schedule(weights) is None
    nodes = nodes_of(*weights)
    rr = make_balancer("roundrobin", nodes)
    seq = [rr.pick(None) for _ in range(sum(weights))]
    assert [nodes.index(n) for n in seq[:50]] == reference_swrr(weights, 50)
    assert Counter(seq) == dict(zip(nodes, weights, strict=True))


def test_roundrobin_down_node_shares_recompute_exactly() -> None:
    a, b_, c = nodes = nodes_of(5, 1, 1)
    rr = make_balancer("roundrobin", nodes)
    rr.mark_down(a)
    assert Counter(rr.pick(None) for _ in range(10)) == {b_: 5, c: 5}
    rr.mark_up(a)
    assert Counter(rr.pick(None) for _ in range(70)) == {a: 50, b_: 10, c: 10}


def test_roundrobin_retry_goes_to_the_next_weighted_node() -> None:
    a, b_, c = nodes = nodes_of(5, 3, 2)
    rr = make_balancer("roundrobin", nodes)
    got = Counter(rr.pick(None, {a}) for _ in range(50))
    assert got == {b_: 30, c: 20}


# --- chash ----------------------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(20_000)]


def mapping(b: Balancer, keys: Sequence[str] = KEYS) -> list[str]:
    out = []
    for k in keys:
        node = b.pick(k)
        assert node is not None
        out.append(node.addr)
    return out


def test_chash_is_stable() -> None:
    nodes = nodes_of(1, 1, 1, 1, 1)
    b1 = make_balancer("chash", nodes, hash_key=key_of)
    b2 = make_balancer("chash", list(reversed(nodes)), hash_key=key_of)  # config order irrelevant
    first = mapping(b1)
    assert mapping(b1) == first == mapping(b2)


def test_chash_does_not_depend_on_pythons_salted_hash() -> None:
    # Different worker processes must agree on where a key goes.
    script = (
        "from ando.proxy.balancer import Node, make_balancer\n"
        "b = make_balancer('chash', [Node(f'10.0.0.{i}', 80, 1) for i in range(1, 6)],"
        " hash_key=lambda r: r)\n"
        "print(','.join(b.pick(f'user-{i}').addr for i in range(300)))\n"
    )
    runs = set()
    for seed in ("1", "2"):
        env = {"PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        runs.add(out.stdout)
    assert len(runs) == 1


@pytest.mark.parametrize("n", range(4, 11))
def test_chash_adding_a_node_moves_about_one_share(n: int) -> None:
    nodes = nodes_of(*([1] * (n + 1)))
    before = mapping(make_balancer("chash", nodes[:n], hash_key=key_of))
    after = mapping(make_balancer("chash", nodes, hash_key=key_of))
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    # every key that moved went to the new node, and about 1/(n+1) of them moved
    assert {y for _, y in moved} == {nodes[n].addr}
    expected = len(KEYS) / (n + 1)
    assert 0.7 * expected <= len(moved) <= 1.3 * expected


@pytest.mark.parametrize("n", range(4, 11))
def test_chash_removing_a_node_moves_only_its_keys(n: int) -> None:
    nodes = nodes_of(*([1] * n))
    gone = nodes[n // 2]
    before = mapping(make_balancer("chash", nodes, hash_key=key_of))
    after = mapping(make_balancer("chash", [x for x in nodes if x != gone], hash_key=key_of))
    for x, y in zip(before, after, strict=True):
        assert (x == y) if x != gone.addr else (y != gone.addr)
    # ... and marking it down instead of removing it gives exactly the same mapping
    b = make_balancer("chash", nodes, hash_key=key_of)
    b.mark_down(gone)
    assert mapping(b) == after


def test_chash_spreads_by_weight() -> None:
    nodes = nodes_of(1, 2, 3, 4)
    got = Counter(mapping(make_balancer("chash", nodes, hash_key=key_of)))
    for node in nodes:
        share = got[node.addr] / len(KEYS)
        assert share == pytest.approx(node.weight / 10, rel=0.2)


def test_chash_retry_walks_to_the_next_node_consistently() -> None:
    nodes = nodes_of(1, 1, 1, 1, 1)
    b = make_balancer("chash", nodes, hash_key=key_of)
    for key in KEYS[:500]:
        first = b.pick(key)
        assert first is not None
        second = b.pick(key, {first})
        assert second is not None and second != first
        assert b.pick(key, {first}) == second  # the same fallback every time
        assert b.pick(key) == first


def test_chash_missing_key_spreads_instead_of_pinning() -> None:
    nodes = nodes_of(1, 1, 3)
    b = make_balancer("chash", nodes, hash_key=lambda _: None)
    got = picks(b, 5000)
    assert set(got) == set(nodes)
    assert got[nodes[2]] / 5000 == pytest.approx(0.6, rel=0.25)
    b2 = make_balancer("chash", nodes, hash_key=lambda _: "")
    assert len(set(picks(b2, 100))) == 3


def test_chash_hash_key_sees_the_request() -> None:
    seen = []

    def remote_addr(request: object) -> str:
        seen.append(request)
        return str(request)

    b = make_balancer("chash", nodes_of(1, 1), hash_key=remote_addr)
    sentinel = object()
    b.pick(sentinel)
    assert seen == [sentinel]


# --- least_conn -----------------------------------------------------------------------------------


def test_least_conn_follows_active_counts() -> None:
    a, b_, c = nodes = nodes_of(1, 1, 1)
    lc = make_balancer("least_conn", nodes)
    lc.on_start(a)
    lc.on_start(a)
    lc.on_start(b_)
    assert lc.pick(None) == c
    lc.on_start(c)  # a: 2, b: 1, c: 1
    assert {lc.pick(None) for _ in range(4)} == {b_, c}
    lc.on_finish(a, 0.1, False)
    lc.on_finish(a, 0.1, False)
    lc.on_finish(a, 0.1, False)  # never below zero
    assert lc.pick(None) == a
    lc.on_start(a)
    lc.on_start(a)  # a: 2, b: 1, c: 1
    assert {lc.pick(None) for _ in range(4)} == {b_, c}


def test_least_conn_scores_active_plus_one_over_weight() -> None:
    heavy, light = nodes = nodes_of(3, 1)
    lc = make_balancer("least_conn", nodes)
    # idle: 1/3 < 1/1, so the heavy node wins (APISIX's (active + 1) / weight)
    assert lc.pick(None) == heavy
    # with requests held open, load settles in proportion to weight
    held: Counter[Node] = Counter()
    for _ in range(400):
        node = lc.pick(None)
        assert node is not None
        lc.on_start(node)
        held[node] += 1
    assert held == {heavy: 300, light: 100}


def test_least_conn_breaks_ties_round_robin() -> None:
    nodes = nodes_of(1, 1, 1, 1)
    lc = make_balancer("least_conn", nodes)
    seen = []
    for _ in range(40):  # requests that never overlap: every score is always equal
        node = lc.pick(None)
        assert node is not None
        lc.on_start(node)
        lc.on_finish(node, 0.01, False)
        seen.append(node)
    assert Counter(seen) == {n: 10 for n in nodes}


def test_least_conn_retry_takes_the_next_least_loaded() -> None:
    a, b_, c = nodes = nodes_of(1, 1, 1)
    lc = make_balancer("least_conn", nodes)
    lc.on_start(b_)
    lc.on_start(b_)
    lc.on_start(c)
    assert lc.pick(None) == a
    assert lc.pick(None, {a}) == c
    assert lc.pick(None, {a, c}) == b_


# --- ewma -----------------------------------------------------------------------------------------


def ewma_pair(weights: Sequence[int] = (1, 1), seed: int = 3) -> tuple[Ewma, FakeClock, list[Node]]:
    clock = FakeClock()
    nodes = nodes_of(*weights)
    b = make_balancer("ewma", nodes, clock=clock, rng=random.Random(seed))
    assert isinstance(b, Ewma)
    return b, clock, nodes


def test_ewma_probes_unmeasured_nodes() -> None:
    b, _, nodes = ewma_pair((1, 1, 1))
    got = picks(b, 3000)
    assert all(got[n] > 800 for n in nodes)


def test_ewma_prefers_the_fast_node() -> None:
    b, clock, (fast, slow) = ewma_pair()
    b.on_finish(fast, 0.010, False)
    b.on_finish(slow, 0.500, False)
    clock.now += 0.1
    assert Counter(picks(b, 200)) == {fast: 200}

    b3, _, (fast3, slow1, slow2) = ewma_pair((1, 1, 1))
    b3.on_finish(fast3, 0.010, False)
    b3.on_finish(slow1, 0.500, False)
    b3.on_finish(slow2, 0.400, False)
    got = picks(b3, 3000)
    # power of two choices: the fast node wins every pair it is in, i.e. 2 of 3 pairs
    assert got[fast3] / 3000 == pytest.approx(2 / 3, abs=0.04)
    # the slow nodes only ever win the one pair without the fast node, and then the less slow wins
    assert got[slow1] == 0 and got[slow2] == 3000 - got[fast3]


def test_ewma_average_is_time_weighted_with_a_10s_decay() -> None:
    b, clock, (n, _) = ewma_pair()
    b.on_finish(n, 1.0, False)  # first sample is taken as is
    assert b.score(n) == pytest.approx(1.0)
    clock.now += 10
    assert b.score(n) == pytest.approx(math.exp(-1))  # decays towards 0 while quiet
    b.on_finish(n, 0.0, False)
    assert b.score(n) == pytest.approx(math.exp(-1))
    clock.now += 5
    b.on_finish(n, 2.0, False)
    w = math.exp(-0.5)
    assert b.score(n) == pytest.approx(math.exp(-1) * w + 2.0 * (1 - w))


def test_ewma_slow_node_recovers_after_decay() -> None:
    b, clock, (fast, slow) = ewma_pair()
    b.on_finish(fast, 0.010, False)
    b.on_finish(slow, 1.000, False)
    for _ in range(45):  # the fast node keeps serving at 10 ms; the slow one is left alone
        assert b.pick(None) == fast
        clock.now += 1
        b.on_finish(fast, 0.010, False)
    clock.now += 5
    b.on_finish(fast, 0.010, False)
    # 1.0 * exp(-50/10) = 0.0067 < 0.010: the slow node is worth trying again
    assert slow in set(picks(b, 20))


def test_ewma_failure_penalises_then_is_forgiven() -> None:
    b, clock, (a, b_) = ewma_pair()
    b.on_finish(a, 0.020, False)
    b.on_finish(b_, 0.020, False)
    clock.now += 1
    b.on_finish(a, 0.001, True)  # a fast failure must not look like a fast success
    assert b.score(a) >= 2 * 0.020 * math.exp(-0.1) - 1e-9
    assert Counter(picks(b, 100)) == {b_: 100}
    for _ in range(30):
        clock.now += 1
        b.on_finish(b_, 0.020, False)
    assert a in set(picks(b, 20))


def test_ewma_compares_two_distinct_healthy_nodes() -> None:
    b, _, (down, slow, fast) = ewma_pair((1, 1, 1))
    b.on_finish(slow, 0.5, False)
    b.on_finish(fast, 0.01, False)
    b.mark_down(down)
    assert Counter(picks(b, 300)) == {fast: 300}
    assert Counter(b.pick(None, {down}) for _ in range(100)) == {fast: 100}


def test_ewma_pick_agrees_with_the_decayed_scores() -> None:
    # Picks compare log(ewma) + last / 10 s instead of decaying both scores to now: same order.
    rng = random.Random(5)
    for _ in range(200):
        b, clock, (x, y) = ewma_pair()
        for _ in range(rng.randint(1, 6)):
            clock.now += rng.uniform(0, 30)
            b.on_finish(rng.choice((x, y)), rng.uniform(0.001, 2.0), rng.random() < 0.2)
        clock.now += rng.uniform(0, 60)
        sx, sy = b.score(x), b.score(y)
        if abs(sx - sy) > 1e-9 * max(sx, sy):
            assert b.pick(None) == (x if sx < sy else y)


def test_ewma_is_deterministic_with_a_seeded_rng() -> None:
    runs = []
    for _ in range(2):
        b, _, _ = ewma_pair((1, 1, 1, 1), seed=42)
        runs.append([b.pick(None) for _ in range(100)])
    assert runs[0] == runs[1]


# --- priority -------------------------------------------------------------------------------------


def tiers() -> tuple[list[Node], list[Node], list[Node]]:
    top = nodes_of(1, 1, priority=10, prefix="10.1.0.")
    mid = nodes_of(1, priority=0, prefix="10.2.0.")
    backup = nodes_of(1, priority=-1, prefix="10.3.0.")
    return top, mid, backup


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_priority_failover_and_failback(kind: str) -> None:
    top, mid, backup = tiers()
    # config order mixed on purpose: priority, not position, decides
    b = build(kind, [backup[0], top[0], mid[0], top[1]])
    assert set(picks(b, 300)) == set(top)
    b.mark_down(top[0])
    assert set(picks(b, 300)) == {top[1]}
    b.mark_down(top[1])
    assert set(picks(b, 300)) == set(mid)
    b.mark_down(mid[0])
    assert set(picks(b, 300)) == set(backup)
    b.mark_up(top[1])  # fail-back is immediate
    assert set(picks(b, 300)) == {top[1]}


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_priority_retries_fall_through_tiers(kind: str) -> None:
    top, mid, backup = tiers()
    b = build(kind, top + mid + backup)
    assert b.pick("k", set(top)) == mid[0]
    assert b.pick("k", {*top, *mid}) == backup[0]
    assert b.pick("k", {*top, *mid, *backup}) is None
    # a tier that is half down and half tried is exhausted too
    b.mark_down(top[0])
    assert b.pick("k", {top[1]}) == mid[0]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_priority_all_down_fails_open_to_the_top_tier(kind: str) -> None:
    top, mid, backup = tiers()
    b = build(kind, top + mid + backup)
    for n in top + mid + backup:
        b.mark_down(n)
    assert set(picks(b, 300)) == set(top)
    b.mark_up(backup[0])  # one healthy node anywhere: health is honoured again
    assert set(picks(b, 300)) == set(backup)


def test_priority_tier_of_weight_zero_nodes_is_skipped() -> None:
    dead = nodes_of(0, 0, priority=5, prefix="10.5.0.")
    live = nodes_of(1, 1)
    b = make_balancer("roundrobin", dead + live)
    assert set(picks(b, 100)) == set(live)


def test_priority_forwards_bookkeeping_to_the_right_tier() -> None:
    top = nodes_of(1, 1, priority=1, prefix="10.1.0.")
    backup = nodes_of(1, priority=0, prefix="10.3.0.")
    b = make_balancer("least_conn", top + backup)
    assert isinstance(b, PriorityBalancer)
    b.on_start(top[0])
    assert b.pick(None) == top[1]
    b.on_finish(top[0], 0.1, False)
    b.on_start(top[1])
    assert b.pick(None) == top[0]
    assert b.pick(None, set(top)) == backup[0]


def test_nothing_tried_is_shared_and_empty() -> None:
    assert frozenset() == NOTHING_TRIED and isinstance(NOTHING_TRIED, frozenset)
