"""The JSON access log: one line per request, with the fields an operator reads."""

from __future__ import annotations

import http.client
import json
import re
import time

from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_lines(gw: GatewayProcess, n: int) -> list[dict]:
    deadline = time.monotonic() + 5
    lines = gw.access_log_lines()
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = gw.access_log_lines()
    return lines


def test_one_line_per_request_with_every_field(tmp_path):
    with UpstreamServer("a") as up:
        cfg = {
            "services": [{"id": "s1", "upstream": {"nodes": {up.addr: 1}}}],
            "routes": [{"id": "r1", "uri": "/api/*", "service_id": "s1"}],
        }
        with GatewayProcess(cfg, tmp_path) as gw:
            assert (
                get(gw.port, "/api/x?q=1", {"X-Request-Id": "abc-123", "Host": "h.example"})[0]
                == 200
            )
            assert get(gw.port, "/missing")[0] == 404
            first, second = wait_lines(gw, 2)[:2]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["request_id"] == "abc-123"
    assert first["client_addr"] == "127.0.0.1"
    assert (first["method"], first["host"], first["path"]) == ("GET", "h.example", "/api/x")
    assert first["status"] == 200 and first["upstream_status"] == 200
    assert first["upstream_addr"] == up.addr
    assert first["bytes_sent"] > 100
    assert 0 <= first["upstream_latency"] <= first["latency"] < 5
    assert (first["route_id"], first["service_id"]) == ("r1", "s1")
    assert (
        second["status"] == 404 and second["route_id"] is None and second["upstream_addr"] is None
    )


def test_access_log_to_a_file_or_off(tmp_path):
    log_file = tmp_path / "access.log"
    with UpstreamServer("a") as up:
        routes = [{"id": "r1", "uri": "/*", "upstream": {"nodes": {up.addr: 1}}}]
        cfg = {"ando": {"observability": {"access_log": {"path": str(log_file)}}}, "routes": routes}
        with GatewayProcess(cfg, tmp_path) as gw:
            for _ in range(3):
                assert get(gw.port, "/x")[0] == 200
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (
                not log_file.exists() or len(log_file.read_text().splitlines()) < 3
            ):
                time.sleep(0.05)
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert [line["path"] for line in lines] == ["/x", "/x", "/x"]
        off = {"ando": {"observability": {"access_log": {"enabled": False}}}, "routes": routes}
        (tmp_path / "off").mkdir()
        with GatewayProcess(off, tmp_path / "off", access_log=False) as gw:
            assert get(gw.port, "/x")[0] == 200
            time.sleep(0.2)
            assert gw.access_log_lines() == []


def test_a_request_refused_mid_body_is_logged_with_the_status_the_client_got(tmp_path):
    from tests.support.gateway import raw_request

    with UpstreamServer("a") as up:
        cfg = {
            "ando": {"limits": {"max_body_size": 100}},
            "routes": [{"id": "r1", "uri": "/*", "upstream": {"nodes": {up.addr: 1}}}],
        }
        with GatewayProcess(cfg, tmp_path) as gw:
            body = b"".join(b"32\r\n" + b"x" * 50 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
            head = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            answer = raw_request(gw.port, head + body)
            assert answer.startswith(b"HTTP/1.1 413 ")
            lines = wait_lines(gw, 1)
    assert [(line["path"], line["status"]) for line in lines] == [("/upload", 413)]
