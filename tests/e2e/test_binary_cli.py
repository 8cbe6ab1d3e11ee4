"""The binary's one-shot commands, as a user on a device runs them: version, validate (valid and
broken files, exit codes, FILE:LINE:COL messages), init, schema, explain.

Each run starts the bundled interpreter afresh, so each one also checks that the modules its
command imports lazily (jsonschema for a refused file, the Lua runtime for Lua plugins, ...) are
inside the file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import pytest

from ando import __version__

from .binary import Ando

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_the_release_and_the_machine(ando: Ando):
    # ANDO_BINARY_MACHINE: the binary's machine when it is not this host's (aarch64 under qemu)
    machine = os.environ.get("ANDO_BINARY_MACHINE") or platform.machine()
    r = ando("version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ando {__version__} (Python 3.")
    assert r.stdout.rstrip().endswith(f"linux {machine})")
    assert r.stderr == ""


def test_validate_the_default_config(ando: Ando, tmp_path: Path):
    config = tmp_path / "ando.yaml"
    shutil.copy(ROOT / "config" / "ando.yaml", config)  # it loads Lua plugins from the bundle
    r = ando("validate", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{config}: valid: routes 7, services 1, upstreams 1, consumers 1")
    r = ando("validate", str(config), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


BROKEN = [
    (
        "schema",
        "routes:\n  - uri: /a\n    methods: [GTE]\n    upstream_id: u\nupstreams: {}\n",
        [
            '{f}:3:15: routes[0].methods[0]: "GTE" is not one of "GET", "POST", "PUT", "DELETE", '
            '"PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"; did you mean \'GET\'?',
            "{f}:5:12: upstreams: expected a list of upstreams, got dict",
        ],
    ),
    (
        "plugin",
        "routes:\n  - uri: /a\n    plugins:\n      key-auth: {header: 5}\n    upstream: {nodes: {'a:1': 1}}\n",
        ["{f}:4:26: routes[0].plugins.key-auth.header: expected string, got integer 5"],
    ),
    (
        "reference",
        "routes:\n  - uri: /a\n    upstream_id: missing\n",
        [
            "{f}:3:18: routes[0].upstream_id: 'missing' does not exist: the file defines no "
            "upstreams"
        ],
    ),
    (
        "lua-plugin-conf",
        "ando:\n  lua: {plugins: [examples.hello_world]}\nroutes:\n  - uri: /a\n"
        "    plugins:\n      hello-world: {headers: {X-A: 1}}\n    upstream: {nodes: {'a:1': 1}}\n",
        ["{f}:6:36: routes[0].plugins.hello-world.headers.X-A: expected string, got integer 1"],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_validate_a_broken_file_exits_1_with_file_line_col(
    ando: Ando, tmp_path: Path, name: str, text: str, expected: list[str]
):
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    r = ando("validate", str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.strip().splitlines() == [e.format(f=f) for e in expected]
    n = len(expected)
    assert f"{f}: invalid: {n} problem{'s' if n > 1 else ''}" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_json_format_gives_line_and_column(ando: Ando, tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("routes:\n  - uri: /a\n    upstream: {nodes: {'a:1': 1}, type: nope}\n")
    r = ando("validate", str(f), "--format", "json")
    assert r.returncode == 1
    (item,) = json.loads(r.stdout)
    assert (item["file"], item["line"], item["column"]) == (str(f), 3, 41)
    assert item["path"] == "routes[0].upstream.type"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"routes:\n  - uri: [unclosed\n", "invalid YAML"),
        (bytes(range(256)) * 4, "not UTF-8 text"),
    ],
    ids=["malformed-yaml", "binary"],
)
def test_validate_unparsable_files_exit_1(ando: Ando, tmp_path: Path, data: bytes, message: str):
    f = tmp_path / "x.yaml"
    f.write_bytes(data)
    r = ando("validate", str(f))
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stdout and r.stdout.startswith(f"{f}:")
    assert "Traceback" not in r.stdout + r.stderr


def test_validate_unreadable_file_and_bad_usage_exit_2(ando: Ando, tmp_path: Path):
    r = ando("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "No such file" in r.stderr
    r = ando("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_init_writes_a_starter_that_validates(ando: Ando, tmp_path: Path):
    r = ando("init", str(tmp_path))
    assert r.returncode == 0, r.stderr
    schema = json.loads((tmp_path / "ando.schema.json").read_text())
    assert schema["type"] == "object" and "routes" in schema["properties"]
    r = ando("validate", str(tmp_path / "ando.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_prints_a_plugin_schema(ando: Ando):
    r = ando("schema", "plugins/key-auth")
    assert r.returncode == 0, r.stderr
    assert "header" in json.loads(r.stdout)["properties"]


def test_explain_names_the_route_and_the_lua_plugins(ando: Ando, tmp_path: Path):
    config = tmp_path / "ando.yaml"
    shutil.copy(ROOT / "config" / "ando.yaml", config)
    r = ando("explain", "-c", str(config), "GET", "http://localhost/lua", "--format", "json")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert '"lua"' in text and "hello-world" in text and "custom-auth" in text
