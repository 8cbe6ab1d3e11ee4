"""The pure parts of the traffic plugins: traffic-split's smooth weighted round robin, and
api-breaker's break durations (the integration tests cannot afford to wait out 4, 8, ... s)."""

from __future__ import annotations

from collections import Counter

import pytest

from ando.plugins.traffic.api_breaker import breaker_seconds
from ando.plugins.traffic.traffic_split import SmoothWeightedRoundRobin


def picks(weights: list[int], n: int) -> list[str]:
    names = [chr(ord("a") + i) for i in range(len(weights))]
    rr = SmoothWeightedRoundRobin(names, weights)
    return [rr.pick() for _ in range(n)]


def test_smooth_round_robin_interleaves_like_nginx():
    assert picks([3, 1], 8) == ["a", "a", "b", "a"] * 2
    # nginx's documented example: weights 5, 1, 1 give a a b a c a a
    assert picks([5, 1, 1], 7) == ["a", "a", "b", "a", "c", "a", "a"]
    assert picks([1, 1], 4) == ["a", "b", "a", "b"]


@pytest.mark.parametrize("weights", [[3, 1], [2, 3, 5], [1], [7, 0, 2], [100, 1]])
def test_every_window_of_total_weight_picks_each_exactly_its_weight(weights):
    total = sum(weights)
    got = picks(weights, total * 3)
    for start in range(0, len(got), total):
        counts = Counter(got[start : start + total])
        want = {chr(ord("a") + i): w for i, w in enumerate(weights) if w}
        assert counts == want


def test_zero_weights_are_never_picked_and_all_zero_is_empty():
    assert set(picks([0, 2], 6)) == {"b"}
    assert not SmoothWeightedRoundRobin(["a", "b"], [0, 0])


def test_break_doubles_from_two_seconds_up_to_max_breaker_sec():
    # failures: 3 -> trips at 3, 6, 9, ... counted failures
    assert [breaker_seconds(n, 3, 300) for n in (3, 6, 9, 12)] == [2, 4, 8, 16]
    assert breaker_seconds(4, 3, 300) == 4  # ceil(4 / 3) = 2 (APISIX)
    assert breaker_seconds(1, 3, 300) == 2  # at least 2^1
    assert breaker_seconds(24, 3, 300) == 256
    assert breaker_seconds(27, 3, 300) == 300  # 2^9 is past the cap
    assert breaker_seconds(6, 3, 3) == 3
    assert breaker_seconds(10**9, 1, 300) == 300  # no giant powers
