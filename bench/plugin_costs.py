"""Each plugin's added Python time per request, in-process, variants interleaved in one process.

`python bench/plugin_costs.py [VARIANT ...]` builds one gateway per variant (the request and
response of bench/hotpath_bench.py, fake transports, the GC tuned as in a worker) and times them
round by round, 10,000 requests per variant per round, in CPU time. A variant's added cost is
the median, over the rounds, of its time minus the plain one's in the same round: drift on a
shared machine moves both alike. Variants: `plain`, `prometheus`, `lua` (hello_world), `chain`
(make bench's five plugins) and `only-NAME` for each plugin of the chain alone. Default: all.
Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import uvloop
from hotpath_bench import CHAIN, CONFIG, PROMETHEUS, lua_config, proxied_request

from ando.runtime.worker import _tune_gc

_CHAIN_PLUGINS = {
    "key-auth": "key-auth: {}",
    "limit-count": (
        "limit-count: {count: 1000000000, time_window: 60, key_type: var, key: remote_addr}"
    ),
    "proxy-rewrite": 'proxy-rewrite: {headers: {set: {X-Bench: "1"}}}',
    "cors": "cors: {}",
    "request-id": "request-id: {}",
}
_CONSUMER = "consumers:\n  - username: bench\n    plugins: {key-auth: {key: bench-key}}\n"


def config_for(variant: str) -> str:
    base = CONFIG.rstrip("\n")
    if variant == "plain":
        return CONFIG
    if variant == "prometheus":
        return base + PROMETHEUS
    if variant == "chain":
        return base + CHAIN
    if variant == "lua":
        return lua_config()
    name = variant.removeprefix("only-")
    if variant.startswith("only-") and name in _CHAIN_PLUGINS:
        text = base + "\n    plugins:\n      " + _CHAIN_PLUGINS[name] + "\n"
        return text + _CONSUMER if name == "key-auth" else text
    raise SystemExit(f"unknown variant {variant!r}")


def build(variant: str) -> Callable[[], None]:
    return proxied_request(config_for(variant))


async def run(variants: list[str], rounds: int, n: int) -> None:
    ones = {v: build(v) for v in variants}
    _tune_gc()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            one = ones[v]
            t0 = time.process_time()
            for _ in range(n):
                one()
            times[v].append((time.process_time() - t0) / n * 1e6)
    plain = times["plain"]
    print(f"{'variant':18s} {'us/request':>10s} {'added':>7s}  (median over {rounds} rounds)")
    for v in variants:
        added = statistics.median([t - p for t, p in zip(times[v], plain, strict=True)])
        print(f"{v:18s} {statistics.median(times[v]):10.2f} {added:7.2f}")


def main() -> None:
    everything = ["plain", "prometheus", "lua", "chain", *(f"only-{p}" for p in _CHAIN_PLUGINS)]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="*", default=everything)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("-n", type=int, default=10_000, help="requests per variant per round")
    args = parser.parse_args()
    variants = ["plain", *(v for v in args.variants if v != "plain")]
    uvloop.run(run(variants, args.rounds, args.n))


if __name__ == "__main__":
    main()
