"""Access log lines pushed to VictoriaLogs' JSON stream API, checked on the wire.

VictoriaLogs has no Debian package here, so the receiver is an HTTP server of the test's own that
records exactly what arrives: method, path, query arguments, headers and the NDJSON body (the
format documented at docs.victoriametrics.com/victorialogs/data-ingestion/#json-stream-api).
It can also stall (accept and never answer), to prove a slow VictoriaLogs slows no request.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, closed_port, free_port


class Receiver:
    """A real HTTP server on a free port recording every request; `stall` makes it hold every
    request without answering until `release()`; `status` is what it answers."""

    def __init__(self, *, stall: bool = False, status: int = 204) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = status
        self.stall = stall
        self._released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                with receiver._lock:
                    receiver.requests.append(
                        {
                            "method": self.command,
                            "path": parts.path,
                            "query": parse_qs(parts.query, keep_blank_values=True),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                if receiver.stall:
                    receiver._released.wait(30)
                    return
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        with self._lock:
            bodies = [r["body"] for r in self.requests]
        return [json.loads(line) for body in bodies for line in body.splitlines() if line]

    def wait_for(self, want, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not want() and time.monotonic() < deadline:
            time.sleep(0.02)

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def _config(up: UpstreamServer, victoria: dict[str, Any]) -> dict[str, Any]:
    return {
        "ando": {"observability": {"victoria_logs": victoria}},
        "routes": [
            {"id": "r1", "uri": "/a/*", "upstream": {"nodes": {up.addr: 1}}},
            {"id": "r2", "uri": "/b", "upstream": {"nodes": {up.addr: 1}}},
        ],
    }


def test_lines_arrive_in_batches_in_victoria_logs_wire_format(tmp_path):
    with UpstreamServer("a") as up, Receiver() as vl:
        victoria = {
            "url": vl.url + "/vl",  # a path prefix (vmauth, say) is kept
            "batch_size": 5,
            "flush_interval": 0.2,
            "stream_fields": ["route_id", "host"],
            "headers": {"AccountID": "7", "ProjectID": "3"},
        }
        with GatewayProcess(_config(up, victoria), tmp_path) as gw:
            for i in range(12):
                path = f"/a/{i}?apikey=SECRET" if i == 0 else f"/a/{i}"
                assert request(gw.port, "GET", path).status == 200
            assert request(gw.port, "GET", "/b").status == 200
            vl.wait_for(lambda: len(vl.lines()) >= 13)
            stdout_lines = gw.access_log_lines()
        reqs = list(vl.requests)
    lines = vl.lines()
    assert len(lines) == 13
    assert all(1 <= len(r["body"].splitlines()) <= 5 for r in reqs)  # batch_size respected
    for r in reqs:
        assert r["method"] == "POST"
        assert r["path"] == "/vl/insert/jsonline"
        assert r["query"] == {
            "_msg_field": ["event,path"],
            "_time_field": ["time"],
            "_stream_fields": ["route_id,host"],
        }
        assert r["headers"]["content-type"] == "application/stream+json"
        assert int(r["headers"]["content-length"]) == len(r["body"])
        assert (r["headers"]["accountid"], r["headers"]["projectid"]) == ("7", "3")
        assert r["body"].endswith(b"\n")  # newline-delimited JSON, one document per line
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["status"] == 200 and line["host"] == "127.0.0.1"
    assert sorted(line["path"] for line in lines) == sorted([f"/a/{i}" for i in range(12)] + ["/b"])
    assert {line["route_id"] for line in lines} == {"r1", "r2"}
    assert b"SECRET" not in b"".join(r["body"] for r in reqs)
    # the very same lines as the access log on stdout
    assert sorted(json.dumps(x, sort_keys=True) for x in lines) == sorted(
        json.dumps(x, sort_keys=True) for x in stdout_lines
    )


def test_gateway_events_go_to_victoria_logs_beside_the_access_lines(tmp_path):
    with Receiver() as vl:
        config = {
            "ando": {"observability": {"victoria_logs": {"url": vl.url, "flush_interval": 0.1}}},
            # nothing listens there: the gateway logs an upstream_failed event, answers 502
            "routes": [
                {
                    "id": "dead",
                    "uri": "/dead",
                    "upstream": {"nodes": {f"127.0.0.1:{closed_port()}": 1}},
                }
            ],
        }
        with GatewayProcess(config, tmp_path) as gw:
            assert request(gw.port, "GET", "/dead").status == 502
            vl.wait_for(lambda: any(x.get("event") == "upstream_failed" for x in vl.lines()))
            on_stderr = gw.events("upstream_failed")
    pushed = [x for x in vl.lines() if x.get("event") == "upstream_failed"]
    assert len(pushed) == 1 and pushed == on_stderr
    assert any(x.get("path") == "/dead" and x.get("status") == 502 for x in vl.lines())


def test_a_stalled_victoria_logs_slows_no_request_and_drops_are_counted(tmp_path):
    with UpstreamServer("a") as up, Receiver(stall=True) as vl:
        victoria = {
            "url": vl.url,
            "batch_size": 10,
            "flush_interval": 0.05,
            "max_pending": 50,
            "timeout": 1,
        }
        cfg = _config(up, victoria)
        with GatewayProcess(cfg, tmp_path, access_log=False) as gw:
            slowest = 0.0
            started = time.monotonic()
            for i in range(300):
                t0 = time.monotonic()
                assert request(gw.port, "GET", f"/a/{i}").status == 200
                slowest = max(slowest, time.monotonic() - t0)
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (
                gw.events("log_entries_dropped") and gw.events("log_push_failed")
            ):
                time.sleep(0.05)
            dropped = gw.events("log_entries_dropped")
            failed = gw.events("log_push_failed")
            metrics = request(gw.metrics_port, "GET", "/metrics").body.decode()
    assert slowest < 0.5, f"a request took {slowest:.3f}s while VictoriaLogs stalled"
    assert elapsed < 15
    assert dropped and dropped[0]["pusher"] == "victoria_logs" and dropped[0]["dropped"] > 0
    assert dropped[0]["max_pending"] == 50
    # The metric counts at least what the first drop event reported.
    line = next(ln for ln in metrics.splitlines() if ln.startswith("ando_log_entries_dropped{"))
    assert 'pusher="victoria_logs"' in line and float(line.split()[-1]) >= dropped[0]["dropped"]
    assert failed and "no answer within 1s" in failed[0]["error"]
    assert len(vl.requests) >= 1  # it was tried (and held) while requests went on


def test_down_then_lines_held_at_exit_are_flushed(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with UpstreamServer("a") as up:
        cfg = _config(up, {"url": dead, "flush_interval": 0.05, "timeout": 1})
        with GatewayProcess(cfg, tmp_path, access_log=False) as gw:
            for i in range(5):
                assert request(gw.port, "GET", f"/a/{i}").status == 200
            deadline = time.monotonic() + 5
            while not gw.events("log_push_failed") and time.monotonic() < deadline:
                time.sleep(0.05)
            failed = gw.events("log_push_failed")
    assert failed and "cannot reach 127.0.0.1" in failed[0]["error"]

    (tmp_path / "exit").mkdir()
    with UpstreamServer("a") as up, Receiver() as vl:
        # Nothing is due before a minute: only the drain at exit can send these lines.
        cfg = _config(up, {"url": vl.url, "flush_interval": 60, "batch_size": 1000})
        gw = GatewayProcess(cfg, tmp_path / "exit", access_log=False)
        with gw:
            for i in range(3):
                assert request(gw.port, "GET", f"/a/{i}").status == 200
            time.sleep(0.2)
            assert vl.requests == []
        assert gw.proc is not None and gw.proc.returncode == 0
        assert sorted(line["path"] for line in vl.lines()) == ["/a/0", "/a/1", "/a/2"]


@pytest.mark.parametrize(
    "victoria, problem",
    [
        ({"batch_size": 10}, "url"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://x", "stream_fields": ["a,b"]}, "stream_fields"),
        ({"url": "http://x", "flush_interval": 0}, "flush_interval"),
        ({"url": "http://x", "extra": 1}, "extra"),
    ],
)
def test_bad_settings_are_refused_at_validation(victoria, problem):
    from ando.config.diagnostics import ConfigError
    from ando.config.source import snapshot_from_text

    text = json.dumps({"ando": {"observability": {"victoria_logs": victoria}}, "routes": []})
    with pytest.raises(ConfigError) as e:
        snapshot_from_text(text, "t.yaml", environ={})
    assert any(problem in d.format() for d in e.value.diagnostics), [
        d.format() for d in e.value.diagnostics
    ]


def test_batch_processor_timing_retries_and_drops():
    """The shared batch processor's rules, on its own (no sockets): inactive_timeout,
    buffer_duration, max_retry_count, and drop-oldest beyond max_pending."""
    import asyncio

    from ando.observability.batch import BatchProcessor

    async def scenario() -> dict[str, Any]:
        sent: list[tuple[float, bytes]] = []
        failures = {"left": 0}
        start = time.monotonic()

        async def send(batch: bytearray, count: int) -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise ConnectionError("down")
            sent.append((time.monotonic() - start, bytes(batch)))

        bp = BatchProcessor(
            send,
            name="t",
            batch_max_size=100,
            inactive_timeout=0.1,
            buffer_duration=0.35,
            max_retry_count=1,
            retry_delay=0.01,
            max_pending=100,
        )
        bp.push(b"a")
        bp.push(b"b")
        await asyncio.sleep(0.3)  # quiet for longer than inactive_timeout: a batch went out
        quiet = list(sent)
        for i in range(12):  # busy: never quiet, so buffer_duration sends it
            bp.push(b"%d" % i)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.4)  # the rest of the busy entries go out too
        busy = list(sent)
        failures["left"] = 2  # the first attempt and its one retry fail: dropped
        bp.push(b"lost")
        await asyncio.sleep(0.3)
        for _ in range(250):  # more than max_pending at once: the oldest go
            bp.push(b"x")
        await bp.close(1.0)
        return {"quiet": quiet, "busy": busy, "sent": sent, "stats": bp.stats()}

    result = asyncio.run(scenario())
    assert [body for _, body in result["quiet"]] == [b"a\nb"]
    assert 0.1 <= result["quiet"][0][0] < 0.3
    busy = [body for _, body in result["busy"][1:]]
    assert len(busy) >= 2 and busy[0].startswith(b"0\n1\n")  # cut by buffer_duration
    assert b"\n".join(busy) == b"\n".join(b"%d" % i for i in range(12))
    stats = result["stats"]
    # the failed batch of one, then two sealed batches of 100 shed by max_pending (the 50 left
    # in the open batch are sent at close)
    assert stats["dropped"] == 1 + 200
    assert stats["pushed"] == 2 + 12 + 1 + 250
    assert stats["sent"] + stats["dropped"] == stats["pushed"]
    assert stats["pending"] == 0
