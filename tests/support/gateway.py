"""Run the real gateway (`python -m ando run -c FILE`, or another `ando` command such as the built
binary: `command=`) for black-box tests, on a free port.

The config is written as JSON (which is YAML), with `ando.listen` set to the chosen port, and the
status endpoints (on by default, on 127.0.0.1:7085) moved to a free port too, so gateways started
side by side never collide. The process is always stopped at the end (SIGTERM, then SIGKILL), and
its output kept for assertions.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .upstream import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


class GatewayProcess:
    def __init__(
        self,
        config: dict[str, Any],
        tmp_path: Path,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        access_log: bool = True,
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.status_port = free_port()  # or the port the test's config sets (see render)
        self.metrics_port = free_port()  # likewise, for ando.observability.prometheus
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "ando.yaml"
        self.stdout_path = tmp_path / "gateway.stdout"
        self.stderr_path = tmp_path / "gateway.stderr"
        self.env = env or {}
        self.workers = workers
        self.access_log = access_log
        # What `ando` is: this checkout's package by default, the single-file binary in tests/e2e.
        self.command = list(command) if command else [sys.executable, "-m", "ando"]
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen | None = None
        self.write_config(config)

    def render(self, config: dict[str, Any]) -> dict[str, Any]:
        full = copy.deepcopy(config)
        node = full.setdefault("ando", {})
        node.setdefault("listen", [f"127.0.0.1:{self.port}"])
        node.setdefault("workers", self.workers)
        observability = node.setdefault("observability", {})
        observability.setdefault("access_log", {"enabled": self.access_log, "path": "stdout"})
        status = observability.setdefault("status", {})
        self.status_enabled = status.get("enabled", True)
        if "listen" in status:
            self.status_port = int(str(status["listen"]).rpartition(":")[2])
        else:
            status["listen"] = f"127.0.0.1:{self.status_port}"
        prometheus = observability.setdefault("prometheus", {})
        if "listen" in prometheus:
            self.metrics_port = int(str(prometheus["listen"]).rpartition(":")[2])
        else:
            prometheus["listen"] = f"127.0.0.1:{self.metrics_port}"
        return full

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file atomically (as an editor or ConfigMap does)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.render(config), indent=1))
        os.replace(tmp, self.config_path)

    def start(self) -> GatewayProcess:
        env = {**os.environ, **self.env}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            cmd = [*self.command, "run", "-c", str(self.config_path)]
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        try:
            wait_port(self.port, proc=self.proc)
            self._wait_all_workers()
        except Exception:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.stderr()}") from None
        return self

    def _wait_all_workers(self, timeout: float = 15.0) -> None:
        """One worker listening is enough to connect, not to spread connections over all of
        them (SO_REUSEPORT): tests that count on every worker wait for /status/ready to say
        every one is serving."""
        if self.workers <= 1 or not self.status_enabled:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.status_port), timeout=1) as s:
                    s.sendall(b"GET /status/ready HTTP/1.1\r\nHost: t\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                body = json.loads(data.partition(b"\r\n\r\n")[2] or b"{}")
                if body.get("workers_ready") == self.workers:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"not every worker was ready after {timeout}s")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The gateway's events called `name`, from its stderr JSON lines."""
        out = []
        for line in self.stderr().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == name:
                out.append(record)
        return out

    def wait_events(
        self, name: str, where: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """The `name` events matching `where`, polling up to `timeout` s until there is one."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(name) if where(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def access_log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return proc.poll()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(5)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `check` (bounded) until it holds; fail the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def raw_request(port: int, data: bytes, *, timeout: float = 5.0, read_all: bool = True) -> bytes:
    """Send raw bytes and read until the server closes (or `timeout`): for malformed requests."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_all:
                break
        return b"".join(chunks)


def failed_request_event(gw: GatewayProcess, path: str, expect: str) -> dict[str, Any]:
    """GET `path` must fail with the gateway's 500, promptly, and log a plugin_error event whose
    traceback holds `expect`: that event is returned for the caller's own checks."""
    from .client import request  # the HTTP client, only for this helper

    started = time.monotonic()
    r = request(gw.port, "GET", path)
    assert time.monotonic() - started < 5
    assert r.status == 500
    assert r.json() == {"error_msg": "500 Internal Server Error"}
    found = gw.wait_events("plugin_error", lambda e: expect in e.get("traceback", ""))
    assert found, gw.stderr()[-3000:]
    return found[-1]
