"""The single-file binary under test, named by ANDO_BINARY (`make test` builds it and sets it).

Unset: every test here is skipped, with the reason, so `pytest` in a checkout without a built
binary still runs everything else. Set but missing (or not executable): every test here fails,
so a broken build can never pass as a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .binary import Ando


@pytest.fixture(scope="session")
def ando_binary() -> Path:
    name = os.environ.get("ANDO_BINARY")
    if not name:
        pytest.skip("ANDO_BINARY is not set: build the binary (make binary) and name it there")
    path = Path(name).resolve()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"ANDO_BINARY={name}: no executable file there", pytrace=False)
    return path


@pytest.fixture(scope="session")
def ando(ando_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Ando:
    return Ando(ando_binary, tmp_path_factory.mktemp("cwd"))
