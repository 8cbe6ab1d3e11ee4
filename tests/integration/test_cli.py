"""The `ando` command as a user runs it: exit codes, output formats, and hostile input files.

Every hostile input must end in a clear message and exit 1 or 2, quickly, with no traceback.
The subprocess timeout bounds "quickly"; it is a hang guard, not a performance assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "apisix"


def ando(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ANDO_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ando", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=full_env,
    )


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_version():
    r = ando("version")
    assert r.returncode == 0 and r.stdout.startswith("ando 0.")


def test_validate_valid_file_prints_one_summary_line():
    r = ando("validate", "config/ando.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config/ando.yaml: valid: routes 7, services 1, upstreams 1")


def test_validate_apisix_standalone_file():
    r = ando("validate", str(FIXTURES / "upstream-refs.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate_invalid_file_lists_every_problem_and_exits_1(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("routes:\n  - uri: /a\n    methods: [GTE]\n    upstream_id: u\nupstreams: {}\n")
    r = ando("validate", str(f))
    assert r.returncode == 1
    out = r.stdout.strip().splitlines()
    assert out == [
        f'{f}:3:15: routes[0].methods[0]: "GTE" is not one of "GET", "POST", "PUT", "DELETE", "PATCH", '
        '"HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"; did you mean \'GET\'?',
        f"{f}:5:12: upstreams: expected a list of upstreams, got dict",
    ]
    assert "invalid: 2 problems" in r.stderr


def test_validate_json_format(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("routes:\n  - uri: /a\n    upstream: {nodes: {'a:1': 1}, type: nope}\n")
    r = ando("validate", str(f), "--format", "json")
    assert r.returncode == 1
    (item,) = json.loads(r.stdout)
    message = item.pop("message")
    assert item == {
        "file": str(f),
        "line": 3,
        "column": 41,
        "pointer": "/routes/0/upstream/type",
        "path": "routes[0].upstream.type",
    }
    assert message.startswith('"nope" is not one of "roundrobin", "chash"')
    ok = ando("validate", "config/ando.yaml", "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout) == []


def test_env_substitution_reaches_the_validator(tmp_path):
    f = tmp_path / "env.yaml"
    f.write_text("routes:\n  - uri: /a\n    upstream:\n      nodes: {'${{UP}}': 1}\n")
    assert ando("validate", str(f), env={"UP": "10.1.2.3:8080"}).returncode == 0
    r = ando("validate", str(f), env={"UP": ""})
    assert r.returncode == 1
    r = ando("validate", str(f))
    assert r.returncode == 1 and "UP not set" in r.stdout


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        ((), "missing command"),
        (("validate",), "the following arguments are required: FILE"),
        (("frobnicate",), "invalid choice"),
        (("validate", "x.yaml", "--format", "xml"), "invalid choice"),
        (("run",), "the following arguments are required: -c/--config"),
        (("schema", "nope"), "no schema named 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_a_one_line_hint(args, hint):
    r = ando(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and "try 'ando" in lines[0]


def test_unreadable_inputs_exit_2(tmp_path):
    r = ando("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "No such file" in r.stderr
    r = ando("validate", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr
    assert_no_traceback(r)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("garbage.yaml", bytes(range(256)) * 64, "not UTF-8 text"),
        ("nul.yaml", b"routes: []\n\x00\x01", "binary data (NUL byte)"),
        ("malformed.yaml", b"routes:\n  - uri: [unclosed\n", "invalid YAML"),
        ("types.yaml", b"routes: 5\nupstreams: [1, 2]\n", "expected a list of routes"),
        ("scalar.yaml", b"just a string\n", "the top level must be a mapping"),
        ("tab.yaml", b"routes:\n\t- uri: /a\n", "invalid YAML"),
        (
            "bomb.yaml",
            b"a: &a [x,x,x,x,x,x,x,x,x]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [".encode()
                + b",".join([f"*{chr(97 + i)}".encode()] * 9)
                + b"]\n"
                for i in range(8)
            ),
            "alias bomb",
        ),
        ("deep.yaml", b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nesting deeper than"),
        ("deepmap.yaml", b"".join(b"  " * i + b"k:\n" for i in range(5000)), "nesting deeper than"),
    ],
)
def test_hostile_files_get_a_clear_diagnostic(tmp_path, name, data, message):
    r = ando("validate", str(_write(tmp_path, name, data)), timeout=30)
    assert_no_traceback(r)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stdout
    first = r.stdout.splitlines()[0]
    assert first.startswith(str(tmp_path / name) + ":")


def test_huge_file_is_refused_without_parsing(tmp_path):
    p = tmp_path / "huge.yaml"
    with open(p, "wb") as f:
        f.write(b"routes:\n")
        chunk = b"  - {uri: /a, upstream_id: u}\n" * 10_000
        while f.tell() < 50 * 1024 * 1024:
            f.write(chunk)
    r = ando("validate", str(p), timeout=30)
    assert_no_traceback(r)
    assert r.returncode == 1 and "limited to 32 MiB" in r.stdout


def test_run_refuses_an_invalid_config_with_exit_1(tmp_path):
    f = _write(tmp_path, "bad.yaml", b"routes:\n  - uri: /a\n    upstream_id: nope\n")
    r = ando("run", "-c", str(f))
    assert r.returncode == 1
    assert f"{f}:3:18: routes[0].upstream_id" in r.stderr and "not starting" in r.stderr


def test_explain_names_the_route_the_reasons_and_the_upstream():
    fixture = str(FIXTURES / "upstream-refs.yaml")
    r = ando("explain", "-c", fixture, "GET", "http://example.org/api/users?id=1")
    assert r.returncode == 0, r.stderr
    assert "=> 1  uri /api/*: matched" in r.stdout
    assert (
        "upstream: 1 roundrobin: 127.0.0.1:1980 (weight 1), 127.0.0.1:1981 (weight 3)" in r.stdout
    )
    assert r.stdout.rstrip().splitlines()[-1].startswith("outcome:  proxied to 127.0.0.1:198")
    # Host, vars and remote_addr decide route 2; from 127.0.0.1 its remote_addrs refuse.
    args = (
        "explain",
        "-c",
        fixture,
        "GET",
        "http://api.example.com/v1/x?version=2",
        "-H",
        "X-Env: prod",
    )
    r = ando(*args, "--remote-addr", "10.1.2.3")
    assert "=> 2  uri /v1/* [host api.example.com]: matched" in r.stdout
    r = ando(*args)
    assert "remote_addr 127.0.0.1 not in remote_addrs" in r.stdout
    assert 'outcome:  404 {"error_msg":"404 Route Not Found"}' in r.stdout
    r = ando(*args, "--remote-addr", "10.1.2.3", "--format", "json")
    data = json.loads(r.stdout)
    assert data["route"]["id"] == "2" and data["upstream"]["id"] == "backend2"


def test_explain_refuses_what_the_gateway_would_refuse():
    fixture = str(FIXTURES / "upstream-refs.yaml")
    r = ando("explain", "-c", fixture, "GET", "http://x/a/%2F..")
    assert r.returncode == 2 and "400" in r.stderr
    r = ando("explain", "-c", fixture, "GET", "http://x/", "--remote-addr", "nope")
    assert r.returncode == 2 and "not an IP address" in r.stderr


def test_schema_command_prints_standalone_schemas():
    r = ando("schema")
    assert r.returncode == 0
    whole = json.loads(r.stdout)
    assert "routes" in whole["properties"] and "$ref" not in r.stdout  # bundled: no dangling refs
    r = ando("schema", "route")
    route = json.loads(r.stdout)
    assert "uri" in route["properties"] and "upstream" in route["properties"]
    names = ando("schema", "--list").stdout.split()
    assert {"ando", "route", "upstream", "node"} <= set(names)
