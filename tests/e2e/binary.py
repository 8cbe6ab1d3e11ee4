"""Helpers for the tests of the single-file binary: running its commands, and its process tree
(bootloader, interpreter, workers) read from /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.procs import alive, descendants

__all__ = ["Ando", "alive", "descendants", "under_staticx"]


class Ando:
    """Runs `ando ARGS` from the binary, in a directory outside the checkout (nothing of the
    repository can be found by a relative path), with a hang guard."""

    def __init__(self, binary: Path, cwd: Path) -> None:
        self.binary = binary
        self.cwd = cwd

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        # TMPDIR: the bundle unpacks there; a run cut short leaves its copy in pytest's tmp
        full_env = {**os.environ, "TMPDIR": str(self.cwd), **(env or {})}
        for name in ("ANDO_DEBUG", "ANDO_SCHEMAS_DIR"):  # the bundle's own schemas, no debug
            full_env.pop(name, None)
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env=full_env,
        )


def under_staticx(pid: int) -> bool:
    """Whether `pid` is staticx's wrapper (the static variant's top process): it passes on only
    SIGTERM and SIGINT, so tests of other signals sent to the top process do not apply."""
    for child in descendants(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes()
        except OSError:
            continue
        if b"STATICX_PROG_PATH=" in environ:
            return True
    return False
