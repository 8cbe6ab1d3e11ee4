"""The `ando` command: validate, run, reload, explain, schema, init, health, version.

Exit codes are part of the interface (CI scripts branch on them): 0 success, 1 the config is
invalid, 2 bad usage or a file that cannot be read.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence

import orjson

from ando import __version__

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
DEFAULT_HEALTH_URL = "http://127.0.0.1:7085/status/ready"  # ando.observability.status's default


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with a hint, not the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (try '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ando", description="Ando: an API gateway for the edge, in APISIX's language.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    v = sub.add_parser("validate", help="check a config file and report every problem")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--format", choices=("text", "json"), default="text")
    r = sub.add_parser("run", help="validate the config and serve it")
    r.add_argument("-c", "--config", required=True, metavar="FILE")
    r.add_argument("--pid-file", metavar="PATH", help="where to write the master's pid")
    h = sub.add_parser("reload", help="make the running gateway reload its config (SIGHUP)")
    h.add_argument("-c", "--config", metavar="FILE", help="the file `ando run -c` was given")
    h.add_argument("--pid-file", metavar="PATH", help="the pid file `ando run` was given")
    e = sub.add_parser("explain", help="show which route, plugins and upstream a request would get")
    e.add_argument("-c", "--config", required=True, metavar="FILE")
    e.add_argument("method", metavar="METHOD")
    e.add_argument("url", metavar="URL")
    e.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'")
    e.add_argument("--remote-addr", default="127.0.0.1", metavar="IP")
    e.add_argument("--format", choices=("text", "json"), default="text")
    s = sub.add_parser(
        "schema", help="print a JSON Schema (the whole file, a resource or a plugin)"
    )
    s.add_argument("name", nargs="?", default="ando", metavar="NAME")
    s.add_argument("--list", action="store_true", help="list the schema names")
    i = sub.add_parser(
        "init", help="write a commented starter ando.yaml (and ando.schema.json for editors)"
    )
    i.add_argument("dir", nargs="?", default=".", metavar="DIR")
    i.add_argument("--force", action="store_true", help="replace an existing ando.yaml")
    k = sub.add_parser(
        "health",
        help="probe a running node's readiness (for container HEALTHCHECKs): exit 0 if ready",
    )
    k.add_argument("url", nargs="?", default=DEFAULT_HEALTH_URL, metavar="URL")
    k.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "reload" and not (args.config or args.pid_file):
        parser.error("reload: give -c FILE (or --pid-file PATH) to find the running gateway")
    try:
        if args.command == "validate":
            return _validate(args.file, args.format)
        if args.command == "run":
            return _run(args.config, args.pid_file)
        if args.command == "reload":
            return _reload(args.config, args.pid_file)
        if args.command == "explain":
            return _explain(args)
        if args.command == "schema":
            return _schema(args.name, args.list)
        if args.command == "init":
            return _init(args.dir, args.force)
        if args.command == "health":
            return _health(args.url, args.timeout)
        if args.command == "version":
            print(
                f"ando {__version__} (Python {platform.python_version()}, "
                f"{sys.platform} {platform.machine()})"
            )
            return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug in Ando: say so in one line rather than dump a traceback
        print(f"ando: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("ANDO_DEBUG"):
            raise
        return 70
    print("ando: missing command (try 'ando --help')", file=sys.stderr)
    return EXIT_USAGE


def _health(url: str, timeout: float) -> int:
    """One GET of the status endpoint, standard library only and without reading any config, so
    a distroless image's HEALTHCHECK can run the binary itself: 0 when it answers 200, 1 for any
    other answer (503 while draining) or none, 2 for a URL that is not http://host[:port]/path."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or timeout <= 0:
        print(f"ando: health: expected http://HOST[:PORT]/PATH, got {url!r}", file=sys.stderr)
        return EXIT_USAGE
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        body = resp.read(4096).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as e:
        print(f"ando: health: {url}: {e}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        conn.close()
    print(f"{resp.status} {body}")
    return EXIT_OK if resp.status == 200 else EXIT_INVALID


def _load(file: str):  # -> Snapshot, but imported lazily to keep `ando version` instant
    from ando.config.source import load_snapshot

    return load_snapshot(file)


def _validate(file: str, fmt: str) -> int:
    from ando.config.diagnostics import ConfigError, render_json, render_text
    from ando.config.source import UnreadableConfig

    try:
        snapshot = _load(file)
    except UnreadableConfig as e:
        if fmt == "json":
            print(
                orjson.dumps(
                    [
                        {
                            "file": file,
                            "line": 0,
                            "column": 0,
                            "pointer": "",
                            "path": "",
                            "message": str(e),
                        }
                    ]
                ).decode()
            )
        else:
            print(f"ando: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        if fmt == "json":
            print(render_json(e.diagnostics))
        else:
            print(render_text(e.diagnostics))
            n = len(e.diagnostics)
            print(f"{file}: invalid: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        return EXIT_INVALID
    if fmt == "json":
        print("[]")
    else:
        print(f"{file}: valid: {snapshot.summary()}")
    return EXIT_OK


def _run(file: str, pid_file: str | None) -> int:
    from ando.runtime.master import run

    return run(file, pid_file=pid_file)


def _reload(file: str | None, pid_file: str | None) -> int:
    """SIGHUP to the master. The result of the reload is in the gateway's log, not here: the
    master validates with its own environment, which `${{VAR}}` substitution depends on."""
    import signal

    from ando.runtime.pidfile import PidFileError, default_pid_file, signal_master

    path = pid_file or default_pid_file(file or "")
    try:
        pid = signal_master(path, signal.SIGHUP, config_hint=file)
    except PidFileError as e:
        print(f"ando: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(f"ando: reload signal sent to pid {pid}; the result is in its log", file=sys.stderr)
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    import ipaddress

    from ando.config.diagnostics import ConfigError, render_text
    from ando.config.source import UnreadableConfig
    from ando.proxy.explain import ExplainError, explain
    from ando.proxy.explain import render_text as render_explanation

    try:
        ipaddress.ip_address(args.remote_addr)
    except ValueError:
        print(f"ando: --remote-addr '{args.remote_addr}' is not an IP address", file=sys.stderr)
        return EXIT_USAGE
    try:
        snapshot = _load(args.config)
    except UnreadableConfig as e:
        print(f"ando: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(render_text(e.diagnostics), file=sys.stderr)
        return EXIT_INVALID
    try:
        result = explain(snapshot, args.method, args.url, args.header, args.remote_addr)
    except ExplainError as e:
        print(f"ando: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "json":
        print(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_explanation(result))
    return EXIT_OK


def _init(directory: str, force: bool) -> int:
    from ando.config.schemas import bundle, read_schema_file, schema_file
    from ando.starter import STARTER

    target = os.path.join(directory, "ando.yaml")
    if not os.path.isdir(directory):
        print(f"ando: {directory}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    if os.path.exists(target) and not force:
        print(f"ando: {target} exists; not replacing it (use --force)", file=sys.stderr)
        return EXIT_INVALID
    schema_path = schema_file("ando")
    assert schema_path is not None
    schema = bundle(read_schema_file(schema_path), schema_path)
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(STARTER)
        with open(os.path.join(directory, "ando.schema.json"), "wb") as f:
            f.write(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as e:
        print(f"ando: cannot write {target}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {target}; check it with: ando validate {target}")
    print(f"serve it with: ando run -c {target}")
    return EXIT_OK


def _schema(name: str, list_only: bool) -> int:
    from ando.config.schemas import bundle, read_schema_file, schema_file, schema_names

    if list_only:
        print("\n".join(schema_names()))
        return EXIT_OK
    path = schema_file(name)
    if path is None:
        print(f"ando: no schema named '{name}' (try 'ando schema --list')", file=sys.stderr)
        return EXIT_USAGE
    # Bundled, so the printed schema stands alone (no relative $refs) wherever it is saved.
    sys.stdout.write(
        orjson.dumps(bundle(read_schema_file(path), path), option=orjson.OPT_INDENT_2).decode()
        + "\n"
    )
    return EXIT_OK
