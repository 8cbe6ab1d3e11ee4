"""APISIX 3.x compatibility of the auth plugins, through a running gateway: the exact refusals a
client reads (status, JSON body, WWW-Authenticate), the configuration fields APISIX accepts, and
the headers the upstream receives. Each test names the APISIX source or page it follows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import echoed_headers

HMAC_REFUSED = {"message": "client request can't be validated"}


def consumer_seen(r) -> list[str]:
    return echoed_headers(r).get("x-consumer-username", [])


def route(up: dict[str, Any], rid: str, uri: str, plugins: dict) -> dict:
    """A route to the module's upstream with these plugins."""
    return {"id": rid, "uri": uri, "upstream": up, "plugins": plugins}


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "consumers": [
            {
                "username": "jack",
                "plugins": {"hmac-auth": {"key_id": "jack-key", "secret_key": "jack-secret"}},
            },
        ],
        "routes": [
            route(up, "hmac", "/hmac/*", {"hmac-auth": {}}),
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


# --------------------------------------------------------------------------- key-auth


@pytest.fixture(scope="module")
def key_gw(
    up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = {
        "consumers": [
            {
                "username": "jack",
                "labels": {"custom_id": "cust-jack"},
                "plugins": {"key-auth": {"key": "jack-key"}},
            },
            {"username": "jill", "plugins": {"key-auth": {"key": "jill-key"}}},
            {"username": "anon", "plugins": {}},
        ],
        "routes": [
            route(up, "key", "/key/*", {"key-auth": {}}),
            route(up, "key-realm", "/key-realm/*", {"key-auth": {"realm": "shop"}}),
            route(
                up,
                "key-anon",
                "/key-anon/*",
                {"key-auth": {"anonymous_consumer": "anon", "hide_credentials": True}},
            ),
            route(
                up,
                "key-anon-gone",
                "/key-anon-gone",
                {"key-auth": {"anonymous_consumer": "nobody"}},
            ),
            {"id": "open", "uri": "/open/*", "upstream": up},
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("keycompat"), access_log=False) as g:
        yield g


def test_key_auth_refusals_carry_an_apikey_challenge(key_gw, upstream):
    """apisix/plugins/key-auth.lua (3.15+): every 401 carries `WWW-Authenticate: apikey
    realm="<realm>"`, `realm` defaulting to "key" (docs: plugins/key-auth, Attributes)."""
    upstream.requests.clear()
    for path, headers, body, realm in [
        ("/key/x", {}, {"message": "Missing API key in request"}, "key"),
        ("/key/x", {"apikey": "nope"}, {"message": "Invalid API key in request"}, "key"),
        ("/key-realm/x", {}, {"message": "Missing API key in request"}, "shop"),
    ]:
        r = request(key_gw.port, path=path, headers=headers)
        assert (r.status, r.json()) == (401, body), path
        assert r.header("WWW-Authenticate") == f'apikey realm="{realm}"'
    assert upstream.requests == []
    r = request(key_gw.port, path="/key/x", headers={"apikey": "jack-key"})
    assert r.status == 200 and r.header("WWW-Authenticate") is None


def test_key_auth_anonymous_consumer(key_gw):
    """APISIX 3.x key-auth has `anonymous_consumer` (docs: plugins/key-auth): without a valid
    key the request goes on as that consumer; with hide_credentials, an invalid key is removed
    from both the header and the query before it does (apache/apisix#13468)."""
    r = request(key_gw.port, path="/key-anon/x", headers={"X-Consumer-Username": "jack"})
    assert r.status == 200 and consumer_seen(r) == ["anon"]
    r = request(key_gw.port, path="/key-anon/x?apikey=wrong&a=1", headers={"apikey": "bad"})
    assert r.status == 200 and consumer_seen(r) == ["anon"]
    assert "apikey" not in echoed_headers(r) and r.json()["query"] == "a=1"
    r = request(key_gw.port, path="/key-anon/x?a=1", headers={"apikey": "jack-key"})
    assert r.status == 200 and consumer_seen(r) == ["jack"]
    assert "apikey" not in echoed_headers(r)
    # an anonymous consumer that does not exist: APISIX's 401, with the challenge
    r = request(key_gw.port, path="/key-anon-gone")
    assert (r.status, r.json()) == (401, {"message": "Invalid user authorization"})
    assert r.header("WWW-Authenticate") == 'apikey realm="key"'


# --------------------------------------------------------------------------- jwt-auth

JWT_SECRET = "jack-jwt-secret-of-thirty-two-bytes!"


def jwt_token(**claims: Any) -> str:
    return jwt.encode({"key": "jack-key", **claims}, JWT_SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def jwt_gw(
    up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = {
        "consumers": [
            {
                "username": "jack",
                "plugins": {"jwt-auth": {"key": "jack-key", "secret": JWT_SECRET}},
            },
        ],
        "routes": [
            route(up, "jwt", "/jwt/*", {"jwt-auth": {}}),
            route(up, "jwt-realm", "/jwt-realm/*", {"jwt-auth": {"realm": "api"}}),
            route(up, "jwt-exp", "/jwt-exp/*", {"jwt-auth": {"claims_to_verify": ["exp"]}}),
            route(
                up,
                "jwt-anon-gone",
                "/jwt-anon-gone",
                {"jwt-auth": {"anonymous_consumer": "nobody"}},
            ),
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("jwtcompat"), access_log=False) as g:
        yield g


def test_jwt_refusals_carry_a_bearer_challenge(jwt_gw, upstream):
    """apisix/plugins/jwt-auth.lua (3.15+): every 401 carries `WWW-Authenticate: Bearer
    realm="<realm>"`, `realm` defaulting to "jwt" (docs: plugins/jwt-auth, Attributes)."""
    upstream.requests.clear()
    expired = jwt_token(exp=int(time.time()) - 60)
    for path, headers, message, realm in [
        ("/jwt/x", {}, "Missing JWT token in request", "jwt"),
        ("/jwt/x", {"Authorization": "garbage"}, "JWT token invalid", "jwt"),
        ("/jwt/x", {"Authorization": expired}, "failed to verify jwt", "jwt"),
        ("/jwt-realm/x", {}, "Missing JWT token in request", "api"),
        ("/jwt-anon-gone", {}, "Invalid user authorization", "jwt"),
    ]:
        r = request(jwt_gw.port, path=path, headers=headers)
        assert (r.status, r.json()) == (401, {"message": message}), (path, headers)
        assert r.header("WWW-Authenticate") == f'Bearer realm="{realm}"'
    assert upstream.requests == []
    r = request(jwt_gw.port, path="/jwt/x", headers={"Authorization": jwt_token()})
    assert r.status == 200 and r.header("WWW-Authenticate") is None


def test_jwt_claims_to_verify(jwt_gw):
    """APISIX 3.x jwt-auth's `claims_to_verify` (exp, nbf): the claims listed are required and
    checked, the others are not (apisix/plugins/jwt-auth/parser.lua, verify_claims). Without
    it, exp and nbf are checked when the token has them."""
    now = int(time.time())
    failed = (401, {"message": "failed to verify jwt"})
    r = request(jwt_gw.port, path="/jwt-exp/x", headers={"Authorization": jwt_token()})
    assert (r.status, r.json()) == failed  # exp is required here
    r = request(jwt_gw.port, path="/jwt-exp/x", headers={"Authorization": jwt_token(exp=now - 5)})
    assert (r.status, r.json()) == failed
    late_start = jwt_token(exp=now + 60, nbf=now + 30)  # nbf is not listed: not checked
    r = request(jwt_gw.port, path="/jwt-exp/x", headers={"Authorization": late_start})
    assert r.status == 200 and consumer_seen(r) == ["jack"]
    # the default: no exp is fine, an nbf in the future is not
    assert request(jwt_gw.port, path="/jwt/x", headers={"Authorization": jwt_token()}).status == 200
    r = request(jwt_gw.port, path="/jwt/x", headers={"Authorization": late_start})
    assert (r.status, r.json()) == failed


# --------------------------------------------------------------------------- consumer headers


def test_the_upstream_hears_the_consumers_custom_id_and_never_a_clients(key_gw):
    """apisix/consumer.lua attach_consumer (3.x) sets X-Consumer-Custom-ID from the consumer's
    `labels.custom_id`, and clears it when the consumer has none, so a client cannot pass one
    off as the gateway's (docs: plugins/key-auth, "other Consumer custom headers")."""
    forged = {"X-Consumer-Custom-ID": "cust-admin"}
    r = request(key_gw.port, path="/key/x", headers={"apikey": "jack-key", **forged})
    assert r.status == 200
    assert echoed_headers(r)["x-consumer-custom-id"] == ["cust-jack"]
    r = request(key_gw.port, path="/key/x", headers={"apikey": "jill-key", **forged})
    assert r.status == 200 and consumer_seen(r) == ["jill"]
    assert "x-consumer-custom-id" not in echoed_headers(r)
    r = request(key_gw.port, path="/key-anon/x", headers=forged)
    assert r.status == 200 and consumer_seen(r) == ["anon"]
    assert "x-consumer-custom-id" not in echoed_headers(r)
    # and on a route without authentication, as X-Consumer-Username: never a client's
    r = request(key_gw.port, path="/open/x", headers=forged)
    assert r.status == 200 and "x-consumer-custom-id" not in echoed_headers(r)
