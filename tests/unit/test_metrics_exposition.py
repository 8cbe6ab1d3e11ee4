"""Worker totals and the master's page, without sockets: label values that need escaping survive
a round trip through prometheus-client's parser, totals of an exited worker stay in the node's,
the series cap, and the matched host of a route with several hosts."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ando.observability.exposition import NodeFacts, NodeTotals, render
from ando.observability.metrics import RouteMetrics, WorkerMetrics, request_length


def parse(page: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(page.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def report(m: WorkerMetrics, requests: int = 0) -> dict:
    return {"metrics": m.dump(), "requests": requests, "accepted": 1, "handled": 1}


def test_label_values_that_need_escaping_round_trip():
    m = WorkerMetrics()
    key = RouteMetrics('r"1\\x\ny', "s", ("/a",), None).key("/a", "h")
    m.record(key, 200, 'jo"e', "10.0.0.1", 0.0015, 0.001, 10, 20)
    totals = NodeTotals()
    totals.update(1, report(m))
    samples = parse(render(totals, NodeFacts()))
    status = [k for k in samples if k[0] == "ando_http_status_total"]
    assert len(status) == 1
    labels = dict(status[0][1])
    assert labels["route"] == 'r"1\\x\ny' and labels["consumer"] == 'jo"e'


def test_an_exited_workers_totals_stay_and_live_ones_are_added():
    a, b = WorkerMetrics(), WorkerMetrics()
    key = RouteMetrics("r", "", ("/a",), None).key("/a", "h")
    for _ in range(3):
        a.record(key, 200, "", "n", 0.01, None, 1, 1)
    for _ in range(4):
        b.record(key, 200, "", "n", 0.01, None, 1, 1)
    totals = NodeTotals()
    totals.update(1, report(a, 3))
    totals.update(2, report(b, 4))
    totals.retire(1)
    b.record(key, 200, "", "n", 0.01, None, 1, 1)
    totals.update(2, report(b, 5))
    samples = parse(render(totals, NodeFacts()))
    got = [v for k, v in samples.items() if k[0] == "ando_http_status_total"]
    assert got == [8]
    assert samples[("ando_http_requests_total", frozenset())] == 8
    # Without an upstream there is no upstream latency, and the gateway's share is all of it.
    hist = {k: v for k, v in samples.items() if k[0] == "ando_http_latency_count"}
    kinds = {dict(k[1])["type"]: v for k, v in hist.items()}
    assert kinds == {"request": 8, "ando": 8}


def test_the_series_cap_counts_what_it_drops():
    m = WorkerMetrics(max_series=2)
    key = RouteMetrics("r", "", ("/a",), None).key("/a", "h")
    for code in (200, 201, 202, 203):
        m.record(key, code, "", "n", 0.01, None, 1, 1)
    m.record(key, 200, "", "n", 0.01, None, 1, 1)  # a known label set is still counted
    dump = m.dump()
    assert sorted((row[0], row[-1]) for row in dump["status"]) == [(200, 2), (201, 1)]
    assert dump["dropped"] == 2


def test_matched_host_is_the_pattern_that_matched():
    rm = RouteMetrics("r", "", ("/a",), ("A.example.com", "*.wild.example.com"))
    assert rm.key("/a", "a.example.com")[2] == "a.example.com"
    assert rm.key("/a", "x.y.wild.example.com")[2] == "*.wild.example.com"
    one = RouteMetrics("r", "", ("/a", "/b/*"), ("only.example.com",))
    assert one.key("/b/*", "only.example.com") == ("r", "/b/*", "only.example.com", "")


def test_request_length_is_the_head_as_sent_plus_the_body():
    head = b"POST /p?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n"
    headers = [(b"Host", b"t"), (b"Content-Length", b"5")]
    assert request_length("POST", b"/p?q=1", headers, 5) == len(head) + 5
