"""From a path on disk to a Snapshot: the single entry point `ando validate` and `ando run` share.

Reading refuses what should never reach the YAML parser (directories, huge files, binary data),
each with a message a user can act on; everything after that reports as Diagnostics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ando.config.compile import build_snapshot
from ando.config.diagnostics import ConfigError, Diagnostic
from ando.config.snapshot import Snapshot
from ando.config.yamlload import Document, YamlError, load_yaml
from ando.plugins.catalog import PluginCatalog

MAX_FILE_BYTES = 32 * 1024 * 1024


class UnreadableConfig(Exception):
    """The file could not be read at all (missing, a directory, no permission): exit code 2."""


def read_text(path: str) -> str:
    try:
        if os.path.isdir(path):
            raise UnreadableConfig(f"{path}: is a directory, not a config file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ConfigError([Diagnostic(path, 0, 0, (), _too_large(size))])
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UnreadableConfig(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:  # a pipe or a file still growing
        raise ConfigError([Diagnostic(path, 0, 0, (), _too_large(len(raw)))])
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            [Diagnostic(path, line, col, (), f"not UTF-8 text (byte 0x{raw[e.start]:02x})")]
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise ConfigError(
            [Diagnostic(path, line, col, (), "binary data (NUL byte) in a YAML file")]
        )
    return text


def _too_large(size: int) -> str:
    return (
        f"file is {size / 1048576:.1f} MiB; config files are limited to "
        f"{MAX_FILE_BYTES // 1048576} MiB"
    )


def parse_document(
    text: str, file: str, environ: Mapping[str, str] | None = None
) -> tuple[Document, list[Diagnostic]]:
    env = dict(os.environ if environ is None else environ)
    try:
        return load_yaml(text, file, env)
    except YamlError as e:
        raise ConfigError([Diagnostic(file, e.line, e.column, (), e.message)]) from None


def load_snapshot(
    path: str,
    *,
    environ: Mapping[str, str] | None = None,
    catalog: PluginCatalog | None = None,
) -> Snapshot:
    """Read, parse, validate and compile `path`. Raises UnreadableConfig or ConfigError (with
    every diagnostic); never anything else for any file content."""
    text = read_text(path)
    return snapshot_from_text(text, path, environ=environ, catalog=catalog)


def snapshot_from_text(
    text: str,
    file: str,
    *,
    environ: Mapping[str, str] | None = None,
    catalog: PluginCatalog | None = None,
) -> Snapshot:
    doc, diags = parse_document(text, file, environ)
    return build_snapshot(doc, catalog=catalog, early=diags)
