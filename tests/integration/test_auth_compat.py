"""APISIX 3.x compatibility of the auth plugins, through a running gateway: the exact refusals a
client reads (status, JSON body, WWW-Authenticate), the configuration fields APISIX accepts, and
the headers the upstream receives. Each test names the APISIX source or page it follows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess

HMAC_REFUSED = {"message": "client request can't be validated"}


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def route(rid: str, uri: str, plugins: dict) -> dict:
        return {"id": rid, "uri": uri, "upstream": up, "plugins": plugins}

    config = {
        "consumers": [
            {
                "username": "jack",
                "plugins": {"hmac-auth": {"key_id": "jack-key", "secret_key": "jack-secret"}},
            },
        ],
        "routes": [
            route("hmac", "/hmac/*", {"hmac-auth": {}}),
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("authcompat"), access_log=False) as g:
        yield g


# --------------------------------------------------------------------------- hmac-auth


def test_hmac_says_why_when_the_authorization_header_is_missing_or_not_a_signature(gw, upstream):
    """apisix/plugins/hmac-auth.lua (3.x) explains the two failures found before validation
    (t/plugin/hmac-auth.t TEST 7: `{"message":"client request can't be validated: missing
    Authorization header"}`); every later failure stays the bare message."""
    upstream.requests.clear()
    r = request(gw.port, path="/hmac/x")
    assert (r.status, r.json()) == (
        401,
        {"message": "client request can't be validated: missing Authorization header"},
    )
    r = request(gw.port, path="/hmac/x", headers={"Authorization": "Basic abc"})
    assert (r.status, r.json()) == (
        401,
        {
            "message": "client request can't be validated: "
            "Authorization header does not start with 'Signature'"
        },
    )
    # a Signature header that does not validate: no reason given
    bad = 'Signature keyId="jack-key",algorithm="hmac-sha256",headers="date",signature="eA=="'
    r = request(gw.port, path="/hmac/x", headers={"Authorization": bad, "Date": "x"})
    assert (r.status, r.json()) == (401, HMAC_REFUSED)
    assert upstream.requests == []
