"""The `ando` command: validate, run, schema, version.

Exit codes are part of the interface (CI scripts branch on them): 0 success, 1 the config is
invalid, 2 bad usage or a file that cannot be read, 3 a command this build cannot carry out yet.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence

import orjson

from ando import __version__

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


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
    s = sub.add_parser(
        "schema", help="print a JSON Schema (the whole file, a resource or a plugin)"
    )
    s.add_argument("name", nargs="?", default="ando", metavar="NAME")
    s.add_argument("--list", action="store_true", help="list the schema names")
    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args.file, args.format)
        if args.command == "run":
            return _run(args.config)
        if args.command == "schema":
            return _schema(args.name, args.list)
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


def _run(file: str) -> int:
    from ando.config.diagnostics import ConfigError, render_text
    from ando.config.source import UnreadableConfig

    try:
        snapshot = _load(file)
    except UnreadableConfig as e:
        print(f"ando: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(render_text(e.diagnostics), file=sys.stderr)
        print(f"ando: {file} is invalid; not starting", file=sys.stderr)
        return EXIT_INVALID
    print(f"ando: {file} loaded: {snapshot.summary()}", file=sys.stderr)
    print(
        "ando: serving traffic is not built yet (the data plane is a later milestone); "
        "nothing is listening. Exiting.",
        file=sys.stderr,
    )
    return EXIT_UNAVAILABLE


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
