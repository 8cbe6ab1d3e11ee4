"""traffic-split and api-breaker through a running gateway, as a client and real upstreams see them.

traffic-split: which upstream answered is read from the echo upstream's `server` name. The round
robin is per worker, so the gateway here has one worker and the 3:1 split is exact.

api-breaker: APISIX keys the breaker by host and uri, so the failing upstream must fail on the
same uri it later recovers on: a small real upstream here answers the status named by `?code=`.
The first break lasts 2 s (APISIX's 2^1); the waits poll, bounded, instead of sleeping blindly.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.client import Response, request
from tests.support.config import config_problems, snapshot
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, closed_port, echoed_headers

# --- a real upstream whose status the request names ---------------------------------------------


class _StatusHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        code = int(query.get("code", ["200"])[0])
        body = f"code {code}".encode()
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class StatusServer:
    """Answers `GET /any/path?code=NNN` with status NNN (200 by default); counts the hits."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
        self.server.daemon_threads = True
        self.server.hits = 0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def hits(self) -> int:
        return self.server.hits  # type: ignore[attr-defined,no-any-return]

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, UpstreamServer]]:
    with (
        UpstreamServer("main") as main,
        UpstreamServer("blue") as blue,
        UpstreamServer("green") as green,
    ):
        yield {"main": main, "blue": blue, "green": green}


@pytest.fixture(scope="module")
def status_server() -> Iterator[StatusServer]:
    with StatusServer() as s:
        yield s


def _split(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"traffic-split": {"rules": rules}}


def _breaker(**conf: Any) -> dict[str, Any]:
    return {"api-breaker": {"break_response_code": 502, **conf}}


@pytest.fixture(scope="module")
def gw(
    servers: dict[str, UpstreamServer],
    status_server: StatusServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    main = {"nodes": {servers["main"].addr: 1}}
    green_inline = {"nodes": {servers["green"].addr: 1}}
    status_up = {"nodes": {status_server.addr: 1}}
    config = {
        "upstreams": [
            {"id": "blue", "nodes": {servers["blue"].addr: 1}},
            {"id": 7, "nodes": {servers["green"].addr: 1}},
        ],
        "services": [
            {
                "id": "svc",
                "upstream": main,
                "plugins": _split([{"weighted_upstreams": [{"upstream_id": "blue"}]}]),
            }
        ],
        "routes": [
            {
                "id": "weights",
                "uri": "/ts/weights",
                "upstream": main,
                "plugins": _split(
                    [
                        {
                            "weighted_upstreams": [
                                {"upstream_id": "blue", "weight": 3},
                                {"upstream": green_inline, "weight": 1},
                            ]
                        }
                    ]
                ),
            },
            {
                "id": "match",
                "uri": "/ts/match",
                "upstream": main,
                "plugins": _split(
                    [
                        {
                            "match": [
                                {"vars": [["http_release", "==", "canary"]]},
                                {"vars": [["arg_v", "==", "2"], ["arg_beta", "==", "yes"]]},
                            ],
                            "weighted_upstreams": [{"upstream": green_inline}],
                        },
                        {
                            "match": [{"vars": [["cookie_team", "in", ["blue", "navy"]]]}],
                            "weighted_upstreams": [{"upstream_id": "blue"}],
                        },
                    ]
                ),
            },
            {
                "id": "own",
                "uri": "/ts/own",
                "upstream": main,
                "plugins": _split(
                    [{"weighted_upstreams": [{"upstream_id": "blue", "weight": 1}, {"weight": 1}]}]
                ),
            },
            {
                "id": "by-int-id",
                "uri": "/ts/int-id",
                "upstream": main,
                "plugins": _split([{"weighted_upstreams": [{"upstream_id": 7}]}]),
            },
            {
                "id": "inline-list",
                "uri": "/ts/inline-list",
                "upstream": main,
                "plugins": _split(
                    [
                        {
                            "weighted_upstreams": [
                                {
                                    "upstream": {
                                        "nodes": [
                                            {
                                                "host": "127.0.0.1",
                                                "port": servers["green"].port,
                                                "weight": 1,
                                            }
                                        ],
                                        "pass_host": "rewrite",
                                        "upstream_host": "green.internal",
                                    }
                                }
                            ]
                        }
                    ]
                ),
            },
            {
                "id": "zero",
                "uri": "/ts/zero",
                "upstream": main,
                "plugins": _split([{"weighted_upstreams": [{"upstream_id": "blue", "weight": 0}]}]),
            },
            {"id": "svc-route", "uri": "/ts/svc", "service_id": "svc"},
            {
                "id": "breaker",
                "uri": "/ab/*",
                "upstream": status_up,
                "plugins": _breaker(
                    break_response_body="breaker open",
                    break_response_headers=[
                        {"key": "X-Breaker", "value": "open for $remote_addr"},
                        {"key": "X-Default", "value": "${http_x_missing ?? none}"},
                    ],
                ),
            },
            {
                "id": "breaker-plain",
                "uri": "/plain",
                "upstream": status_up,
                "plugins": {
                    "api-breaker": {
                        "break_response_code": 503,
                        "break_response_headers": [{"key": "X-Ignored", "value": "x"}],
                        "unhealthy": {"http_statuses": [500, 503], "failures": 1},
                    }
                },
            },
            {
                "id": "breaker-dead",
                "uri": "/dead",
                "upstream": {"nodes": {f"127.0.0.1:{closed_port()}": 1}},
                "plugins": _breaker(
                    break_response_body="dead", unhealthy={"http_statuses": [502], "failures": 2}
                ),
            },
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("traffic"), access_log=False) as g:
        yield g


def server(r: Response) -> str:
    assert r.status == 200, (r.status, r.body)
    return str(r.json()["server"])


# --- traffic-split ------------------------------------------------------------------------------


def test_weights_three_to_one_are_exact_and_interleaved(gw):
    got = [server(request(gw.port, path="/ts/weights")) for _ in range(8)]
    assert Counter(got) == {"blue": 6, "green": 2}
    # nginx's smooth weighted round robin: A A B A, twice
    assert got == ["blue", "blue", "green", "blue"] * 2


def test_match_by_header_or_by_args_selects_another_upstream(gw):
    assert server(request(gw.port, path="/ts/match")) == "main"
    assert server(request(gw.port, path="/ts/match", headers={"release": "canary"})) == "green"
    assert server(request(gw.port, path="/ts/match", headers={"release": "stable"})) == "main"
    # every expression of one match entry must hold
    assert server(request(gw.port, path="/ts/match?v=2&beta=yes")) == "green"
    assert server(request(gw.port, path="/ts/match?v=2")) == "main"
    # the first rule that matches decides; the second rule is tried when the first does not
    assert server(request(gw.port, path="/ts/match", headers={"Cookie": "team=navy"})) == "blue"
    headers = {"Cookie": "team=navy", "release": "canary"}
    assert server(request(gw.port, path="/ts/match", headers=headers)) == "green"


def test_an_entry_without_upstream_is_the_routes_own(gw):
    got = Counter(server(request(gw.port, path="/ts/own")) for _ in range(4))
    assert got == {"blue": 2, "main": 2}


def test_upstream_id_as_a_number_and_from_a_service(gw):
    assert server(request(gw.port, path="/ts/int-id")) == "green"
    assert server(request(gw.port, path="/ts/svc")) == "blue"


def test_inline_upstream_with_node_list_and_pass_host_rewrite(gw, servers):
    r = request(gw.port, path="/ts/inline-list?q=1")
    assert server(r) == "green"
    assert echoed_headers(r)["host"] == ["green.internal"]
    assert r.json()["url"] == "/ts/inline-list?q=1"


def test_zero_weights_leave_the_routes_own_upstream(gw):
    assert {server(request(gw.port, path="/ts/zero")) for _ in range(3)} == {"main"}


def test_validate_refuses_an_upstream_id_that_names_nothing():
    text = (
        _SPLIT
        + """\
          - weighted_upstreams: [{upstream_id: u}, {upstream_id: nope}]
"""
    )
    assert _problems(text) == [
        "t.yaml:8:66: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[1].upstream_id: "
        "'nope' does not exist in upstreams (defined: u)"
    ]


# --- api-breaker --------------------------------------------------------------------------------


def _wait_until_closed(port: int, path: str, broken: int, limit: float) -> float:
    """Poll (every 50 ms, at most `limit` s) until `path` stops answering `broken`; return when
    it did, as time.monotonic()."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        r = request(port, path=path)
        if r.status != broken:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{path} still answered {broken} after {limit} s")


def test_breaker_trips_answers_recovers_and_resets(gw, status_server):
    path = "/ab/x"
    # two failures: still proxied
    for _ in range(2):
        assert request(gw.port, path=path + "?code=500").status == 500
    # a status that is neither unhealthy nor healthy counts for nothing
    assert request(gw.port, path=path + "?code=404").status == 404
    assert request(gw.port, path=path + "?code=500").status == 500
    tripped = time.monotonic()
    hits = status_server.hits
    # open: the configured answer, headers resolved, the upstream not asked
    r = request(gw.port, path=path + "?code=200")
    assert (r.status, r.body) == (502, b"breaker open")
    assert r.header("X-Breaker") == "open for 127.0.0.1"
    assert r.header("X-Default") == "none"
    assert status_server.hits == hits
    # another uri under the same route has its own state (APISIX keys by host and uri)
    assert request(gw.port, path="/ab/y?code=200").status == 200
    # the first break lasts 2 s
    closed = _wait_until_closed(gw.port, path + "?code=200", 502, 4.0)
    assert 1.5 <= closed - tripped <= 3.5
    # that request went through (healthy 1 of 3); two more healthy ones forget the failures
    for _ in range(2):
        assert request(gw.port, path=path + "?code=200").status == 200
    # so three new failures trip it for 2 s again (not the 4 s of a second trip)
    for _ in range(3):
        assert request(gw.port, path=path + "?code=500").status == 500
    tripped = time.monotonic()
    assert request(gw.port, path=path + "?code=200").status == 502
    closed = _wait_until_closed(gw.port, path + "?code=200", 502, 4.0)
    assert 1.5 <= closed - tripped <= 3.5


def test_breaker_without_a_body_answers_only_the_status(gw):
    assert request(gw.port, path="/plain?code=503").status == 503
    r = request(gw.port, path="/plain?code=200")
    assert r.status == 503  # nginx's page for the bare status, as APISIX answers it
    assert r.header("Content-Type") == "text/html" and b"503 Service Temporarily" in r.body
    # break_response_headers apply only with break_response_body (APISIX)
    assert r.header("X-Ignored") is None


def test_a_node_that_refuses_connections_counts_as_its_502(gw):
    for _ in range(2):
        r = request(gw.port, path="/dead")
        assert r.status == 502 and r.body != b"dead"
    r = request(gw.port, path="/dead")
    assert (r.status, r.body) == (502, b"dead")


def test_every_worker_sees_the_open_breaker(status_server, tmp_path: Path):
    config = {
        "routes": [
            {
                "id": "b",
                "uri": "/mw",
                "upstream": {"nodes": {status_server.addr: 1}},
                "plugins": _breaker(break_response_body="open", unhealthy={"failures": 2}),
            }
        ]
    }
    with GatewayProcess(config, tmp_path, workers=3, access_log=False) as g:
        for _ in range(2):
            assert request(g.port, path="/mw?code=500").status == 500
        hits = status_server.hits
        # new connections land on any of the workers: every one answers from the shared state
        got = {request(g.port, path="/mw?code=200").body for _ in range(12)}
        assert got == {b"open"}
        assert status_server.hits == hits


# --- validation -------------------------------------------------------------------------------


# Appended after each test's text, so line numbers above it stay put.
_UPSTREAMS = """\
upstreams:
  - {id: u, nodes: {"127.0.0.1:1981": 1}}
"""


def _problems(text: str) -> list[str]:
    return config_problems(text + _UPSTREAMS)


_ROUTE = """\
routes:
  - id: r
    uri: /r
    upstream: {nodes: {"127.0.0.1:1980": 1}}
    plugins:
"""

# A route with traffic-split, its `rules:` to follow (the first on line 8).
_SPLIT = _ROUTE + "      traffic-split:\n        rules:\n"


def test_validate_points_at_a_bad_vars_expression():
    text = (
        _SPLIT
        + """\
          - match:
              - vars: [["arg_x", "=", "1"]]
            weighted_upstreams: [{upstream_id: u}]
"""
    )
    assert _problems(text) == [
        "t.yaml:9:34: routes[0].plugins.traffic-split.rules[0].match[0].vars[0][1]: "
        "unknown operator '='; did you mean '=='?"
    ]


def test_validate_checks_inline_upstreams_like_upstream_resources():
    text = (
        _SPLIT
        + """\
          - weighted_upstreams:
              - upstream: {nodes: {"127.0.0.1:80": 1}, pass_host: rewrite}
              - upstream: {nodes: {"127.0.0.1:80": 1}, checks: {}}
              - upstream: {nodes: {"127.0.0.1:80": 1}, type: chash}
              - {weight: -1}
"""
    )
    assert _problems(text) == [
        "t.yaml:9:27: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[0].upstream: "
        "missing required field 'upstream_host' (required when pass_host is \"rewrite\")",
        # accepted and ignored, as APISIX does, but like APISIX's it needs an active part
        "t.yaml:10:64: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[1].upstream"
        ".checks: missing required field 'active'",
        "t.yaml:11:27: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[2].upstream: "
        "missing required field 'key' (required when type is \"chash\")",
        "t.yaml:12:26: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[3].weight: "
        "must be >= 0, got -1",
    ]
    text = (
        _SPLIT
        + """\
          - weighted_upstreams:
              - upstream: {nodes: {"10.0.0.300:80": 1}}
              - upstream: {nodes: [{host: "a..b", weight: 1}]}
"""
    )
    assert _problems(text) == [
        "t.yaml:9:53: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[0].upstream"
        ".nodes[\"10.0.0.300:80\"]: '10.0.0.300' is not a valid host name or IP address",
        "t.yaml:10:43: routes[0].plugins.traffic-split.rules[0].weighted_upstreams[1].upstream"
        ".nodes[0].host: 'a..b' is not a valid host name or IP address",
    ]


def test_validate_applies_apisix_defaults():
    text = (
        _SPLIT
        + """\
          - weighted_upstreams: [{upstream: {nodes: {"127.0.0.1:80": 1}}}]
          - match: [{vars: [["arg_a", "==", "1"]]}]
      api-breaker: {break_response_code: 502}
"""
    )
    plugins = snapshot(text).routes[0].plugins
    rules = plugins["traffic-split"]["rules"]
    entry = rules[0]["weighted_upstreams"][0]
    assert entry["weight"] == 1
    up = entry["upstream"]
    assert (up["type"], up["pass_host"], up["scheme"], up["hash_on"]) == (
        "roundrobin",
        "pass",
        "http",
        "vars",
    )
    assert dict(up["timeout"]) == {"connect": 15, "send": 15, "read": 15}
    assert [dict(e) for e in rules[1]["weighted_upstreams"]] == [{"weight": 1}]
    breaker = plugins["api-breaker"]
    assert breaker["max_breaker_sec"] == 300
    assert dict(breaker["unhealthy"]) == {"http_statuses": (500,), "failures": 3}
    assert dict(breaker["healthy"]) == {"http_statuses": (200,), "successes": 3}


def test_validate_refuses_api_breaker_without_its_code_or_with_bad_statuses():
    text = (
        _ROUTE
        + """\
      api-breaker:
        unhealthy: {http_statuses: [404]}
        healthy: {http_statuses: [200, 200]}
        max_breaker_sec: 2
"""
    )
    assert _problems(text) == [
        "t.yaml:7:9: routes[0].plugins.api-breaker: missing required field 'break_response_code'",
        "t.yaml:7:37: routes[0].plugins.api-breaker.unhealthy.http_statuses[0]: "
        "must be >= 500, got 404",
        "t.yaml:8:34: routes[0].plugins.api-breaker.healthy.http_statuses: has duplicate items",
        "t.yaml:9:26: routes[0].plugins.api-breaker.max_breaker_sec: must be >= 3, got 2",
    ]
