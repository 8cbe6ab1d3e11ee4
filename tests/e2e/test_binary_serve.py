"""`ando run` from the binary: the default config served as shipped (copied, with its ports and
its backend's address moved to ones chosen now), its Lua plugins from the bundle, a Lua plugin
from a directory of the user's, hot reload by editing the file and by `ando reload`.

The gateway runs with its working directory outside the checkout, so schemas/ and lua/ can only
come from inside the binary.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer, free_port

from .binary import Ando, descendants, under_staticx

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = (ROOT / "config" / "ando.yaml").read_text()

NEW_ROUTE = """\
  - id: e2e-new
    uri: /e2e-new
    plugins:
      mocking: {response_example: '{"message": "added by an edit"}', with_mock_header: false}
"""


def _replace_once(text: str, old: str, new: str) -> str:
    """A rewrite of the default config that must find its target: if the file changes shape,
    the test says so instead of serving on the shipped port."""
    assert text.count(old) == 1, f"config/ando.yaml no longer holds {old!r} once"
    return text.replace(old, new)


class TextConfigGateway(GatewayProcess):
    """GatewayProcess for a config given as YAML text (the shipped file), rewritten for this
    run: listen, status and metrics on free 127.0.0.1 ports, the backend moved to a real
    upstream."""

    upstream_addr = ""

    def write_config(self, config: dict[str, Any] | str) -> None:
        if not isinstance(config, str):
            super().write_config(config)
            return
        text = _replace_once(config, '"0.0.0.0:${{ANDO_PORT:=9080}}"', f'"127.0.0.1:{self.port}"')
        text = _replace_once(
            text,
            "\nando:\n",
            "\nando:\n  observability:\n"
            f'    status: {{listen: "127.0.0.1:{self.status_port}"}}\n'
            f'    prometheus: {{listen: "127.0.0.1:{self.metrics_port}"}}\n',
        )
        host, _, port = self.upstream_addr.rpartition(":")
        text = _replace_once(text, '"127.0.0.1:1980": 1', f'"{self.upstream_addr}": 1')
        text = _replace_once(text, "host: 127.0.0.1, port: 1980", f"host: {host}, port: {port}")
        self.status_enabled = True
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)  # as an editor's rename-save does


def _workers() -> int:
    return len(os.sched_getaffinity(0)) or 1  # what `workers: auto` starts


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer("backend") as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    ando_binary: Path, upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TextConfigGateway]:
    tmp = tmp_path_factory.mktemp("default")
    TextConfigGateway.upstream_addr = upstream.addr
    gw = TextConfigGateway(
        DEFAULT_CONFIG,  # type: ignore[arg-type]
        tmp,
        workers=_workers(),
        command=[str(ando_binary)],
        cwd=tmp,
        env={"TMPDIR": str(tmp)},  # the pid file `ando reload` finds, next to the config
    )
    with gw:
        yield gw


def test_the_default_config_is_served(gw: TextConfigGateway, upstream: UpstreamServer):
    r = request(gw.port, "GET", "/hello")
    assert (r.status, r.json()) == (200, {"message": "hello from Ando"})
    r = request(gw.port, "GET", "/api/users?x=1")
    assert r.status == 200 and r.json()["server"] == "backend"
    assert r.json()["url"] == "/api/users?x=1"
    r = request(gw.port, "GET", "/health")  # through the service
    assert r.status == 200 and r.json()["path"] == "/health"
    r = request(gw.port, "GET", "/favicon.ico", headers={"Host": "localhost"})  # inline upstream
    assert r.status == 200 and r.json()["path"] == "/favicon.ico"
    r = request(gw.port, "GET", "/nope")
    assert (r.status, r.json()) == (404, {"error_msg": "404 Route Not Found"})


def test_key_auth_and_the_node_wide_limit(gw: TextConfigGateway):
    r = request(gw.port, "GET", "/private/info")
    assert (r.status, r.json()) == (401, {"message": "Missing API key in request"})
    r = request(gw.port, "GET", "/private/info", headers={"apikey": "demo-key"})
    assert (r.status, r.json()) == (200, {"message": "you are in"})
    # limit-count counts in memory shared by every worker (new connections spread over them)
    statuses = [request(gw.port, "GET", "/limited").status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_the_bundled_lua_examples_run(gw: TextConfigGateway):
    r = request(gw.port, "GET", "/lua")
    assert (r.status, r.json()) == (401, {"message": "Missing token"})
    r = request(gw.port, "GET", "/lua", headers={"x-token": "s3cret"})
    assert (r.status, r.json()) == (200, {"message": "Lua said yes"})
    assert r.header("X-Hello") == "from Lua"


def test_status_and_metrics_count_every_worker(gw: TextConfigGateway):
    ready = request(gw.status_port, "GET", "/status/ready")
    assert ready.status == 200
    assert ready.json()["workers_ready"] == _workers()
    assert request(gw.port, "GET", "/hello").status == 200  # counted by the global prometheus
    metrics = request(gw.metrics_port, "GET", "/metrics")
    assert metrics.status == 200
    assert b'ando_http_status{code="200",route="hello"' in metrics.body


def _wait_status(port: int, path: str, status: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = request(port, "GET", path).status
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_an_edit_is_served_and_a_broken_edit_is_refused(gw: TextConfigGateway):
    text = _replace_once(DEFAULT_CONFIG, "\nroutes:\n", "\nroutes:\n" + NEW_ROUTE)
    gw.write_config(text)  # type: ignore[arg-type]
    assert _wait_status(gw.port, "/e2e-new", 200) == 200, gw.stderr()[-3000:]
    assert request(gw.port, "GET", "/e2e-new").json() == {"message": "added by an edit"}
    reloads = gw.wait_events("reload", lambda e: e.get("trigger") == "watch")
    assert reloads and reloads[-1]["result"] == "ok"
    assert reloads[-1]["applied"] == _workers()

    gw.write_config(text.replace("uri: /e2e-new", "uri: 5"))  # type: ignore[arg-type]
    failed = gw.wait_events("reload", lambda e: e.get("result") == "failed")
    assert failed, gw.stderr()[-3000:]
    assert any(d.startswith(f"{gw.config_path}:") for d in failed[-1]["diagnostics"])
    assert request(gw.port, "GET", "/e2e-new").status == 200  # the last good config serves

    gw.write_config(DEFAULT_CONFIG)  # type: ignore[arg-type]
    assert _wait_status(gw.port, "/e2e-new", 404) == 404


def test_ando_reload_signals_the_master(gw: TextConfigGateway, ando: Ando):
    assert gw.proc is not None
    before = len(gw.events("reload"))
    r = ando("reload", "-c", str(gw.config_path), env={"TMPDIR": str(gw.tmp_path)})
    assert r.returncode == 0, r.stderr
    pid = int(r.stderr.split("pid ")[1].split(";")[0])
    assert pid in descendants(gw.proc.pid)  # the interpreter under the bootloader, not it
    found = gw.wait_events("reload", lambda e: e.get("trigger") != "watch")
    assert len(gw.events("reload")) > before and found[-1]["result"] == "ok"


def test_sighup_and_sigusr1_to_the_binarys_pid_reach_the_master(gw: TextConfigGateway):
    """What systemd's `kill -HUP $MAINPID` and logrotate do: signal the process that was started
    (the bootloader), which passes the signal on to the master.

    Two signals sent back to back may each be handled twice: uvloop dispatches a signal both from
    its self-pipe byte and from the Python-level handler's record, and when the second signal lands
    between the two reads it is seen by both. Reloading or reopening twice is harmless, so the
    test asks for at least one of each and nothing failed."""
    assert gw.proc is not None
    if under_staticx(gw.proc.pid):
        pytest.skip("staticx's wrapper passes on only SIGTERM and SIGINT (docs/binary.md)")
    reloads, reopens = len(gw.events("reload")), len(gw.events("reopen_logs"))
    gw.proc.send_signal(signal.SIGHUP)
    gw.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        len(gw.events("reload")) == reloads or len(gw.events("reopen_logs")) == reopens
    ):
        time.sleep(0.05)
    new = gw.events("reload")[reloads:]
    outcomes = {(e["trigger"], e["result"]) for e in new}
    assert new and outcomes == {("signal", "ok")}, gw.stderr()[-2000:]
    assert len(gw.events("reopen_logs")) > reopens
    assert gw.proc.poll() is None


HELLO_USER = "mine.hello"


def test_a_lua_plugin_from_a_users_directory(
    ando_binary: Path, upstream: UpstreamServer, tmp_path: Path
):
    """lua/examples/hello_world.lua copied where a user keeps plugins, loaded by `ando.lua.paths`
    (not from the bundle), adding headers to an upstream's response."""
    plugins = tmp_path / "plugins" / "mine"
    plugins.mkdir(parents=True)
    (plugins / "hello.lua").write_bytes(
        (ROOT / "lua" / "examples" / "hello_world.lua").read_bytes()
    )
    config = {
        "ando": {"lua": {"paths": [str(tmp_path / "plugins")], "plugins": [HELLO_USER]}},
        "routes": [
            {
                "id": "r",
                "uri": "/*",
                "plugins": {"hello-world": {"headers": {"X-From": "a user's Lua"}}},
                "upstream": {"nodes": {upstream.addr: 1}},
            }
        ],
    }
    with GatewayProcess(config, tmp_path, command=[str(ando_binary)], cwd=tmp_path) as gw:
        r = request(gw.port, "GET", "/any")
        assert r.status == 200 and r.json()["path"] == "/any"
        assert r.header("X-From") == "a user's Lua"
        r = request(gw.port, "GET", "/other")
        assert r.header("X-From") == "a user's Lua"


def test_the_health_command_probes_readiness_as_a_healthcheck_would(
    gw: TextConfigGateway, ando: Ando
):
    ready = ando("health", f"http://127.0.0.1:{gw.status_port}/status/ready")
    assert ready.returncode == 0 and ready.stdout.startswith("200 "), ready.stderr
    missing = ando("health", f"http://127.0.0.1:{gw.status_port}/nope")
    assert missing.returncode == 1 and missing.stdout.startswith("404 ")
    closed = ando("health", f"http://127.0.0.1:{free_port()}/status/ready", "--timeout", "2")
    assert closed.returncode == 1 and "Connection refused" in closed.stderr
    assert ando("health", "ftp://x/").returncode == 2
