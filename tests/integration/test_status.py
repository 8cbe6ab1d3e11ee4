"""The status endpoints (`/status`, `/status/ready`) of the real `ando run`, and the gateway events
that speak of them: liveness and readiness, readiness during a SIGTERM drain with a request in
flight, strict refusals, a disabled server, a taken port at start, and a reload that moves it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ando.runtime.status import DEFAULT_LISTEN
from tests.support.client import Response, request
from tests.support.gateway import ROOT, GatewayProcess, raw_request, wait_for
from tests.support.upstream import free_port


def config(up: dict[str, Any], **node: Any) -> dict[str, Any]:
    return {
        "ando": node,
        "routes": [{"id": "slow", "uri": "/delay", "upstream": up}],
    }


def status(gw: GatewayProcess, path: str, method: str = "GET") -> Response:
    return request(gw.status_port, method, path, timeout=5)


def ready(gw: GatewayProcess) -> bool:
    return status(gw, "/status/ready").status == 200


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_the_default_address_is_the_schemas():
    schema = json.loads((ROOT / "schemas/resources/node.json").read_text())
    status_schema = schema["properties"]["observability"]["properties"]["status"]
    assert status_schema["properties"]["listen"]["default"] == DEFAULT_LISTEN == "127.0.0.1:7085"


def test_alive_and_ready_while_serving(tmp_path, up):
    with GatewayProcess(config(up, workers=2), tmp_path) as gw:
        alive = status(gw, "/status")
        assert alive.status == 200 and alive.json() == {"status": "ok"}
        assert alive.header("Cache-Control") == "no-store"
        assert alive.header("Connection") == "close"
        wait_for(lambda: ready(gw), "/status/ready to be 200")
        body = status(gw, "/status/ready").json()
        assert body["status"] == "ok" and body["generation"] == 1
        assert body["workers"] == 2 and body["workers_ready"] >= 1
        head = status(gw, "/status/ready", "HEAD")
        assert head.status == 200 and head.body == b""
        assert status(gw, "/status?probe=1").status == 200  # the query is not the path
        for path in ("/", "/metrics", "/status/", "/status/ready/x", "/statusx"):
            assert status(gw, path).status == 404, path
        post = status(gw, "/status", "POST")
        assert post.status == 405 and post.header("Allow") == "GET, HEAD"
        start = gw.events("start")[0]
        assert start["status"] == f"127.0.0.1:{gw.status_port}"


def test_ready_turns_503_during_a_sigterm_drain_while_a_request_finishes(tmp_path, up, upstream):
    limits = {"graceful_shutdown_timeout": 10}
    gw = GatewayProcess(config(up, workers=1, limits=limits), tmp_path)
    with gw:
        wait_for(lambda: ready(gw), "/status/ready to be 200")
        result: dict[str, Any] = {}

        def slow() -> None:
            try:
                result["response"] = request(gw.port, "GET", "/delay?ms=1500", timeout=15)
            except Exception as e:
                result["error"] = e

        client = threading.Thread(target=slow)
        client.start()
        wait_for(lambda: any(r["path"] == "/delay" for r in upstream.requests), "the slow request")
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGTERM)  # the master only, as an operator would
        wait_for(lambda: not ready(gw), "/status/ready to be 503", timeout=5)
        draining = status(gw, "/status/ready")
        assert client.is_alive()  # the slow request is still in flight
        assert draining.status == 503
        assert draining.json()["status"] == "unavailable"
        assert draining.json()["reason"] == "draining"
        assert status(gw, "/status").status == 200  # alive all through the grace period
        client.join(15)
        assert "error" not in result, result
        assert result["response"].status == 200
        assert gw.proc.wait(15) == 0
        assert refused(gw.status_port)
        assert gw.events("stopped")[0]["killed"] == 0


def test_disabled_means_nothing_listens(tmp_path, up):
    cfg = config(up, workers=1, observability={"status": {"enabled": False}})
    with GatewayProcess(cfg, tmp_path) as gw:
        assert refused(gw.status_port)
        assert "status" not in gw.events("start")[0]


MALFORMED = [
    b"GET /status HTTP/1.1\r\n\r\n",  # no Host on 1.1
    b"GET /status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: a\r\nX_Bad: 1\r\n\r\n",
    b"GET /status HTTP/1.2\r\nHost: a\r\n\r\n",
    b"GET /status\\x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /status/%2e%2e%2fready HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /status HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,  # a TLS hello
    b"NOT HTTP AT ALL\r\n\r\n",
]


def test_a_malformed_request_gets_400_and_the_connection_closes(tmp_path, up):
    with GatewayProcess(config(up, workers=1), tmp_path) as gw:
        for raw in MALFORMED:
            began = time.monotonic()
            answer = raw_request(gw.status_port, raw)
            assert time.monotonic() - began < 3, raw  # closed by the server, not our timeout
            assert answer.startswith(b"HTTP/1.1 400 "), (raw, answer)
            assert b"Connection: close\r\n" in answer
        assert status(gw, "/status").status == 200  # the master is unharmed
        answer = raw_request(gw.status_port, b"GET /status HTTP/2.0\r\nHost: a\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 505 "), answer


def test_a_request_head_too_large_is_refused(tmp_path, up):
    with GatewayProcess(config(up, workers=1), tmp_path) as gw:
        answer = raw_request(gw.status_port, b"GET /status?" + b"a" * 4096 + b" HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 414 "), answer[:100]
        header = b"X-Big: " + b"b" * 16384 + b"\r\n"
        answer = raw_request(gw.status_port, b"GET /status HTTP/1.1\r\nHost: a\r\n" + header)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def run_to_exit(gw: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """`ando run` on the gateway's config, expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "ando", "run", "-c", str(gw.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def status_at(up: dict[str, Any], listen: str) -> dict[str, Any]:
    return config(up, workers=1, observability={"status": {"listen": listen}})


def test_a_status_port_in_use_stops_the_start_with_exit_1(tmp_path, up):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run_to_exit(GatewayProcess(status_at(up, f"127.0.0.1:{port}"), tmp_path))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"ando: cannot listen on 127.0.0.1:{port} (ando.observability.status): address already "
        "in use (another ando, or another server, is listening there)"
    ]


def test_a_status_address_no_socket_can_take_stops_the_start_with_exit_1(tmp_path, up):
    r = run_to_exit(GatewayProcess(status_at(up, "192.0.2.1:7085"), tmp_path))  # TEST-NET-1
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "ando: cannot listen on 192.0.2.1:7085 (ando.observability.status): address not "
        "available (no interface on this host has that address)"
    ]
    r = run_to_exit(GatewayProcess(status_at(up, "10.0.0.300:7085"), tmp_path))
    assert r.returncode == 1
    assert "'10.0.0.300' is not a valid host name or IP address" in r.stderr
    assert "Traceback" not in r.stderr


def test_moving_the_status_address_needs_a_restart(tmp_path, up):
    with GatewayProcess(config(up, workers=1), tmp_path) as gw:
        old = gw.status_port
        moved = free_port()
        assert gw.proc is not None
        gw.write_config(
            config(up, workers=1, observability={"status": {"listen": f"127.0.0.1:{moved}"}})
        )
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_for(lambda: any(e["result"] == "ok" for e in gw.events("reload")), "the reload")
        event = gw.events("reload")[0]
        assert event["restart_required"] == ["ando.observability.status"]
        assert event["level"] == "warn"
        assert request(old, "GET", "/status").status == 200  # still where it was bound
        assert refused(moved)


def test_workers_do_not_hold_the_status_socket(tmp_path, up):
    """A worker holding the master's listening socket would keep the port bound (and queue
    probes nobody answers) after the master died."""
    with GatewayProcess(config(up, workers=2), tmp_path) as gw:
        wait_for(lambda: len(gw.events("worker_started")) == 2, "two workers")
        inode = _listening_inode(gw.status_port)
        assert gw.proc is not None
        assert _holds(gw.proc.pid, inode)
        for worker in gw.events("worker_started"):
            assert not _holds(worker["pid"], inode), worker


def _listening_inode(port: int) -> str:
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def _holds(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def test_the_health_command_exits_0_only_while_ready(tmp_path, up):
    def health(url: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "ando", "health", url, "--timeout", "3"]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)

    with GatewayProcess(config(up, workers=1), tmp_path) as gw:
        wait_for(lambda: ready(gw), "/status/ready to be 200")
        ok = health(f"http://127.0.0.1:{gw.status_port}/status/ready")
        assert ok.returncode == 0 and ok.stdout.startswith('200 {"status":"ok"')
    gone = health(f"http://127.0.0.1:{gw.status_port}/status/ready")
    assert gone.returncode == 1 and gone.stderr.startswith("ando: health: ")
    assert health("https://127.0.0.1/status/ready").returncode == 2


def test_settings_this_build_does_not_act_on_are_said_at_start_and_reload(tmp_path, up):
    cfg = config(up, workers=1, etcd={"hosts": ["http://127.0.0.1:2379"]}, admin={"enabled": True})
    with GatewayProcess(cfg, tmp_path) as gw:
        said = gw.wait_events("settings_not_in_effect", lambda e: True, 5)
        assert said and said[0]["level"] == "warn"
        assert [s.split(":")[0] for s in said[0]["settings"]] == ["ando.etcd", "ando.admin"]
        assert request(gw.port, "GET", "/delay?ms=1").status == 200  # the file is served
        gw.write_config(config(up, workers=1))
        assert gw.wait_events("reload", lambda e: e.get("result") == "ok", 10)
        assert len(gw.events("settings_not_in_effect")) == 1  # gone with the settings
