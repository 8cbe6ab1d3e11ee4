"""Run the real gateway (`python -m ando run -c FILE`) for black-box tests, on a free port.

The config is written as JSON (which is YAML), with `ando.listen` set to the chosen port. The
process is always stopped at the end (SIGTERM, then SIGKILL), and its output kept for assertions.
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
    ) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "ando.yaml"
        self.stdout_path = tmp_path / "gateway.stdout"
        self.stderr_path = tmp_path / "gateway.stderr"
        self.env = env or {}
        self.workers = workers
        self.access_log = access_log
        self.proc: subprocess.Popen | None = None
        self.write_config(config)

    def render(self, config: dict[str, Any]) -> dict[str, Any]:
        full = copy.deepcopy(config)
        node = full.setdefault("ando", {})
        node.setdefault("listen", [f"127.0.0.1:{self.port}"])
        node.setdefault("workers", self.workers)
        node.setdefault("observability", {}).setdefault(
            "access_log", {"enabled": self.access_log, "path": "stdout"}
        )
        return full

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file atomically (as an editor or ConfigMap does)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.render(config), indent=1))
        os.replace(tmp, self.config_path)

    def start(self) -> GatewayProcess:
        env = {**os.environ, **self.env}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            cmd = [sys.executable, "-m", "ando", "run", "-c", str(self.config_path)]
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        try:
            wait_port(self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.stderr()}") from None
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

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
