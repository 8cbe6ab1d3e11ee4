"""The Prometheus endpoint of the real `ando run`, scraped and parsed with prometheus-client's own
parser, as a Prometheus server would read it: exact counts across two workers (and across a
worker's replacement), APISIX's labels, histograms, bytes in and out to the byte, bounded label
cardinality, node-wide series (connections, reloads, node info, process metrics) and refusals."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import request
from tests.support.gateway import GatewayProcess, raw_request, wait_for
from tests.support.upstream import UpstreamServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: GatewayProcess, path: str = "/metrics") -> Samples:
    r = request(gw.metrics_port, "GET", path, timeout=10)
    assert r.status == 200, r.body[:300]
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    out: Samples = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset, float]:
    want = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and want <= k[1]}


def get(gw: GatewayProcess, path: str, host: str = "t", **headers: str) -> int:
    """One request on its own connection, so SO_REUSEPORT spreads them over the workers."""
    return request(gw.port, "GET", path, headers={"Host": host, **headers}).status


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer):
    up = {"nodes": {upstream.addr: 1}}
    config = {
        "services": [{"id": "svc", "name": "shop", "plugins": {"prometheus": {}}, "upstream": up}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k-jack"}}}],
        "routes": [
            {"id": "plain", "uri": "/plain", "plugins": {"prometheus": {}}, "upstream": up},
            {"id": "many", "uris": ["/u1", "/u2/*"], "plugins": {"prometheus": {}}, "upstream": up},
            {
                "id": "hosted",
                "uri": "/h",
                "hosts": ["a.example.com", "*.wild.example.com"],
                "plugins": {"prometheus": {}},
                "upstream": up,
            },
            {"id": "via-svc", "name": "checkout", "uri": "/svc", "service_id": "svc"},
            {
                "id": "named",
                "name": "the-named-route",
                "uri": "/named",
                "plugins": {"prometheus": {"prefer_name": True}},
                "service_id": "svc",
            },
            {
                "id": "auth",
                "uri": "/auth",
                "plugins": {"prometheus": {}, "key-auth": {}},
                "upstream": up,
            },
            {"id": "status", "uri": "/status/*", "plugins": {"prometheus": {}}, "upstream": up},
            {"id": "quiet", "uri": "/quiet", "upstream": up},
            {
                "id": "off",
                "uri": "/off",
                "plugins": {"prometheus": {"_meta": {"disable": True}}},
                "upstream": up,
            },
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("metrics"), workers=2) as g:
        yield g


def test_a_known_mix_is_counted_exactly_once_across_two_workers(gw):
    before = scrape(gw)
    mix = [("/plain", 200, 23), ("/status/404", 404, 7), ("/status/503", 503, 5)]
    for path, code, times in mix:
        for _ in range(times):
            assert get(gw, path) == code
    for _ in range(9):
        assert get(gw, "/quiet") == 200  # no prometheus plugin: not in the route series
        assert get(gw, "/off") == 200  # the plugin disabled with _meta
    after = scrape(gw)
    for path, code, times in mix:
        route = "plain" if path == "/plain" else "status"
        uri = "/plain" if path == "/plain" else "/status/*"
        labels = dict(code=str(code), route=route, matched_uri=uri, matched_host="",
                      service="", consumer="", node="127.0.0.1")  # fmt: skip
        delta = (value(after, "ando_http_status_total", **labels) or 0) - (
            value(before, "ando_http_status_total", **labels) or 0
        )
        assert delta == times, (path, delta)
    assert not matching(after, "ando_http_status_total", route="quiet")
    assert not matching(after, "ando_http_status_total", route="off")
    # Node-wide: every request, counted or not by a route's plugin.
    total = value(after, "ando_http_requests_total") - value(before, "ando_http_requests_total")
    assert total == 23 + 7 + 5 + 18
    # Both workers answered: each has process metrics of its own.
    workers = matching(after, "process_resident_memory_bytes")
    assert {dict(k)["process"] for k in workers} == {"master", "worker-0", "worker-1"}


def test_latency_histograms_are_cumulative_and_agree_with_the_status_count(gw):
    for _ in range(6):
        assert get(gw, "/u1") == 200
    s = scrape(gw)
    codes = matching(s, "ando_http_status_total", route="many")
    n = sum(codes.values())
    assert n >= 6
    base = dict(route="many", service="", consumer="", node="127.0.0.1")
    for kind in ("request", "upstream", "ando"):
        assert value(s, "ando_http_latency_count", type=kind, **base) == n, kind
        buckets = sorted(
            (float(dict(k)["le"]), v)
            for k, v in matching(s, "ando_http_latency_bucket", type=kind, **base).items()
        )
        assert buckets[-1] == (float("inf"), n)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{kind} buckets are not cumulative: {counts}"
        assert [le for le, _ in buckets][:3] == [1.0, 2.0, 5.0]  # APISIX's buckets, in ms
    total = value(s, "ando_http_latency_sum", type="request", **base)
    upstream = value(s, "ando_http_latency_sum", type="upstream", **base)
    ando = value(s, "ando_http_latency_sum", type="ando", **base)
    assert total > 0 and upstream > 0 and ando > 0
    assert abs(total - (upstream + ando)) < 0.01 * total + 0.01


def test_matched_uri_and_matched_host_are_the_routes_patterns_never_the_request(gw):
    assert get(gw, "/u2/anything/at/all") == 200
    assert get(gw, "/h", host="a.example.com") == 200
    assert get(gw, "/h", host="deep.wild.example.com") == 200
    s = scrape(gw)
    assert matching(s, "ando_http_status_total", route="many", matched_uri="/u2/*")
    assert not matching(s, "ando_http_status_total", matched_uri="/u2/anything/at/all")
    hosts = {dict(k)["matched_host"] for k in matching(s, "ando_http_status_total", route="hosted")}
    assert hosts == {"a.example.com", "*.wild.example.com"}


def test_service_consumer_and_prefer_name_labels(gw):
    assert get(gw, "/svc") == 200
    assert get(gw, "/named") == 200
    assert get(gw, "/auth", apikey="k-jack") == 200
    assert get(gw, "/auth") == 401
    s = scrape(gw)
    # The service's plugin counts its routes; labels are ids unless prefer_name says names.
    assert matching(s, "ando_http_status_total", route="via-svc", service="svc", code="200")
    assert matching(s, "ando_http_status_total", route="the-named-route", service="shop")
    assert matching(s, "ando_http_status_total", route="auth", consumer="jack", code="200")
    refused = matching(s, "ando_http_status_total", route="auth", code="401")
    assert refused and all(dict(k)["consumer"] == "" and dict(k)["node"] == "" for k in refused)


def test_bandwidth_counts_every_byte_in_and_out(gw):
    before = scrape(gw)
    sent = received = 0
    for i in range(5):
        body = b"x" * (100 * i)
        req = (
            b"POST /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        ) + body
        answer = raw_request(gw.port, req)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
        sent += len(req)
        received += len(answer)
    after = scrape(gw)
    base = dict(route="plain", service="", consumer="", node="127.0.0.1")

    def delta(kind: str) -> float:
        now = value(after, "ando_bandwidth_total", type=kind, **base)
        return now - (value(before, "ando_bandwidth_total", type=kind, **base) or 0)

    assert delta("ingress") == sent
    assert delta("egress") == received


def test_connections_by_state(gw):
    idle = socket.create_connection(("127.0.0.1", gw.port))
    try:
        idle.sendall(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # now an idle keep-alive
        s = scrape(gw)
        conns = {
            dict(k)["state"]: v for k, v in matching(s, "ando_http_current_connections").items()
        }
        assert conns["active"] >= 1 and conns["waiting"] >= 1
        assert conns["accepted"] == conns["handled"] >= conns["active"]
    finally:
        idle.close()


def test_node_info_reloads_and_the_apisix_path(gw):
    s = scrape(gw, "/apisix/prometheus/metrics")
    info = matching(s, "ando_node_info")
    assert len(info) == 1 and dict(next(iter(info)))["hostname"] == socket.gethostname()
    assert value(s, "ando_config_last_reload_successful") == 1
    assert value(s, "ando_config_reload_total", result="failure") == 0


def test_refusals(gw):
    assert request(gw.metrics_port, "GET", "/").status == 404
    assert request(gw.metrics_port, "GET", "/metricsx").status == 404
    post = request(gw.metrics_port, "POST", "/metrics", body=b"")
    assert post.status == 405 and post.header("Allow") == "GET, HEAD"
    assert (
        raw_request(gw.metrics_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n")[:12]
        == b"HTTP/1.1 400"
    )


def test_a_replaced_worker_keeps_its_counts_in_the_node_totals(tmp_path: Path, up: dict[str, Any]):
    config = {"routes": [{"id": "r", "uri": "/r", "plugins": {"prometheus": {}}, "upstream": up}]}
    with GatewayProcess(config, tmp_path, workers=2) as gw:
        for _ in range(40):
            assert get(gw, "/r") == 200
        s = scrape(gw)
        labels = dict(code="200", route="r", matched_uri="/r", matched_host="", service="",
                      consumer="", node="127.0.0.1")  # fmt: skip
        assert value(s, "ando_http_status_total", **labels) == 40
        for _ in range(20):  # counted by the workers, not yet reported to the master
            assert get(gw, "/r") == 200
        worker = gw.events("worker_started")[0]["pid"]
        os.kill(worker, signal.SIGTERM)  # it drains, reports its totals, exits; one replaces it
        assert gw.wait_events("worker_restarted", lambda e: e["replaces"] == worker, 15)
        wait_for(lambda: len(matching(scrape(gw), "process_start_time_seconds")) == 3, "respawn")
        for _ in range(10):
            assert get(gw, "/r") == 200
        assert value(scrape(gw), "ando_http_status_total", **labels) == 70


def test_reload_counters(tmp_path: Path, up: dict[str, Any]):
    config = {"routes": [{"id": "r", "uri": "/r", "plugins": {"prometheus": {}}, "upstream": up}]}
    with GatewayProcess(config, tmp_path, workers=1) as gw:
        config["routes"].append({"id": "r2", "uri": "/r2", "upstream": up})
        gw.write_config(config)
        wait_for(
            lambda: value(scrape(gw), "ando_config_reload_total", result="success") == 1, "reload"
        )
        gw.config_path.write_text("routes: [\n")
        wait_for(
            lambda: value(scrape(gw), "ando_config_reload_total", result="failure") == 1, "refusal"
        )
        assert value(scrape(gw), "ando_config_last_reload_successful") == 0
        assert get(gw, "/r2") == 200  # the last good config keeps serving


def test_unmatched_requests_collapse_to_one_series_and_the_series_are_capped(
    tmp_path: Path, up: dict[str, Any]
):
    config = {
        "ando": {"observability": {"prometheus": {"max_series": 3}}},
        "global_rules": [{"id": "g", "plugins": {"prometheus": {}}}],
        "routes": [{"id": "r", "uri": "/status/*", "upstream": up}],
    }
    with GatewayProcess(config, tmp_path, workers=1) as gw:
        for i in range(20):
            assert get(gw, f"/nothing/here/{i}", host=f"h{i}.example.com") == 404
        s = scrape(gw)
        unmatched = matching(s, "ando_http_status_total", code="404")
        assert list(unmatched.values()) == [20]
        assert dict(next(iter(unmatched))) == dict(code="404", route="", matched_uri="",
                                                   matched_host="", service="", consumer="",
                                                   node="")  # fmt: skip
        for code in (200, 201, 202, 203, 204):
            assert get(gw, f"/status/{code}") == code
        s = scrape(gw)
        assert len(matching(s, "ando_http_status_total")) == 3
        assert value(s, "ando_metrics_series_dropped_total") == 3
