"""The JSON access log: one line per request, with the fields an operator reads."""

from __future__ import annotations

import http.client
import json
import re
import socket
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


# --- route name, redaction, TLS facts, SIGUSR1 reopen ---------------------------------------


def _file_lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_file(path, want, timeout: float = 5.0) -> list[dict]:
    """Lines of `path` once `want(lines)` holds (bounded wait)."""
    deadline = time.monotonic() + timeout
    lines = _file_lines(path)
    while not want(lines) and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = _file_lines(path)
    return lines


def _https_get(port: int, path: str, server_name: str) -> int:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Connected by address, naming the server in SNI as a client that resolved it would.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
        )
        head = tls.recv(65536)
        return int(head.split(b" ", 2)[1])


def test_route_name_redaction_tls_and_reopen_on_sigusr1(tmp_path):
    import os
    import signal

    from tests.support.certs import make_cert
    from tests.support.upstream import free_port

    log_file = tmp_path / "access.log"
    cert, key = make_cert("tls.example.com")
    tls_port = free_port()
    with UpstreamServer("a") as up:
        gw = GatewayProcess({}, tmp_path, workers=2)
        nodes = {up.addr: 1}
        gw.write_config(
            {
                "ando": {
                    "listen": [
                        f"127.0.0.1:{gw.port}",
                        {"addr": f"127.0.0.1:{tls_port}", "tls": True},
                    ],
                    "observability": {
                        "access_log": {"path": str(log_file), "redact": ["sessid", "X-Session"]}
                    },
                },
                "ssls": [{"id": "t", "cert": cert, "key": key, "snis": ["tls.example.com"]}],
                "routes": [
                    {"id": "r1", "name": "api", "uri": "/api/*", "upstream": {"nodes": nodes}},
                    {
                        "id": "r2",
                        "name": "keyed",
                        "uri": "/keyed",
                        "plugins": {"key-auth": {"query": "k"}},
                        "upstream": {"nodes": nodes},
                    },
                ],
                "consumers": [
                    {"username": "jack", "plugins": {"key-auth": {"key": "secret-jack"}}}
                ],
            }
        )
        with gw:
            assert get(gw.port, "/api/x?apikey=SECRET1&sessid=SECRET2&page=2")[0] == 200
            assert get(gw.port, "/api/y?API%4Bey=SECRET3&q=a%20b")[0] == 200
            assert get(gw.port, "/keyed?k=secret-jack")[0] == 200  # a custom key-auth name
            assert get(gw.port, "/keyed?k=SECRET4")[0] == 401  # refused by the plugin
            assert get(gw.port, "/nowhere")[0] == 404
            assert _https_get(tls_port, "/api/tls", "tls.example.com") == 200
            lines = _wait_file(log_file, lambda ls: len(ls) >= 6)
            text = log_file.read_text()
            by_path = {line["path"]: line for line in lines}
            assert by_path["/api/x"]["query"] == "apikey=[REDACTED]&sessid=[REDACTED]&page=2"
            assert by_path["/api/y"]["query"] == "API%4Bey=[REDACTED]&q=a%20b"
            assert (by_path["/api/x"]["route_name"], by_path["/api/x"]["route_id"]) == (
                "api",
                "r1",
            )
            keyed = [line for line in lines if line["path"] == "/keyed"]
            assert sorted(line["status"] for line in keyed) == [200, 401]
            for line in keyed:
                assert line["query"] == "k=[REDACTED]" and line["route_name"] == "keyed"
            assert [line["consumer"] for line in keyed if line["status"] == 200] == ["jack"]
            assert by_path["/nowhere"]["route_name"] is None
            assert by_path["/nowhere"]["query"] is None
            for secret in ("SECRET1", "SECRET2", "SECRET3", "SECRET4", "secret-jack"):
                assert secret not in text
            tls_line = by_path["/api/tls"]
            assert tls_line["tls_protocol"] in ("TLSv1.2", "TLSv1.3")
            assert tls_line["tls_cipher"]
            assert tls_line["tls_sni"] == "tls.example.com"
            assert "tls_protocol" not in by_path["/api/x"]  # plain HTTP: no TLS facts

            # logrotate: move the file, SIGUSR1 to the master, which forwards it to workers.
            rotated = tmp_path / "access.log.1"
            os.rename(log_file, rotated)
            before = len(_file_lines(rotated))
            os.kill(gw.proc.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while '"reopen_logs"' not in gw.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the workers handle the forwarded signal on their next turn
            ids = [f"after-rotate-{i}" for i in range(20)]
            for rid in ids:  # new connections each: both workers take some
                assert get(gw.port, "/api/z", {"X-Request-Id": rid})[0] == 200
            fresh = _wait_file(log_file, lambda ls: len(ls) >= len(ids))
            assert sorted(line["request_id"] for line in fresh) == sorted(ids)
            assert len(_file_lines(rotated)) == before  # nothing more in the rotated file
            assert gw.proc.poll() is None  # SIGUSR1 killed no one
            assert '"worker_exited"' not in gw.stderr()
