"""Python time per proxied request, without the kernel: the real protocols, fake transports.

`python bench/hotpath_bench.py [N]` drives HttpConnection (client side) and UpstreamConnection
(a pooled keep-alive upstream) with fixed bytes: a GET in, a 13-byte response back, N times.
No syscalls and no event-loop turns are involved, so this isolates the per-request Python work
that separates Ando from a bare uvloop + httptools proxy (see bench/REPORT.md). `--profile`
prints cProfile's top functions instead (its overhead inflates every number; read it for
proportions). `--opcodes` counts the Python bytecode instructions each function executes per
request (sys.settrace opcode events): exact and repeatable, it shows where the steps are, but a
C call counts as one step however long it takes, so judge a change with bench/instructions.py
(callgrind's instruction count), not with this. `--chain` puts
`make bench`'s plugin chain (key-auth, limit-count, proxy-rewrite, cors, request-id) on the
route; `--prometheus` the prometheus plugin alone (its added cost is the difference to a plain
run), `--lua` the hello_world Lua plugin, `--pyhdr` response-rewrite setting the header
hello_world sets (the same change by a Python plugin), `--access-log` the default access log
(to /dev/null; the harness never turns the loop, so lines pile up in the sink's buffer
unwritten). The garbage collector is tuned as a worker tunes it.
It prints the median and the best of its runs; `make bench` takes the best, as timeit does (on
a shared machine the slower runs measure the neighbours), and compares variants round by round.
Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType

import uvloop

from ando.config.source import snapshot_from_text
from ando.http.upstream import UpstreamConnection
from ando.proxy.gateway import Gateway
from ando.runtime.worker import _tune_gc

REQUEST = (
    b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nUser-Agent: wrk\r\napikey: bench-key\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 05:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
    b"hello, world\n"
)
CONFIG = """
ando: {observability: {access_log: {enabled: false}}}
routes:
  - uri: /bench
    upstream: {nodes: {"127.0.0.1:18081": 1}, keepalive_pool: {requests: 1000000000}}
"""
CHAIN = """
    plugins:
      key-auth: {}
      limit-count: {count: 1000000000, time_window: 60, key_type: var, key: remote_addr}
      proxy-rewrite: {headers: {set: {X-Bench: "1"}}}
      cors: {}
      request-id: {}
consumers:
  - username: bench
    plugins: {key-auth: {key: bench-key}}
"""


class FakeTransport:
    """Just enough of a transport: keeps nothing, never pauses."""

    def __init__(self) -> None:
        self.last = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.last = data

    def get_extra_info(self, key: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 9080)}.get(key, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close


PROMETHEUS = """
    plugins:
      prometheus: {}
"""
LUA = """
    plugins:
      hello-world: {}
"""
PYHDR = """
    plugins:
      response-rewrite: {headers: {set: {X-Hello: world}}}
"""


def lua_config() -> str:
    """CONFIG with the hello_world Lua plugin on the route."""
    lua_on = "ando: {lua: {plugins: [examples.hello_world]}, observability:"
    return CONFIG.replace("ando: {observability:", lua_on).rstrip("\n") + LUA


def proxied_request(text: str) -> Callable[[], None]:
    """One request through a gateway built from `text`, against a pooled upstream connection:
    a callable that runs it (checked to work before it is returned)."""
    gw = Gateway(snapshot_from_text(text, "bench.yaml", environ={}))
    assert gw.config is not None
    client = gw.protocol_factory(gw.config.snapshot.node.listen[0])()
    client_transport = FakeTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    upstream_runtime = gw.config.routes[0].upstream
    assert upstream_runtime is not None
    up = UpstreamConnection(upstream_runtime.nodes[0].addr)
    up.connection_made(FakeTransport())  # type: ignore[arg-type]
    gw.pool.release(upstream_runtime.nodes[0].addr, up, upstream_runtime.pool)

    def one() -> None:
        client.data_received(REQUEST)
        up.data_received(RESPONSE)

    for _ in range(1000):
        one()
    assert client_transport.last.endswith(b"hello, world\n"), client_transport.last
    return one


def count_opcodes(one: Callable[[], None], n: int, top: int = 30) -> None:
    """Bytecode instructions per request, in total and by function (file:line:name)."""
    counts: Counter[str] = Counter()

    def on_call(frame: FrameType, event: str, arg: object) -> Callable[..., object]:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{code.co_filename.rpartition('/')[2]}:{code.co_firstlineno}:{code.co_name}"

        def on_opcode(frame: FrameType, event: str, arg: object) -> Callable[..., object]:
            if event == "opcode":
                counts[key] += 1
            return on_opcode

        return on_opcode

    sys.settrace(on_call)
    try:
        for _ in range(n):
            one()
    finally:
        sys.settrace(None)
    print(f"Python bytecode instructions per proxied request: {sum(counts.values()) / n:.0f}")
    for key, count in counts.most_common(top):
        print(f"{count / n:8.1f}  {key}")


async def run(
    n: int,
    runs: int,
    profile: bool,
    chain: bool,
    prometheus: bool = False,
    lua: bool = False,
    opcodes: bool = False,
    access_log: bool = False,
    pyhdr: bool = False,
) -> None:
    text = CONFIG.rstrip("\n") + CHAIN if chain else CONFIG
    if prometheus:
        text = CONFIG.rstrip("\n") + PROMETHEUS
    if lua:
        text = lua_config()
    if pyhdr:
        text = CONFIG.rstrip("\n") + PYHDR
    if access_log:
        text = CONFIG.replace("{enabled: false}", '{path: "/dev/null"}')
    one = proxied_request(text)
    _tune_gc()  # the collector as a worker runs it, so its cost per request is the worker's
    if opcodes:
        count_opcodes(one, min(n, 500))
        return
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            one()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        times.append((time.perf_counter() - t0) / n * 1e6)
    print(
        f"Python per proxied request: median {statistics.median(times):.2f} us, "
        f"min {min(times):.2f} us over {runs} runs of {n}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("n", nargs="?", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--opcodes", action="store_true", help="bytecode instructions per request, by function"
    )
    parser.add_argument("--chain", action="store_true", help="with the 5-plugin chain")
    parser.add_argument("--prometheus", action="store_true", help="with the prometheus plugin")
    parser.add_argument("--lua", action="store_true", help="with the hello_world Lua plugin")
    parser.add_argument("--access-log", action="store_true", help="with the access log on")
    parser.add_argument(
        "--pyhdr", action="store_true", help="with response-rewrite setting hello_world's header"
    )
    args = parser.parse_args()
    try:
        flags = (
            args.profile,
            args.chain,
            args.prometheus,
            args.lua,
            args.opcodes,
            args.access_log,
            args.pyhdr,
        )
        uvloop.run(run(args.n, args.runs, *flags))
    except BrokenPipeError:  # piped into `head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
