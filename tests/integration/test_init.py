"""`ando init`: the starter config validates, serves at once, and is never written over silently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.client import request
from tests.support.gateway import ROOT, wait_port
from tests.support.upstream import free_port


def ando(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ando", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_init_writes_a_config_that_validates_and_a_schema_for_editors(tmp_path: Path):
    r = ando("init", str(tmp_path))
    assert r.returncode == 0, r.stderr
    config = tmp_path / "ando.yaml"
    assert config.read_text().startswith("# yaml-language-server: $schema=ando.schema.json")
    schema = json.loads((tmp_path / "ando.schema.json").read_text())
    assert "routes" in schema["properties"] and "$ref" not in json.dumps(schema["properties"])
    r = ando("validate", str(config))
    assert r.returncode == 0, r.stdout + r.stderr


def test_init_never_replaces_a_config_unless_forced(tmp_path: Path):
    config = tmp_path / "ando.yaml"
    config.write_text("routes: []\n")
    r = ando("init", str(tmp_path))
    assert r.returncode == 1 and "exists" in r.stderr
    assert config.read_text() == "routes: []\n"
    assert ando("init", "--force", str(tmp_path)).returncode == 0
    assert "hello" in config.read_text()
    r = ando("init", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_the_starter_config_serves(tmp_path: Path):
    assert ando("init", str(tmp_path)).returncode == 0
    config = tmp_path / "ando.yaml"
    # Keep the side listeners off their fixed default ports, which other processes may hold.
    text = config.read_text().replace(
        "\nando:\n",
        "\nando:\n  observability:\n"
        f'    status: {{listen: "127.0.0.1:{free_port()}"}}\n'
        f'    prometheus: {{listen: "127.0.0.1:{free_port()}"}}\n',
        1,
    )
    config.write_text(text)
    port = free_port()
    env = {**os.environ, "ANDO_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ando", "run", "-c", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_port(port, proc=proc)
        r = request(port, path="/hello")
        assert (r.status, r.json()) == (200, {"message": "hello from Ando"})
        r = request(port, path="/api/items")
        assert (r.status, r.json()) == (401, {"message": "Missing API key in request"})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
