"""The node's metrics pushed to a real VictoriaMetrics (Debian's `victoria-metrics`, started here on
a free port): request counts arrive exactly, with the configured extra labels; a VictoriaMetrics
that is down, or that accepts and never answers, neither fails nor slows a request, and pushing
resumes when it is back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess, wait_for
from tests.support.upstream import free_port

BINARY = shutil.which("victoria-metrics")
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="victoria-metrics is not installed (make test installs it)"
)


class VictoriaMetrics:
    """A real single-node VictoriaMetrics on 127.0.0.1, its data in a temporary directory."""

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaMetrics:
        assert BINARY is not None
        self.proc = subprocess.Popen(
            [
                BINARY,
                f"-storageDataPath={self.data}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-search.latencyOffset=0s",  # what was just pushed is what a query sees
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("victoria-metrics did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query at this second (VictoriaMetrics 1.79 aligns an instant query without
        `time` to an earlier point, which can miss a sample that just arrived)."""
        args = urllib.parse.urlencode({"query": promql, "time": f"{time.time():.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{args}", timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm-data").start()
    try:
        yield server
    finally:
        server.stop()


def config(up: dict[str, Any], url: str, **push: Any) -> dict[str, Any]:
    return {
        "ando": {"observability": {"victoria_metrics": {"url": url, "interval": 0.3, **push}}},
        "routes": [
            {"id": "r", "uri": "/r", "plugins": {"prometheus": {}}, "upstream": up},
            {"id": "s", "uri": "/status/*", "plugins": {"prometheus": {}}, "upstream": up},
        ],
    }


def get(gw: GatewayProcess, path: str) -> int:
    return request(gw.port, "GET", path, headers={"Host": "t"}).status


def test_request_counts_arrive_exactly_with_the_extra_labels(tmp_path, up, vm):
    labels = {"site": "lab", "device": "edge-1"}
    with GatewayProcess(config(up, vm.url, extra_labels=labels), tmp_path, workers=2) as gw:
        for _ in range(37):
            assert get(gw, "/r") == 200
        for _ in range(4):
            assert get(gw, "/status/503") == 503
        ok = 'sum(ando_http_status{site="lab",device="edge-1",route="r",code="200"})'
        wait_for(lambda: vm.scalar(ok) == 37, "37 requests in VictoriaMetrics", 30)
        bad = 'sum(ando_http_status{site="lab",route="s",code="503"})'
        assert vm.scalar(bad) == 4
        count = 'sum(ando_http_latency_count{site="lab",type="request",route="r"})'
        assert vm.scalar(count) == 37
        assert vm.query('ando_node_info{device="edge-1"}')
        # Later requests arrive too: the pusher keeps pushing the node's running totals.
        for _ in range(5):
            assert get(gw, "/r") == 200
        wait_for(lambda: vm.scalar(ok) == 42, "42 requests in VictoriaMetrics", 30)


def test_a_down_victoria_metrics_fails_no_request_and_pushing_resumes(tmp_path, up):
    port = free_port()
    down = VictoriaMetrics(tmp_path / "vm-data", port)
    with GatewayProcess(config(up, down.url), tmp_path, workers=1) as gw:
        for _ in range(10):
            assert get(gw, "/r") == 200
        failed = gw.wait_events("victoria_metrics_push_failed", lambda e: True, 10)
        assert failed and "cannot reach" in failed[0]["error"]
        time.sleep(1.0)  # several more failed attempts (backing off) are logged no more
        assert len(gw.events("victoria_metrics_push_failed")) == 1
        down.start()
        try:
            assert gw.wait_events("victoria_metrics_push_recovered", lambda e: True, 20)
            wait_for(
                lambda: down.scalar('sum(ando_http_status{route="r"})') == 10, "10 requests", 30
            )
        finally:
            down.stop()


def test_a_victoria_metrics_that_never_answers_slows_nothing(tmp_path, up):
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:  # accept, read nothing, answer nothing
        hole.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(hole.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"

    def close_hole() -> None:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        hole.close()

    try:
        with GatewayProcess(config(up, url, timeout=30), tmp_path, workers=1) as gw:
            wait_for(lambda: bool(accepted), "a push to hang", 10)
            for _ in range(20):
                started = time.monotonic()
                assert get(gw, "/r") == 200
                assert time.monotonic() - started < 2.0
            scrape = request(gw.metrics_port, "GET", "/metrics", timeout=5)
            assert scrape.status == 200 and b'route="r"' in scrape.body
            # Before the gateway stops: its last push at shutdown would wait out the 30 s push
            # timeout here, past GatewayProcess.stop's patience (then a SIGKILL, whose master
            # leaves its pid file behind).
            close_hole()
            assert gw.stop() == 0
    finally:
        close_hole()


def test_the_last_totals_are_pushed_at_shutdown(tmp_path, up, vm):
    # An interval far beyond the test: only the push made after the drain can bring the counts.
    with GatewayProcess(config(up, vm.url, interval=3600), tmp_path, workers=2) as gw:
        for _ in range(9):
            assert get(gw, "/r") == 200
        assert gw.stop() == 0
    seen: list[float | None] = []

    def arrived() -> bool:
        seen.append(vm.scalar('sum(ando_http_status{route="r"})'))
        return seen[-1] == 9

    try:
        wait_for(arrived, "9 requests", 30)
    except AssertionError as e:  # say what arrived, and what the master said about pushing
        pushes = [ln for ln in gw.stderr().splitlines() if "victoria" in ln or "stopped" in ln]
        raise AssertionError(f"{e}; VictoriaMetrics had {seen[-3:]}; {pushes[-5:]}") from e
