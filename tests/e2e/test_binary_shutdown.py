"""SIGTERM to the binary, as systemd or a container runtime sends it: to the one process it
started (the bootloader), not to a process group. The bootloader passes it to the interpreter
(the master), which drains its workers; everything exits 0, no process is left behind, and the
directory the bundle was unpacked into is removed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

from .binary import alive, descendants, under_staticx


@contextlib.contextmanager
def serving_binary(ando_binary: Path, tmp_path: Path, unpack: Path) -> Iterator[GatewayProcess]:
    """The binary serving one proxied route with two workers; its bundle unpacked in `unpack`."""
    with UpstreamServer("up") as up:
        config = {"routes": [{"uri": "/*", "upstream": {"nodes": {up.addr: 1}}}]}
        gw = GatewayProcess(
            config,
            tmp_path,
            workers=2,
            command=[str(ando_binary)],
            cwd=tmp_path,
            env={"TMPDIR": str(unpack)},
        )
        with gw:
            assert gw.proc is not None
            assert request(gw.port, "GET", "/x").status == 200
            yield gw


def wait_gone(tree: dict[int, str], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(tree)


def test_sigterm_exits_0_and_leaves_nothing_behind(ando_binary: Path, tmp_path: Path):
    unpack = tmp_path / "tmp"
    unpack.mkdir()
    with serving_binary(ando_binary, tmp_path, unpack) as gw:
        assert gw.proc is not None
        tree = descendants(gw.proc.pid)
        assert len(tree) >= 3, tree  # the interpreter (the master) and its two workers
        assert any(unpack.iterdir()), "the bundle was not unpacked under TMPDIR"
        try:
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(timeout=20) == 0, gw.stderr()[-3000:]
            assert wait_gone(tree, 5) == []
        finally:  # GatewayProcess.stop() cannot reach a tree whose top process is gone
            for pid in alive(tree):
                os.kill(pid, signal.SIGKILL)
    stopped = gw.events("stopped")
    assert stopped and stopped[-1]["mode"] == "graceful" and stopped[-1]["killed"] == 0
    assert [p.name for p in unpack.iterdir()] == []


def test_a_killed_bootloader_takes_the_gateway_down_with_it(ando_binary: Path, tmp_path: Path):
    """SIGKILL cannot be passed on: the master asked the kernel for a SIGTERM when its parent (the
    bootloader) dies, so it drains and exits instead of running on, orphaned."""
    unpack = tmp_path / "tmp"
    unpack.mkdir()
    with serving_binary(ando_binary, tmp_path, unpack) as gw:
        assert gw.proc is not None
        if under_staticx(gw.proc.pid):
            pytest.skip("staticx's wrapper is one more parent: its death is not the master's")
        tree = descendants(gw.proc.pid)
        try:
            gw.proc.kill()
            gw.proc.wait(timeout=10)
            assert wait_gone(tree, 20) == [], gw.stderr()[-3000:]
        finally:
            for pid in alive(tree):
                os.kill(pid, signal.SIGKILL)
    stopped = gw.events("stopped")
    assert stopped and stopped[-1]["mode"] == "graceful"
