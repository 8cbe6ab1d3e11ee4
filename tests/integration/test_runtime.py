"""The process model with real processes and real sockets: master, workers, signals, reloads.

The runtime is started in a subprocess with `EchoGateway` below injected through `run()`'s
`gateway_factory` (so the product CLI has no test hook). EchoGateway is the process model's own
harness, not a stand-in for the proxy: it answers every request with the config version (the ids
of the routes) and the worker's pid, and `/slow?ms=N` answers after N ms, so a test can see which
worker served which config and hold a request in flight across a shutdown.

Every wait polls against a deadline; every process is killed in teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httptools
import pytest

from ando.runtime.pidfile import default_pid_file
from tests.support.upstream import free_port

ROOT = Path(__file__).resolve().parents[2]

# --- the test gateway (runs inside the workers) ---------------------------------------------


def config_version(snapshot) -> str:
    return ",".join(route.id for route in snapshot.routes)


class EchoGateway:
    """Answers `200 <route ids> <pid>`; `/slow?ms=N` after N ms (and says so on stderr)."""

    def __init__(self, snapshot) -> None:
        self.snapshot = snapshot
        self.inflight = 0
        self.draining = False
        self.connections: set[_EchoProtocol] = set()

    def swap(self, snapshot) -> None:
        self.snapshot = snapshot

    def protocol_factory(self, listener) -> Callable[[], asyncio.Protocol]:
        return lambda: _EchoProtocol(self)

    def begin_drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.transport.close()

    async def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return not self.inflight


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, gateway: EchoGateway) -> None:
        self.gateway = gateway
        self.parser = httptools.HttpRequestParser(self)
        self.busy = False
        self.url = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gateway.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.gateway.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.busy = True
        self.gateway.inflight += 1
        version = config_version(self.gateway.snapshot)  # the config the request started on
        parts = urlsplit(self.url.decode())
        delay = 0.0
        if parts.path == "/slow":
            delay = int(parse_qs(parts.query).get("ms", ["0"])[0]) / 1000
            line = json.dumps({"event": "test_slow_request", "pid": os.getpid()}) + "\n"
            os.write(2, line.encode())
        asyncio.get_running_loop().call_later(delay, self._respond, version)

    def _respond(self, version: str) -> None:
        body = f"{version} {os.getpid()}\n".encode()
        close = self.gateway.draining or not self.parser.should_keep_alive()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
        head += "Connection: close\r\n\r\n" if close else "\r\n"
        if not self.transport.is_closing():
            self.transport.write(head.encode() + body)
            if close:
                self.transport.close()
        self.busy = False
        self.gateway.inflight -= 1


def crashing_gateway(snapshot):
    raise RuntimeError("this gateway never starts")


# --- harness -----------------------------------------------------------------------------------

LAUNCH = (
    "import sys\n"
    "from ando.runtime.master import run\n"
    "from tests.integration import test_runtime as t\n"
    "factory = getattr(t, sys.argv[2])\n"
    "pid_file = sys.argv[3] if len(sys.argv) > 3 else None\n"
    "raise SystemExit(run(sys.argv[1], gateway_factory=factory, pid_file=pid_file))\n"
)


# The status and metrics endpoints (on by default, on fixed ports) are tested in test_status.py and
# test_metrics.py; here they are off, so runtimes never collide on 127.0.0.1:7085 or :9091.
NO_STATUS = "  observability: {status: {enabled: false}, prometheus: {enabled: false}}\n"


def config_text(port: int, *versions: str, workers: int = 2, extra: str = "") -> str:
    routes = "".join(
        f"  - id: {v}\n    uri: /{v}\n    upstream: {{nodes: {{'127.0.0.1:1980': 1}}}}\n"
        for v in versions
    )
    node = f"ando:\n  listen: ['127.0.0.1:{port}']\n  workers: {workers}\n{NO_STATUS}{extra}"
    return f"{node}routes:\n{routes}"


class Runtime:
    """One `ando run` (master and workers) in a subprocess, with its log lines collected."""

    def __init__(
        self,
        config: Path,
        factory: str = "EchoGateway",
        cli: bool = False,
        pid_file: Path | None = None,
    ) -> None:
        self.config = config
        if cli:
            argv = [sys.executable, "-m", "ando", "run", "-c", str(config)]
        else:
            argv = [sys.executable, "-c", LAUNCH, str(config), factory]
            argv += [str(pid_file)] if pid_file else []
        env = {k: v for k, v in os.environ.items() if k != "ANDO_DEBUG"}
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self, name: str | None = None) -> list[dict]:
        with self._cond:
            lines = list(self.lines)
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                out.append(record)
        return out

    def wait_event(
        self, name: str, where: Callable[[dict], bool] = lambda e: True, timeout: float = 10
    ) -> dict:
        """The first `name` event matching `where`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(name):
                if where(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                raise AssertionError(f"no {name} event in time; log:\n" + self.log())
            with self._cond:
                self._cond.wait(min(left, 0.1))

    def wait_ready(self, workers: int = 2, timeout: float = 15) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.events("worker_started")) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("workers did not start; log:\n" + self.log())
            time.sleep(0.02)
        return [e["pid"] for e in self.events("worker_started")]

    def wait_exit(self, timeout: float = 10) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(2)
        return code

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def kill(self) -> None:
        """Teardown: stop the master (gracefully if it still can) and any worker it left."""
        pids = {e["pid"] for e in self.events("worker_started")}
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(default_pid_file(str(self.config)))  # left by a master that was killed
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def get(port: int, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    """One request on a new connection (so SO_REUSEPORT spreads them across workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def served(port: int) -> tuple[str, int]:
    status, body = get(port)
    assert status == 200
    version, pid = body.split()
    return version, int(pid)


def wait_until(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not ours does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def start(tmp_path) -> Iterator[Callable[..., Runtime]]:
    runtimes: list[Runtime] = []

    def _start(config: Path, **kwargs) -> Runtime:
        runtime = Runtime(config, **kwargs)
        runtimes.append(runtime)
        return runtime

    yield _start
    for runtime in runtimes:
        runtime.kill()


@pytest.fixture
def port() -> int:
    return free_port()


def write(path: Path, text: str) -> Path:
    """Replace the file the way editors do: a temp file renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def reload_ok(generation: int, trigger: str | None = None) -> Callable[[dict], bool]:
    def check(e: dict) -> bool:
        return (
            e.get("result") == "ok"
            and e.get("generation") == generation
            and (trigger is None or e.get("trigger") == trigger)
        )

    return check


# --- tests -----------------------------------------------------------------------------------


def test_two_workers_both_serve(tmp_path, start, port):
    runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
    started = set(runtime.wait_ready(2))
    assert len(started) == 2
    begin = runtime.events("start")[0]
    assert begin["workers"] == 2 and begin["counts"]["routes"] == 1
    assert Path(begin["pid_file"]).read_text() == f"{runtime.proc.pid}\n"
    seen: set[int] = set()
    for _ in range(200):
        version, pid = served(port)
        assert version == "v1"
        seen.add(pid)
        if len(seen) == 2:
            break
    assert seen == started


def test_sighup_reload_changes_what_is_served(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    write(config, config_text(port, "v1", "v2"))
    runtime.signal(signal.SIGHUP)
    event = runtime.wait_event("reload", lambda e: e.get("trigger") == "signal")
    assert event["result"] == "ok" and event["applied"] == 2 and event["workers"] == 2
    assert event["counts"]["routes"] == 2 and event["reloads_failed"] == 0
    # Every worker acknowledged the swap before the line was written: no stale answers now.
    assert {served(port)[0] for _ in range(20)} == {"v1,v2"}


def test_invalid_edit_is_refused_and_the_old_config_keeps_serving(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    bad = config_text(port, "v1") + "  - id: v2\n    uri: /v2\n    upstream_id: nope\n"
    write(config, bad)
    runtime.signal(signal.SIGHUP)
    event = runtime.wait_event("reload", lambda e: e.get("trigger") == "signal")
    assert event["result"] == "failed" and event["level"] == "error"
    assert event["serving_generation"] == 1 and event["reloads_failed"] >= 1
    assert any(d.startswith(f"{config}:11:18: routes[1].upstream_id") for d in event["diagnostics"])
    assert {served(port)[0] for _ in range(10)} == {"v1"}
    # ... and a good edit afterwards is applied: a failure does not stop reloading.
    write(config, config_text(port, "v3"))
    runtime.signal(signal.SIGHUP)
    runtime.wait_event("reload", reload_ok(2))
    assert served(port)[0] == "v3"


def test_rename_replace_is_seen_by_the_watcher(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    write(config, config_text(port, "v2"))
    runtime.wait_event("reload", reload_ok(2, "watch"))
    assert served(port)[0] == "v2"
    # A touch (same content) reloads nothing; a second replace is still seen.
    os.utime(config)
    time.sleep(0.4)  # debounce (0.1 s) and then some: long enough for a reload to show up
    assert len(runtime.events("reload")) == 1
    write(config, config_text(port, "v3"))
    runtime.wait_event("reload", reload_ok(3, "watch"))
    assert served(port)[0] == "v3"
    assert len(runtime.events("reload")) == 2


def test_a_deleted_file_is_refused_until_it_comes_back(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    config.unlink()
    event = runtime.wait_event("reload", lambda e: e["result"] == "failed")
    assert "cannot read" in event["diagnostics"][0] and event["trigger"] == "watch"
    assert served(port)[0] == "v1"
    config.write_text(config_text(port, "v2"))  # written in place, as a plain `>` would
    runtime.wait_event("reload", reload_ok(2, "watch"))
    assert served(port)[0] == "v2"


def test_listen_changes_are_reported_as_needing_a_restart(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    write(config, config_text(free_port(), "v2"))
    event = runtime.wait_event("reload", reload_ok(2))
    assert event["restart_required"] == ["ando.listen"] and event["level"] == "warn"
    assert served(port)[0] == "v2"  # the rest of the config applies on the sockets we have


def test_configmap_symlink_swap_is_seen_by_the_watcher(tmp_path, start, port):
    # Kubernetes' layout: ando.yaml -> ..data/ando.yaml, ..data -> ..<timestamp>/
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(name: str, text: str) -> None:
        (mount / name).mkdir()
        (mount / name / "ando.yaml").write_text(text)
        old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
        os.symlink(name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")
        if old:
            shutil.rmtree(mount / old)

    publish("..2024_01", config_text(port, "v1"))
    os.symlink("..data/ando.yaml", mount / "ando.yaml")
    runtime = start(mount / "ando.yaml")
    runtime.wait_ready(2)
    publish("..2024_02", config_text(port, "v2"))
    runtime.wait_event("reload", reload_ok(2, "watch"))
    assert served(port)[0] == "v2"
    publish("..2024_03", config_text(port, "v3"))  # the watch followed the new target
    runtime.wait_event("reload", reload_ok(3, "watch"))
    assert served(port)[0] == "v3"
    assert not runtime.events("watch_error")


def test_a_killed_worker_is_replaced_and_service_continues(tmp_path, start, port):
    runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
    first, second = runtime.wait_ready(2)
    os.kill(first, signal.SIGKILL)
    exited = runtime.wait_event("worker_exited", lambda e: e["pid"] == first)
    assert exited["signal"] == "SIGKILL" and exited["expected"] is False
    restarted = runtime.wait_event("worker_restarted", lambda e: e["replaces"] == first)
    runtime.wait_event("worker_started", lambda e: e["pid"] == restarted["pid"])
    seen: set[int] = set()
    for _ in range(200):
        seen.add(served(port)[1])
        if seen == {second, restarted["pid"]}:
            break
    assert seen == {second, restarted["pid"]}


def ando_reload(*args: str) -> subprocess.CompletedProcess:
    """`ando reload ARGS`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ando", "reload", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def slow_request_in_flight(
    runtime, port: int, ms: int
) -> tuple[threading.Thread, dict[str, object]]:
    """A request the test gateway holds for `ms`, sent from a thread; returns once it is in."""
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["response"] = get(port, f"/slow?ms={ms}")
        except Exception as e:
            result["error"] = e

    client = threading.Thread(target=slow)
    client.start()
    runtime.wait_event("test_slow_request")
    return client, result


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(tmp_path, start, port):
    runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
    workers = runtime.wait_ready(2)
    client, result = slow_request_in_flight(runtime, port, 700)
    began = time.monotonic()
    runtime.signal(signal.SIGTERM)
    assert runtime.wait_exit(10) == 0
    client.join(5)
    assert "error" not in result, result
    status, body = result["response"]
    assert status == 200 and body.startswith("v1 ")
    assert time.monotonic() - began < 5
    stopped = runtime.wait_event("stopped")
    assert stopped["killed"] == 0
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(OSError):
        get(port, timeout=1)


def test_sigquit_exits_at_once(tmp_path, start, port):
    runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
    workers = runtime.wait_ready(2)
    client, result = slow_request_in_flight(runtime, port, 20000)
    began = time.monotonic()
    runtime.signal(signal.SIGQUIT)
    assert runtime.wait_exit(5) == 0
    assert time.monotonic() - began < 2
    client.join(5)
    assert isinstance(result.get("error"), OSError)  # cut off, not finished
    assert not any(alive(pid) for pid in workers)


def test_workers_exit_when_the_master_dies(tmp_path, start, port):
    runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
    workers = runtime.wait_ready(2)
    runtime.proc.kill()
    runtime.wait_exit(5)
    wait_until(lambda: not any(alive(pid) for pid in workers), 5, "orphaned workers to exit")


def test_ando_reload_signals_the_running_master(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    runtime = start(config)
    runtime.wait_ready(2)
    write(config, config_text(port, "v2"))
    r = ando_reload("-c", str(config))
    assert r.returncode == 0, r.stderr
    assert f"pid {runtime.proc.pid}" in r.stderr
    runtime.wait_event("reload", lambda e: e.get("trigger") == "signal" and e["result"] == "ok")
    assert served(port)[0] == "v2"
    runtime.signal(signal.SIGTERM)
    assert runtime.wait_exit(10) == 0
    # The pid file went with the master: reload now says clearly that nothing is running.
    r = ando_reload("-c", str(config))
    assert r.returncode == 1
    assert f"is ando running with -c {config}?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_pid_file_of_ones_choice(tmp_path, start, port):
    config = write(tmp_path / "ando.yaml", config_text(port, "v1"))
    pid_file = tmp_path / "run" / "ando.pid"
    pid_file.parent.mkdir()
    runtime = start(config, pid_file=pid_file)
    runtime.wait_ready(2)
    assert pid_file.read_text() == f"{runtime.proc.pid}\n"
    assert not os.path.exists(default_pid_file(str(config)))
    r = ando_reload("--pid-file", str(pid_file))
    assert r.returncode == 0, r.stderr
    runtime.wait_event("reload", lambda e: e.get("trigger") == "signal" and e["result"] == "ok")
    runtime.signal(signal.SIGTERM)
    assert runtime.wait_exit(10) == 0
    assert not pid_file.exists()


def test_ando_reload_with_a_stale_pid_file(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid_file = tmp_path / "ando.pid"
    pid_file.write_text(dead.stdout)
    r = ando_reload("--pid-file", str(pid_file))
    assert r.returncode == 1
    assert f"stale pid file {pid_file}: process {dead.stdout.strip()} is not running" in r.stderr
    # A pid reused by another program is not signalled (SIGHUP would end most programs).
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(f"{stranger.pid}\n")
        r = ando_reload("--pid-file", str(pid_file))
        assert r.returncode == 1 and f"process {stranger.pid} is not ando" in r.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(5)
    r = subprocess.run(
        [sys.executable, "-m", "ando", "reload"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2 and "give -c FILE" in r.stderr


def test_start_with_an_invalid_config_exits_1_with_diagnostics(tmp_path, start, port):
    config = write(
        tmp_path / "bad.yaml",
        config_text(port, "v1") + "  - id: v2\n    uri: /v2\n    upstream_id: nope\n",
    )
    runtime = start(config, cli=True)
    assert runtime.wait_exit(30) == 1
    log = runtime.log()
    assert f"{config}:11:18: routes[1].upstream_id" in log and "not starting" in log
    assert not runtime.events("worker_started")


def test_a_port_in_use_exits_1_with_one_clear_line(tmp_path, start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        runtime = start(write(tmp_path / "ando.yaml", config_text(port, "v1")))
        assert runtime.wait_exit(30) == 1
    assert runtime.log().strip().splitlines() == [
        f"ando: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another ando, or another server, is listening there)"
    ]


def test_workers_crashing_in_a_loop_are_respawned_with_a_back_off(tmp_path, start, port):
    runtime = start(
        write(tmp_path / "ando.yaml", config_text(port, "v1")), factory="crashing_gateway"
    )
    event = runtime.wait_event("crash_loop")
    assert event["deaths"] > 5 and event["respawn_in"] >= 1
    assert runtime.events("worker_gateway_failed")
    runtime.signal(signal.SIGTERM)
    assert runtime.wait_exit(10) == 0
