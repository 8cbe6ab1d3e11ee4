"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.upstream import UpstreamServer


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    """One echoing upstream per test module, for the gateway a module starts (a module that
    defines its own `upstream` fixture uses that one instead)."""
    with UpstreamServer("up") as up:
        yield up


@pytest.fixture(scope="module")
def up(upstream: UpstreamServer) -> dict[str, Any]:
    """`upstream` as an APISIX upstream object, for the routes of the module's gateway."""
    return {"nodes": {upstream.addr: 1}}
