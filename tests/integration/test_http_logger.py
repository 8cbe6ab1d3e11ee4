"""http-logger: APISIX-shaped entries, batched and POSTed to a log server (a real receiver).

One gateway serves every case, each route with its own logger configuration and receiver path:
entries arrive with APISIX's fields, batch_max_size is respected, json and new_line framing,
the auth header is sent, bodies are included on request, credentials are masked, and a dead log
server never fails or slows a request.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.test_victoria_logs import Receiver
from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, closed_port


def _route(rid: str, uri: str, up: UpstreamServer, logger: dict[str, Any], **more: Any) -> dict:
    plugins = {"http-logger": logger, **more.pop("plugins", {})}
    return {"id": rid, "uri": uri, "plugins": plugins, "upstream": {"nodes": {up.addr: 1}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http_logger")
    dead = f"http://127.0.0.1:{closed_port()}/log"
    with UpstreamServer("up") as up, Receiver(status=200) as rx:
        routes = [
            _route(
                "json",
                "/json",
                up,
                {
                    "uri": rx.url + "/json",
                    "batch_max_size": 3,
                    "auth_header": "Bearer log-token",
                },
                plugins={"key-auth": {}},
            ),
            _route(
                "lines",
                "/lines",
                up,
                {
                    "uri": rx.url + "/lines",
                    "batch_max_size": 2,
                    "concat_method": "new_line",
                    "include_req_body": True,
                    "include_resp_body": True,
                },
            ),
            _route("single", "/single", up, {"uri": rx.url + "/single", "batch_max_size": 1}),
            _route(
                "custom",
                "/custom",
                up,
                {
                    "uri": rx.url + "/custom",
                    "batch_max_size": 1,
                    "log_format": {"host": "$host", "who": {"addr": "$remote_addr"}, "k": "v"},
                },
            ),
            _route(
                "dead",
                "/dead",
                up,
                {
                    "uri": dead,
                    "name": "dead logger",
                    "batch_max_size": 1,
                    "timeout": 1,
                    "max_retry_count": 1,
                    "retry_delay": 0,
                },
            ),
        ]
        cfg = {
            "routes": routes,
            "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        }
        with GatewayProcess(cfg, tmp, access_log=False) as gw:
            yield gw, up, rx


def _posts(rx: Receiver, path: str, n: int) -> list[dict[str, Any]]:
    rx.wait_for(lambda: len([r for r in rx.requests if r["path"] == path]) >= n)
    return [r for r in rx.requests if r["path"] == path]


def test_json_batches_of_batch_max_size_with_the_auth_header_and_apisix_fields(setup):
    gw, up, rx = setup
    before_ms = time.time() * 1000
    for i in range(6):
        r = request(
            gw.port,
            "GET",
            f"/json?apikey=jack-key&n={i}",
            headers={"X-Request-Id": f"id-{i}", "Authorization": "Basic c2VjcmV0"},
        )
        assert r.status == 200
    posts = _posts(rx, "/json", 2)
    assert len(posts) == 2
    entries = []
    for post in posts:
        assert post["method"] == "POST"
        assert post["headers"]["authorization"] == "Bearer log-token"
        assert post["headers"]["content-type"] == "application/json"
        batch = json.loads(post["body"])
        assert isinstance(batch, list) and len(batch) == 3  # one JSON array per batch
        entries += batch
    entries.sort(key=lambda e: e["request"]["querystring"]["n"])
    first = entries[0]
    req, resp = first["request"], first["response"]
    assert req["method"] == "GET"
    assert req["uri"] == "/json?apikey=[REDACTED]&n=0"
    assert req["url"] == f"http://127.0.0.1:{gw.port}/json?apikey=[REDACTED]&n=0"
    assert req["querystring"] == {"apikey": "[REDACTED]", "n": "0"}
    assert req["headers"]["x-request-id"] == "id-0"
    assert req["headers"]["authorization"] == "[REDACTED]"
    assert req["size"] > 50
    assert resp["status"] == 200 and resp["size"] > 50
    assert resp["headers"]["content-type"] == "application/json"
    assert first["upstream"] == up.addr
    assert (first["route_id"], first["service_id"]) == ("json", "")
    assert first["consumer"] == {"username": "jack"}
    assert first["client_ip"] == "127.0.0.1"
    assert before_ms - 1000 <= first["start_time"] <= time.time() * 1000
    assert 0 <= first["upstream_latency"] <= first["latency"] < 5000
    assert first["apisix_latency"] >= 0
    assert first["server"]["hostname"]
    assert b"jack-key" not in b"".join(p["body"] for p in posts)


def test_new_line_batches_with_request_and_response_bodies(setup):
    gw, _, rx = setup
    for i in range(4):
        r = request(gw.port, "POST", f"/lines?i={i}", body=f"payload-{i}".encode())
        assert r.status == 200
        assert r.json()["body_len"] == len(f"payload-{i}")  # the upstream still got the body
    posts = _posts(rx, "/lines", 2)
    assert len(posts) == 2
    entries = []
    for post in posts:
        lines = post["body"].split(b"\n")
        assert len(lines) == 2 and not post["body"].endswith(b"\n")
        entries += [json.loads(line) for line in lines]
    for entry in entries:
        i = entry["request"]["querystring"]["i"]
        assert entry["request"]["body"] == f"payload-{i}"
        assert json.loads(entry["response"]["body"])["path"] == "/lines"
        assert entry["response"]["status"] == 200


def test_batch_max_size_1_posts_one_object(setup):
    gw, _, rx = setup
    for _ in range(2):
        assert request(gw.port, "GET", "/single").status == 200
    posts = _posts(rx, "/single", 2)
    assert len(posts) == 2
    for post in posts:
        entry = json.loads(post["body"])
        assert isinstance(entry, dict) and entry["route_id"] == "single"
        assert "authorization" not in post["headers"]  # no auth_header configured


def test_log_format_gives_a_custom_entry(setup):
    gw, _, rx = setup
    assert request(gw.port, "GET", "/custom").status == 200
    (post,) = _posts(rx, "/custom", 1)
    assert json.loads(post["body"]) == {
        "host": "127.0.0.1",
        "who": {"addr": "127.0.0.1"},
        "k": "v",
        "route_id": "custom",
        "service_id": None,
    }


def test_a_dead_log_server_never_fails_nor_slows_a_request(setup):
    gw, _, _ = setup
    slowest = 0.0
    for _ in range(10):
        t0 = time.monotonic()
        assert request(gw.port, "GET", "/dead").status == 200
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 0.5
    deadline = time.monotonic() + 5
    while not gw.events("log_push_failed") and time.monotonic() < deadline:
        time.sleep(0.05)
    failed = [e for e in gw.events("log_push_failed") if e["pusher"] == "dead logger"]
    assert failed and "cannot reach 127.0.0.1" in failed[0]["error"]
    assert "plugin_error" not in gw.stderr()


@pytest.mark.parametrize(
    "conf, where",
    [
        ({}, "uri"),
        ({"uri": "ftp://x"}, "uri"),
        ({"uri": "http://x", "concat_method": "csv"}, "concat_method"),
        ({"uri": "http://x", "batch_max_size": 0}, "batch_max_size"),
        ({"uri": "http://x", "include_resp_body_expr": [["status", "=~", 1]]}, "include_resp"),
        ({"uri": "http://x", "unknown": 1}, "unknown"),
    ],
)
def test_bad_configurations_are_refused(conf, where):
    from ando.config.diagnostics import ConfigError
    from ando.config.source import snapshot_from_text

    text = json.dumps({"routes": [{"uri": "/", "plugins": {"http-logger": conf}}]})
    with pytest.raises(ConfigError) as e:
        snapshot_from_text(text, "t.yaml", environ={})
    assert any(where in d.format() for d in e.value.diagnostics), [
        d.format() for d in e.value.diagnostics
    ]


def test_entries_held_at_exit_are_sent(tmp_path):
    with UpstreamServer("up") as up, Receiver(status=200) as rx:
        logger = {"uri": rx.url + "/late", "inactive_timeout": 60, "buffer_duration": 60}
        gw = GatewayProcess(
            {"routes": [_route("late", "/late", up, logger)]}, tmp_path, access_log=False
        )
        with gw:
            for _ in range(3):
                assert request(gw.port, "GET", "/late").status == 200
            time.sleep(0.2)
            assert rx.requests == []  # nothing is due for a minute
        assert gw.proc is not None and gw.proc.returncode == 0
        (post,) = rx.requests  # sent by the worker's drain, as one batch
        assert [e["route_id"] for e in json.loads(post["body"])] == ["late"] * 3
