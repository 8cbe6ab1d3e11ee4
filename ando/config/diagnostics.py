"""Problems found in a config, each tied to a place in the file a human can jump to.

Every stage of the config flow (reading, YAML, substitution, schema, cross-references) reports
into one list of Diagnostic so that `ando validate` shows every problem in a single pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

Path = tuple[str | int, ...]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def dotted(path: Path) -> str:
    """Render a path the way the user reads YAML: `routes[2].upstream.nodes["10.0.0.1:80"]`."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append("[" + orjson.dumps(part).decode() + "]")
    return "".join(out)


def pointer(path: Path) -> str:
    """RFC 6901 JSON pointer, for tools that consume `--format json`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when the problem has no place in the file (e.g. it cannot be read)
    column: int  # 1-based
    path: Path
    message: str

    def format(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        what = dotted(self.path)
        return f"{where}: {what}: {self.message}" if what else f"{where}: {self.message}"

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "pointer": pointer(self.path),
            "path": dotted(self.path),
            "message": self.message,
        }


def sort_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Order by position in the file; drop exact repeats (two stages may notice one problem)."""
    seen: set[tuple[int, int, Path, str]] = set()
    unique: list[Diagnostic] = []
    for d in diags:
        key = (d.line, d.column, d.path, d.message)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    unique.sort(key=lambda d: (d.line, d.column, dotted(d.path), d.message))
    return unique


def render_text(diags: Sequence[Diagnostic]) -> str:
    return "\n".join(d.format() for d in diags)


def render_json(diags: Sequence[Diagnostic]) -> str:
    return orjson.dumps([d.as_json() for d in diags], option=orjson.OPT_INDENT_2).decode()


class ConfigError(Exception):
    """Raised when a config cannot become a Snapshot; carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = sort_diagnostics(diagnostics)
        first = self.diagnostics[0].format() if self.diagnostics else "invalid config"
        more = len(self.diagnostics) - 1
        super().__init__(first + (f" (and {more} more)" if more > 0 else ""))
