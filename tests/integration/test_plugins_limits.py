"""limit-count, limit-req and limit-conn through running gateways, as clients see them.

Counts hold for the node, not per worker: the main gateway runs 2 workers and the tests open a new
connection per request, so both workers serve. limit-count's redis policy runs against a real
redis-server started on a free port, shared by two separate gateways.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Response, request
from tests.support.config import UP, config_problems, snapshot
from tests.support.gateway import GatewayProcess
from tests.support.upstream import closed_port, free_port

PAGE_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>openresty</center>\r\n</body>\r\n</html>\r\n"
)


class RedisServer:
    """A throw-away redis-server on a free port: no persistence, stopped at the end."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RedisServer:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [exe, *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("redis-server did not start")

    def command(self, *words: bytes) -> bytes:
        """One command in RESP, its raw reply (enough for PING and FLUSHALL)."""
        msg = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(msg)
            return s.recv(1024)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as r:
        yield r


def redis_routes(up: dict, redis_port: int) -> list[dict[str, Any]]:
    """The routes both gateways carry: the same ids, so they count in the same Redis keys."""
    rc = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis_port}
    down = {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": closed_port()}
    return [
        {"id": "rs-shared", "uri": "/rs/shared", "upstream": up,
         "plugins": {"limit-count": {"count": 3, "time_window": 60, **rc}}},
        {"id": "rs-reset", "uri": "/rs/reset", "upstream": up,
         "plugins": {"limit-count": {"count": 1, "time_window": 1, **rc}}},
        {"id": "rs-down", "uri": "/rs/down", "upstream": up,
         "plugins": {"limit-count": {"count": 5, "time_window": 60, **down}}},
        {"id": "rs-degrade", "uri": "/rs/degrade", "upstream": up,
         "plugins": {"limit-count": {"count": 5, "time_window": 60, "allow_degradation": True,
                                     **down}}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def gw(
    up: dict[str, Any], redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    def lc(**conf: Any) -> dict:
        return {"limit-count": {"time_window": 60, **conf}}

    def conn(host: str, **conf: Any) -> dict:
        return {"uri": "/delay", "hosts": [host], "upstream": up, "plugins": {"limit-conn": {
            "key": "remote_addr", "default_conn_delay": 0.3, "only_use_default_delay": True,
            **conf}}}  # fmt: skip

    config = {
        "services": [{"id": "svc", "upstream": up, "plugins": lc(count=2)}],
        "routes": [
            {"id": "nodewide", "uri": "/lc/nodewide", "upstream": up, "plugins": lc(count=20)},
            {"id": "headers", "uri": "/lc/headers", "upstream": up, "plugins": lc(count=3)},
            {"id": "quiet", "uri": "/lc/quiet", "upstream": up,
             "plugins": lc(count=1, show_limit_quota_header=False)},
            {"id": "custom", "uri": "/lc/custom", "upstream": up,
             "plugins": lc(count=1, rejected_code=429, rejected_msg="slow down")},
            {"id": "by-header", "uri": "/lc/by-header", "upstream": up,
             "plugins": lc(count=2, key="http_x_api_key")},
            {"id": "combo", "uri": "/lc/combo", "upstream": up,
             "plugins": lc(count=1, key_type="var_combination", key="$http_x_tenant/$http_x_user")},
            {"id": "constant", "uri": "/lc/constant", "upstream": up,
             "plugins": lc(count=2, key_type="constant", key="all")},
            {"id": "reset", "uri": "/lc/reset", "upstream": up,
             "plugins": {"limit-count": {"count": 1, "time_window": 1}}},
            {"id": "svc-a", "uri": "/svc/a", "service_id": "svc"},
            {"id": "svc-b", "uri": "/svc/b", "service_id": "svc"},
            {"id": "grp-a", "uri": "/grp/a", "upstream": up, "plugins": lc(count=2, group="g1")},
            {"id": "grp-b", "uri": "/grp/b", "upstream": up, "plugins": lc(count=2, group="g1")},
            *redis_routes(up, redis.port),
            {"id": "rq-nodelay", "uri": "/rq/nodelay", "upstream": up,
             "plugins": {"limit-req": {"rate": 1, "burst": 1, "nodelay": True,
                                       "key": "remote_addr"}}},
            {"id": "rq-delay", "uri": "/rq/delay", "upstream": up,
             "plugins": {"limit-req": {"rate": 2, "burst": 1, "key": "remote_addr"}}},
            {"id": "rq-burst", "uri": "/rq/burst", "upstream": up,
             "plugins": {"limit-req": {"rate": 5, "burst": 2, "key": "remote_addr"}}},
            {"id": "rq-msg", "uri": "/rq/msg", "upstream": up,
             "plugins": {"limit-req": {"rate": 1, "burst": 0, "key": "http_x_user",
                                       "rejected_code": 429, "rejected_msg": "too fast"}}},
            {"id": "cn-delay", **conn("cn-delay.test", conn=1, burst=1)},
            {"id": "cn-nodewide", **conn("cn-nodewide.test", conn=2, burst=0)},
            {"id": "cn-leave", **conn("cn-leave.test", conn=1, burst=1, default_conn_delay=0.5)},
            {"id": "cn-abort", **conn("cn-abort.test", conn=1, burst=0, rejected_code=429,
                                      rejected_msg="busy")},
        ],
    }  # fmt: skip
    with GatewayProcess(
        config, tmp_path_factory.mktemp("limits"), workers=2, access_log=False
    ) as g:
        yield g


@pytest.fixture(scope="module")
def gw_b(
    up: dict[str, Any], redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A second, separate gateway (another node) on the same Redis."""
    config = {"routes": redis_routes(up, redis.port)}
    with GatewayProcess(config, tmp_path_factory.mktemp("limits-b"), access_log=False) as g:
        yield g


def get(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None) -> Response:
    return request(gw.port, "GET", path, headers=headers)


def quota(r: Response) -> tuple[str | None, str | None, str | None]:
    return (
        r.header("X-RateLimit-Limit"),
        r.header("X-RateLimit-Remaining"),
        r.header("X-RateLimit-Reset"),
    )


def concurrently(
    gw: GatewayProcess, path: str, n: int, host: str | None = None
) -> list[tuple[int, float, Response]]:
    """`n` requests at once, each on its own connection: (status, seconds, response), in
    order of completion."""

    def one(_: int) -> tuple[int, float, Response]:
        start = time.monotonic()
        r = request(gw.port, "GET", path, headers={"Host": host} if host else None, timeout=10)
        return r.status, time.monotonic() - start, r

    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(one, range(n)), key=lambda t: t[1])


# --- limit-count, local policy ------------------------------------------------------------------


def test_count_is_node_wide_across_two_workers(gw, upstream):
    before = upstream.connections
    statuses = [get(gw, "/lc/nodewide").status for _ in range(25)]
    assert statuses == [200] * 20 + [503] * 5
    # each worker proxies over its own upstream connections: two or more means both served
    assert upstream.connections - before >= 2


def test_quota_headers_on_allowed_and_refused_responses(gw):
    seen = [get(gw, "/lc/headers") for _ in range(4)]
    assert [r.status for r in seen] == [200, 200, 200, 503]
    for r, remaining in zip(seen, ["2", "1", "0", "0"], strict=True):
        limit, left, reset = quota(r)
        assert (limit, left) == ("3", remaining)
        assert reset is not None and 58 <= int(reset) <= 60
    refused = seen[3]
    assert refused.body == PAGE_503  # APISIX without rejected_msg: nginx's page
    assert refused.header("Content-Type") == "text/html"
    # the upstream's answer carried the headers too (set in access, applied to any response)
    assert seen[0].json()["path"] == "/lc/headers"


def test_headers_can_be_turned_off(gw):
    r = get(gw, "/lc/quiet")
    assert r.status == 200 and quota(r) == (None, None, None)
    r = get(gw, "/lc/quiet")
    assert r.status == 503 and quota(r) == (None, None, None)


def test_rejected_code_and_message(gw):
    assert get(gw, "/lc/custom").status == 200
    r = get(gw, "/lc/custom")
    assert (r.status, r.json()) == (429, {"error_msg": "slow down"})
    assert r.header("X-RateLimit-Remaining") == "0"


def test_key_by_header_falls_back_to_the_client_address(gw):
    alice, bob = {"X-API-Key": "alice"}, {"X-API-Key": "bob"}
    assert [get(gw, "/lc/by-header", alice).status for _ in range(3)] == [200, 200, 503]
    assert get(gw, "/lc/by-header", bob).status == 200  # another key, another counter
    # without the header the client address is the key: a counter of its own, not alice's
    assert [get(gw, "/lc/by-header").status for _ in range(3)] == [200, 200, 503]
    # an empty header value is no way out either
    assert get(gw, "/lc/by-header", {"X-API-Key": ""}).status == 503


def test_var_combination_and_constant_keys(gw):
    a = {"X-Tenant": "t1", "X-User": "u1"}
    assert get(gw, "/lc/combo", a).status == 200
    assert get(gw, "/lc/combo", a).status == 503
    assert get(gw, "/lc/combo", {"X-Tenant": "t1", "X-User": "u2"}).status == 200
    assert get(gw, "/lc/combo", {"X-Tenant": "t2"}).status == 200  # "t2/" resolves
    # constant: one counter for everybody
    assert get(gw, "/lc/constant", {"X-API-Key": "x"}).status == 200
    assert get(gw, "/lc/constant", {"X-API-Key": "y"}).status == 200
    assert get(gw, "/lc/constant").status == 503


def test_a_service_limit_counts_once_for_its_routes_and_a_group_across_routes(gw):
    assert [get(gw, p).status for p in ("/svc/a", "/svc/b", "/svc/a", "/svc/b")] == [
        200, 200, 503, 503,
    ]  # fmt: skip
    assert [get(gw, p).status for p in ("/grp/a", "/grp/b", "/grp/b", "/grp/a")] == [
        200, 200, 503, 503,
    ]  # fmt: skip


def test_window_resets_after_time_window(gw):
    first = get(gw, "/lc/reset")
    if first.status == 503:  # the previous window of this key may still be open
        time.sleep(int(first.header("X-RateLimit-Reset") or "1"))
        first = get(gw, "/lc/reset")
    assert first.status == 200
    refused = get(gw, "/lc/reset")
    assert refused.status == 503
    wait = int(refused.header("X-RateLimit-Reset") or "0")
    assert 0 <= wait <= 1
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        r = get(gw, "/lc/reset")
        if r.status == 200:
            assert r.header("X-RateLimit-Remaining") == "0"
            return
    pytest.fail("the window never reset")


# --- limit-count, redis policy ------------------------------------------------------------------


def test_two_gateways_share_one_count_through_redis(gw, gw_b):
    got = [get(g, "/rs/shared") for g in (gw, gw_b, gw, gw_b, gw)]
    assert [r.status for r in got] == [200, 200, 200, 503, 503]
    assert [r.header("X-RateLimit-Remaining") for r in got] == ["2", "1", "0", "0", "0"]
    assert all(r.header("X-RateLimit-Limit") == "3" for r in got)
    assert all(58 <= int(r.header("X-RateLimit-Reset") or "0") <= 60 for r in got)
    assert got[3].body == PAGE_503


def test_redis_window_resets(gw, gw_b):
    first = get(gw, "/rs/reset")
    if first.status == 503:
        time.sleep(1)
        first = get(gw, "/rs/reset")
    assert first.status == 200
    assert get(gw_b, "/rs/reset").status == 503
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if get(gw_b, "/rs/reset").status == 200:
            return
    pytest.fail("the redis window never reset")


def test_redis_unreachable_fails_closed_unless_degradation_is_allowed(gw):
    r = get(gw, "/rs/down")
    assert (r.status, r.json()) == (500, {"error_msg": "failed to limit count"})
    r = get(gw, "/rs/degrade")
    assert r.status == 200 and r.header("X-RateLimit-Limit") is None
    assert '"event":"limit_count_redis_error"' in gw.stderr().replace(" ", "")


# --- limit-req ----------------------------------------------------------------------------------


def test_req_burst_goes_through_at_once_with_nodelay_then_refused(gw):
    start = time.monotonic()
    statuses = [get(gw, "/rq/nodelay").status for _ in range(3)]
    assert statuses == [200, 200, 503]
    assert time.monotonic() - start < 0.8  # the burst was not delayed


def test_req_excess_is_delayed_to_the_rate(gw):
    assert get(gw, "/rq/delay").status == 200
    start = time.monotonic()
    assert get(gw, "/rq/delay").status == 200
    assert time.monotonic() - start >= 0.35  # ~0.5 s: one request of excess at 2 per second


def test_req_beyond_burst_refused_while_the_burst_waits(gw):
    results = concurrently(gw, "/rq/burst", 4)
    assert sorted(s for s, _, _ in results) == [200, 200, 200, 503]
    refused = next(t for s, t, _ in results if s == 503)
    slowest = max(t for s, t, _ in results if s == 200)
    assert refused < 0.3 and slowest >= 0.3  # delays 0, 0.2 and 0.4 s at rate 5
    assert next(r for s, _, r in results if s == 503).body == PAGE_503


def test_req_rejected_message_by_key(gw):
    assert get(gw, "/rq/msg", {"X-User": "a"}).status == 200
    r = get(gw, "/rq/msg", {"X-User": "a"})
    assert (r.status, r.json()) == (429, {"error_msg": "too fast"})
    assert get(gw, "/rq/msg", {"X-User": "b"}).status == 200


# --- limit-conn ---------------------------------------------------------------------------------


def test_conn_excess_delayed_beyond_burst_refused_and_counted_out(gw):
    results = concurrently(gw, "/delay?ms=800", 3, host="cn-delay.test")
    statuses = [s for s, _, _ in results]
    assert statuses == [503, 200, 200]  # refused at once; one straight through; one delayed
    assert results[0][1] < 0.5
    assert results[0][2].body == PAGE_503
    assert results[2][1] - results[1][1] >= 0.2  # default_conn_delay 0.3 s
    # every request was counted out: the next one is neither delayed nor refused
    start = time.monotonic()
    r = request(gw.port, "GET", "/delay?ms=1", headers={"Host": "cn-delay.test"})
    assert r.status == 200 and time.monotonic() - start < 0.25


def test_conn_limit_is_node_wide(gw):
    results = concurrently(gw, "/delay?ms=800", 4, host="cn-nodewide.test")
    assert sorted(s for s, _, _ in results) == [200, 200, 503, 503]


def test_conn_a_client_abort_counts_the_request_out(gw, upstream):
    host = {"Host": "cn-abort.test"}
    seen = len(upstream.requests)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        s.sendall(b"GET /delay?ms=1500 HTTP/1.1\r\nHost: cn-abort.test\r\n\r\n")
        deadline = time.monotonic() + 3
        while len(upstream.requests) == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(upstream.requests) > seen, "the held request never reached the upstream"
        r = request(gw.port, "GET", "/delay?ms=1", headers=host)
        assert (r.status, r.json()) == (429, {"error_msg": "busy"})
    finally:
        s.close()  # the client leaves while its request is in flight
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        if request(gw.port, "GET", "/delay?ms=1", headers=host).status == 200:
            return
        time.sleep(0.1)
    pytest.fail("the aborted request was never counted out")


def test_conn_a_client_leaving_during_its_delay_is_counted_out(gw):
    host = {"Host": "cn-leave.test"}
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(request, gw.port, "GET", "/delay?ms=700", headers=host)
        time.sleep(0.15)  # the held request is in
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /delay?ms=1 HTTP/1.1\r\nHost: cn-leave.test\r\n\r\n")
            time.sleep(0.1)  # second in flight: delayed 0.5 s; it leaves meanwhile
        assert held.result(timeout=5).status == 200
    time.sleep(0.6)  # past the abandoned request's delay
    start = time.monotonic()
    r = request(gw.port, "GET", "/delay?ms=1", headers=host)
    assert r.status == 200 and time.monotonic() - start < 0.4  # not delayed: nothing counted


# --- validation ---------------------------------------------------------------------------------


def problems(plugins: str) -> list[str]:
    return config_problems(f"routes:\n  - uri: /a\n    {UP}\n    plugins:\n      {plugins}\n")


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [
        (
            "limit-count: {count: 2}",
            "t.yaml:5:20: routes[0].plugins.limit-count: missing required field 'time_window'",
        ),
        (
            "limit-count: {count: 0, time_window: 60}",
            "t.yaml:5:28: routes[0].plugins.limit-count.count: must be > 0, got 0",
        ),
        (
            "limit-count: {count: 2, time_window: 60, policy: redis}",
            "t.yaml:5:20: routes[0].plugins.limit-count: missing required field 'redis_host'"
            ' (required when policy is "redis")',
        ),
        (
            "limit-count: {count: 2, time_window: 60, policy: redis-cluster}",
            'routes[0].plugins.limit-count.policy: "redis-cluster" is not one of "local", "redis"',
        ),
        (
            "limit-count: {count: 2, time_window: 60, rejected_code: 600}",
            "routes[0].plugins.limit-count.rejected_code: must be <= 599, got 600",
        ),
        (
            "limit-req: {rate: 1, burst: 1}",
            "t.yaml:5:18: routes[0].plugins.limit-req: missing required field 'key'",
        ),
        (
            "limit-req: {rate: 0, burst: 1, key: remote_addr}",
            "t.yaml:5:25: routes[0].plugins.limit-req.rate: must be > 0, got 0",
        ),
        (
            "limit-req: {rate: 1, burst: 1, key: remote_addr, policy: redis}",
            'routes[0].plugins.limit-req.policy: "redis" is not one of "local"',
        ),
        (
            "limit-conn: {conn: 1, burst: 0, key: remote_addr}",
            "routes[0].plugins.limit-conn: missing required field 'default_conn_delay'",
        ),
        (
            "limit-conn: {conn: 1, burst: 0, default_conn_delay: 0.1, key: a, key_type: constant}",
            'routes[0].plugins.limit-conn.key_type: "constant" is not one of "var",'
            ' "var_combination"',
        ),
    ],
)
def test_bad_configurations_are_refused_where_they_are_written(plugins, expected):
    found = problems(plugins)
    assert len(found) == 1 and expected in found[0], found


def test_a_group_configured_two_ways_is_refused_at_the_second():
    """limit-count configurations sharing a `group` share one counter: APISIX refuses them when
    they differ ("group conf mismatched"); the same configuration, defaults filled in, is fine."""

    def routes(second_count: int, second_extra: str) -> str:
        text = "routes:\n"
        for uri, count, extra in (("a", 2, ""), ("b", second_count, second_extra)):
            conf = f"{{count: {count}, time_window: 60, group: shared{extra}}}"
            text += f"  - uri: /{uri}\n    {UP}\n    plugins:\n      limit-count: {conf}\n"
        return text

    assert snapshot(routes(2, ", policy: local")) is not None  # the default, written out
    found = config_problems(routes(5, ""))
    assert len(found) == 1, found
    assert found[0].startswith("t.yaml:9:"), found  # the second route's plugin, where written
    assert "limit-count group 'shared' is configured differently in routes[0]" in found[0]
