"""`ando validate` from a test: a YAML text through the real built-in catalog, as a file named
t.yaml (so a diagnostic reads `t.yaml:LINE:COL: message`)."""

from __future__ import annotations

import pytest

from ando.config.diagnostics import ConfigError
from ando.config.snapshot import Snapshot
from ando.config.source import snapshot_from_text

# An upstream for routes that are only validated, never served.
UP = "upstream: {nodes: {'127.0.0.1:1980': 1}}"


def snapshot(text: str) -> Snapshot:
    """The snapshot a valid text compiles to (raises ConfigError for an invalid one)."""
    return snapshot_from_text(text, "t.yaml", environ={})


def config_problems(text: str) -> list[str]:
    """The diagnostics of a text that must be refused, formatted as `ando validate` prints them."""
    with pytest.raises(ConfigError) as e:
        snapshot(text)
    return [d.format() for d in e.value.diagnostics]
