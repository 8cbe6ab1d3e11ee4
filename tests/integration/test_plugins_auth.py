"""basic-auth, jwt-auth, hmac-auth and consumer-restriction through a running gateway, as a
client and an upstream see them: APISIX's statuses and messages, the consumer's name reaching
the upstream (and a client-sent one never), hide_credentials, consumer groups, and the attacks
each scheme must resist (alg none, key confusion, expired or not-yet-valid tokens, replayed or
tampered signed requests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.client import request
from tests.support.gateway import GatewayProcess
from tests.support.upstream import echoed_headers

JACK_JWT_SECRET = "jack-jwt-secret-of-thirty-two-bytes!"
GRACE_SECRET = "grace-jwt-secret-of-thirty-two-bytes"
B64_SECRET_RAW = b"\x00\x01binary-secret-\xff\xfe-" + b"s" * 48
JACK_HMAC_SECRET = "jack-hmac-secret"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUB = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUB = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)

BASIC_MISSING = {"message": "Missing authorization in request"}
BASIC_INVALID = {"message": "Invalid authorization in request"}
BASIC_BAD_USER = {"message": "Invalid user authorization"}
JWT_MISSING = {"message": "Missing JWT token in request"}
JWT_INVALID = {"message": "JWT token invalid"}
JWT_NO_KEY = {"message": "missing user key in JWT token"}
JWT_UNKNOWN = {"message": "Invalid user key in JWT token"}
JWT_FAILED = {"message": "failed to verify jwt"}
HMAC_REFUSED = {"message": "client request can't be validated"}


def consumer_seen(r) -> list[str]:
    return echoed_headers(r).get("x-consumer-username", [])


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_token(payload: dict, secret: str | bytes = JACK_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def jack_claims(**extra) -> dict:
    return {"key": "jack-key", "exp": int(time.time()) + 300, **extra}


def hmac_headers(
    method: str,
    target: str,
    *,
    key_id: str = "jack-key",
    secret: str = JACK_HMAC_SECRET,
    algorithm: str = "hmac-sha256",
    names: tuple[str, ...] = ("@request-target", "date"),
    extra: dict[str, str] | None = None,
    date: str | None = None,
) -> dict[str, str]:
    """Headers of a request signed as APISIX's documentation shows (the client side)."""
    headers = {"Date": date if date is not None else formatdate(usegmt=True), **(extra or {})}
    lower = {k.lower(): v for k, v in headers.items()}
    lines = [key_id]
    for name in names:
        lines.append(
            f"{method} {target}" if name == "@request-target" else f"{name}: {lower[name]}"
        )
    digest = {
        "hmac-sha1": hashlib.sha1,
        "hmac-sha256": hashlib.sha256,
        "hmac-sha512": hashlib.sha512,
    }
    mac = hmac.new(secret.encode(), ("\n".join(lines) + "\n").encode(), digest[algorithm])
    signature = base64.b64encode(mac.digest()).decode()
    headers["Authorization"] = (
        f'Signature keyId="{key_id}",algorithm="{algorithm}",'
        f'headers="{" ".join(names)}",signature="{signature}"'
    )
    return headers


def body_digest(body: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


@pytest.fixture(scope="module")
def gw(up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    def route(rid: str, uri: str, plugins: dict, **more) -> dict:
        return {"id": rid, "uri": uri, "upstream": up, "plugins": plugins, **more}

    restricted = {"basic-auth": {}}
    config = {
        "consumer_groups": [{"id": "gold", "plugins": {}}, {"id": "silver", "plugins": {}}],
        "consumers": [
            {
                "username": "jack",
                "group_id": "gold",
                "plugins": {
                    "basic-auth": {"username": "jack", "password": "pa:ss word"},
                    "jwt-auth": {"key": "jack-key", "secret": JACK_JWT_SECRET},
                    "hmac-auth": {"key_id": "jack-key", "secret_key": JACK_HMAC_SECRET},
                },
            },
            {
                "username": "jill",
                "group_id": "silver",
                "plugins": {
                    "basic-auth": {"username": "jill", "password": "jill-pw"},
                    "jwt-auth": {"key": "jill-rsa", "algorithm": "RS256", "public_key": RSA_PUB},
                },
            },
            {
                "username": "eve",
                "plugins": {
                    "basic-auth": {"username": "eve", "password": "eve-pw"},
                    "jwt-auth": {"key": "eve-ec", "algorithm": "ES256", "public_key": EC_PUB},
                },
            },
            {
                "username": "bob",
                "plugins": {
                    "jwt-auth": {
                        "key": "bob-b64",
                        "algorithm": "HS512",
                        "secret": base64.b64encode(B64_SECRET_RAW).decode(),
                        "base64_secret": True,
                    }
                },
            },
            {
                "username": "gus",
                "plugins": {
                    "jwt-auth": {"key": "gus", "secret": GRACE_SECRET, "lifetime_grace_period": 100}
                },
            },
            {"username": "anonymous", "plugins": {}},
        ],
        "services": [{"id": "svc-a", "upstream": up}],
        "routes": [
            route("basic", "/basic/*", {"basic-auth": {}}),
            route("basic-hidden", "/basic-hidden/*", {"basic-auth": {"hide_credentials": True}}),
            route(
                "basic-anon", "/basic-anon/*", {"basic-auth": {"anonymous_consumer": "anonymous"}}
            ),
            route(
                "basic-anon-gone",
                "/basic-anon-gone",
                {"basic-auth": {"anonymous_consumer": "nobody"}},
            ),
            route("jwt", "/jwt/*", {"jwt-auth": {}}),
            route("jwt-hidden", "/jwt-hidden/*", {"jwt-auth": {"hide_credentials": True}}),
            route(
                "jwt-custom",
                "/jwt-custom/*",
                {
                    "jwt-auth": {
                        "header": "x-token",
                        "query": "tok",
                        "cookie": "tok",
                        "key_claim_name": "sub",
                    }
                },
            ),
            route("hmac", "/hmac/*", {"hmac-auth": {}}),
            route(
                "hmac-strict",
                "/hmac-strict/*",
                {
                    "hmac-auth": {
                        "signed_headers": ["date", "x-custom"],
                        "allowed_algorithms": ["hmac-sha256"],
                    }
                },
            ),
            route(
                "hmac-body",
                "/hmac-body/*",
                {"hmac-auth": {"validate_request_body": True, "hide_credentials": True}},
            ),
            route(
                "only-gold",
                "/only-gold",
                {
                    **restricted,
                    "consumer-restriction": {"type": "consumer_group_id", "whitelist": ["gold"]},
                },
            ),
            route(
                "only-jack",
                "/only-jack",
                {**restricted, "consumer-restriction": {"whitelist": ["jack"]}},
            ),
            route(
                "not-jack",
                "/not-jack",
                {
                    **restricted,
                    "consumer-restriction": {
                        "blacklist": ["jack"],
                        "rejected_code": 401,
                        "rejected_msg": "jack is not welcome",
                    },
                },
            ),
            route(
                "black-and-white",
                "/black-and-white",
                {
                    **restricted,
                    "consumer-restriction": {"whitelist": ["jack", "jill"], "blacklist": ["jack"]},
                },
            ),
            route(
                "by-method",
                "/by-method",
                {
                    **restricted,
                    "consumer-restriction": {
                        "allowed_by_methods": [{"user": "jill", "methods": ["GET", "HEAD"]}]
                    },
                },
            ),
            route(
                "white-over-methods",
                "/white-over-methods",
                {
                    **restricted,
                    "consumer-restriction": {
                        "whitelist": ["jill"],
                        "allowed_by_methods": [{"user": "jill", "methods": ["GET"]}],
                    },
                },
            ),
            route("no-auth", "/no-auth", {"consumer-restriction": {"whitelist": ["jack"]}}),
            route(
                "by-route",
                "/by-route",
                {"consumer-restriction": {"type": "route_id", "blacklist": ["by-route"]}},
            ),
            {
                "id": "by-service",
                "uri": "/by-service",
                "service_id": "svc-a",
                "plugins": {"consumer-restriction": {"type": "service_id", "whitelist": ["svc-a"]}},
            },
            route(
                "no-service",
                "/no-service",
                {"consumer-restriction": {"type": "service_id", "whitelist": ["svc-a"]}},
            ),
        ],
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("auth"), access_log=False) as g:
        yield g


# --------------------------------------------------------------------------- basic-auth


def test_basic_auth_refusals_carry_apisix_messages_and_a_challenge(gw, upstream):
    upstream.requests.clear()
    cases = [
        ({}, BASIC_MISSING),
        ({"Authorization": "Bearer abc"}, BASIC_INVALID),
        ({"Authorization": "Basic !!!not-base64"}, BASIC_INVALID),
        ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, BASIC_INVALID),
        (basic("jack", "wrong"), BASIC_BAD_USER),
        (basic("jack", "pa:ss"), BASIC_BAD_USER),  # APISIX's truncation at the second colon
        (basic("nobody", "pa:ss word"), BASIC_BAD_USER),
    ]
    for headers, body in cases:
        r = request(gw.port, path="/basic/x", headers=headers)
        assert (r.status, r.json()) == (401, body), headers
        assert r.header("WWW-Authenticate") == 'Basic realm="basic"'
    assert upstream.requests == []


def test_basic_auth_identifies_the_consumer_and_a_client_cannot_forge_it(gw):
    headers = {**basic("jack", "pa:ss word"), "X-Consumer-Username": "jill"}
    r = request(gw.port, path="/basic/x", headers=headers)
    assert r.status == 200
    assert consumer_seen(r) == ["jack"]
    assert "authorization" in echoed_headers(r)  # kept unless hide_credentials
    r = request(
        gw.port,
        path="/basic/x",
        headers={"authorization": "basic " + basic("jill", "jill-pw")["Authorization"][6:]},
    )
    assert r.status == 200 and consumer_seen(r) == ["jill"]  # the scheme is case-insensitive


def test_basic_auth_hide_credentials(gw):
    r = request(gw.port, path="/basic-hidden/x", headers=basic("jill", "jill-pw"))
    assert r.status == 200
    headers = echoed_headers(r)
    assert "authorization" not in headers and headers["x-consumer-username"] == ["jill"]


def test_basic_auth_anonymous_consumer(gw):
    r = request(gw.port, path="/basic-anon/x", headers={"X-Consumer-Username": "jack"})
    assert r.status == 200 and consumer_seen(r) == ["anonymous"]
    r = request(gw.port, path="/basic-anon/x", headers=basic("jack", "wrong"))
    assert r.status == 200 and consumer_seen(r) == ["anonymous"]
    r = request(gw.port, path="/basic-anon/x", headers=basic("jack", "pa:ss word"))
    assert consumer_seen(r) == ["jack"]
    r = request(gw.port, path="/basic-anon-gone")
    assert (r.status, r.json()) == (401, BASIC_BAD_USER)


# --------------------------------------------------------------------------- jwt-auth


def test_jwt_token_in_header_query_and_cookie(gw):
    token = hs_token(jack_claims())
    for headers, path in [
        ({"Authorization": f"Bearer {token}"}, "/jwt/x"),
        ({"Authorization": token}, "/jwt/x"),
        ({}, f"/jwt/x?jwt={token}"),
        ({"Cookie": f"a=1; jwt={token}; b=2"}, "/jwt/x"),
    ]:
        r = request(gw.port, path=path, headers={**headers, "X-Consumer-Username": "jill"})
        assert r.status == 200, (path, headers, r.body)
        assert consumer_seen(r) == ["jack"]


def test_jwt_refusals_carry_apisix_messages(gw, upstream):
    upstream.requests.clear()
    cases = [
        ({}, JWT_MISSING),
        ({"Authorization": "Bearer not.a.jwt"}, JWT_INVALID),
        ({"Authorization": "garbage"}, JWT_INVALID),
        ({"Authorization": hs_token({"exp": int(time.time()) + 60})}, JWT_NO_KEY),
        ({"Authorization": hs_token(jack_claims(key="who"))}, JWT_UNKNOWN),
        (
            {"Authorization": hs_token(jack_claims(), secret="a-different-secret-of-32-bytes!!")},
            JWT_FAILED,
        ),
    ]
    for headers, body in cases:
        r = request(gw.port, path="/jwt/x", headers=headers)
        assert (r.status, r.json()) == (401, body), headers
    assert upstream.requests == []


def test_jwt_alg_none_is_refused(gw, upstream):
    upstream.requests.clear()
    for key in ("jack-key", "jill-rsa", "eve-ec"):
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        payload = b64url(json.dumps({"key": key, "exp": int(time.time()) + 60}).encode())
        for token in (f"{header}.{payload}.", f"{header}.{payload}"):
            r = request(gw.port, path="/jwt/x", headers={"Authorization": token})
            assert r.status == 401 and r.json() in (JWT_FAILED, JWT_INVALID), (key, token)
    assert upstream.requests == []


def test_an_rs256_public_key_used_as_an_hs256_secret_is_refused(gw, upstream):
    """The classic key-confusion attack: the public key is public, so an HMAC made with it as
    the secret must not pass for the consumer's RS256 signature."""
    upstream.requests.clear()
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"key": "jill-rsa", "exp": int(time.time()) + 60}).encode())
    signing_input = f"{header}.{payload}".encode()
    for secret in (RSA_PUB.encode(), RSA_PUB.strip().encode()):
        signature = b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
        r = request(
            gw.port, path="/jwt/x", headers={"Authorization": f"{header}.{payload}.{signature}"}
        )
        assert (r.status, r.json()) == (401, JWT_FAILED)
    assert upstream.requests == []


def test_jwt_asymmetric_algorithms_only_with_their_own_key(gw):
    rs = jwt.encode({"key": "jill-rsa", "exp": int(time.time()) + 60}, RSA_KEY, algorithm="RS256")
    r = request(gw.port, path="/jwt/x", headers={"Authorization": f"Bearer {rs}"})
    assert r.status == 200 and consumer_seen(r) == ["jill"]
    es = jwt.encode({"key": "eve-ec", "exp": int(time.time()) + 60}, EC_KEY, algorithm="ES256")
    r = request(gw.port, path="/jwt/x", headers={"Authorization": f"Bearer {es}"})
    assert r.status == 200 and consumer_seen(r) == ["eve"]
    # a valid RS384 signature by the right key, but not the consumer's algorithm
    rs384 = jwt.encode(
        {"key": "jill-rsa", "exp": int(time.time()) + 60}, RSA_KEY, algorithm="RS384"
    )
    r = request(gw.port, path="/jwt/x", headers={"Authorization": f"Bearer {rs384}"})
    assert (r.status, r.json()) == (401, JWT_FAILED)
    # jill's key signing for eve
    forged = jwt.encode({"key": "eve-ec", "exp": int(time.time()) + 60}, RSA_KEY, algorithm="RS256")
    r = request(gw.port, path="/jwt/x", headers={"Authorization": f"Bearer {forged}"})
    assert (r.status, r.json()) == (401, JWT_FAILED)


def test_jwt_base64_secret(gw):
    token = hs_token(
        {"key": "bob-b64", "exp": int(time.time()) + 60}, secret=B64_SECRET_RAW, alg="HS512"
    )
    r = request(gw.port, path="/jwt/x", headers={"Authorization": token})
    assert r.status == 200 and consumer_seen(r) == ["bob"]


def test_jwt_expired_and_not_yet_valid_tokens(gw):
    now = int(time.time())
    expired = hs_token(jack_claims(exp=now - 30))
    r = request(gw.port, path="/jwt/x", headers={"Authorization": expired})
    assert (r.status, r.json()) == (401, JWT_FAILED)
    early = hs_token(jack_claims(nbf=now + 60))
    r = request(gw.port, path="/jwt/x", headers={"Authorization": early})
    assert (r.status, r.json()) == (401, JWT_FAILED)
    # lifetime_grace_period (100 s) tolerates that much clock skew, and no more
    gus = {"key": "gus"}
    ok = [
        hs_token({**gus, "exp": now - 30}, GRACE_SECRET),
        hs_token({**gus, "nbf": now + 30}, GRACE_SECRET),
    ]
    for token in ok:
        assert request(gw.port, path="/jwt/x", headers={"Authorization": token}).status == 200
    late = hs_token({**gus, "exp": now - 300}, GRACE_SECRET)
    assert request(gw.port, path="/jwt/x", headers={"Authorization": late}).status == 401


def test_jwt_hide_credentials_removes_the_token_wherever_it_was(gw):
    token = hs_token(jack_claims())
    r = request(gw.port, path="/jwt-hidden/x", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200 and "authorization" not in echoed_headers(r)
    r = request(gw.port, path=f"/jwt-hidden/x?a=1&jwt={token}&b=2")
    assert r.status == 200 and r.json()["query"] == "a=1&b=2"
    r = request(gw.port, path="/jwt-hidden/x", headers={"Cookie": f"a=1; jwt={token}; b=2"})
    assert r.status == 200
    assert echoed_headers(r)["cookie"] == ["a=1; b=2"]
    assert consumer_seen(r) == ["jack"]
    r = request(gw.port, path="/jwt-hidden/x", headers={"Cookie": f"jwt={token}"})
    assert r.status == 200 and "cookie" not in echoed_headers(r)
    # without hide_credentials the token goes upstream
    r = request(gw.port, path=f"/jwt/x?jwt={token}")
    assert token in r.json()["query"]


def test_jwt_custom_locations_and_key_claim(gw):
    token = hs_token({"sub": "jack-key", "exp": int(time.time()) + 60})
    assert request(gw.port, path="/jwt-custom/x", headers={"x-token": token}).status == 200
    assert request(gw.port, path=f"/jwt-custom/x?tok={token}").status == 200
    assert request(gw.port, path="/jwt-custom/x", headers={"Cookie": f"tok={token}"}).status == 200
    # the default locations are not looked at
    r = request(gw.port, path="/jwt-custom/x", headers={"Authorization": token})
    assert (r.status, r.json()) == (401, JWT_MISSING)
    # the claim is `sub` here, so a token naming the consumer by `key` does not identify it
    r = request(gw.port, path="/jwt-custom/x", headers={"x-token": hs_token(jack_claims())})
    assert (r.status, r.json()) == (401, JWT_NO_KEY)


# --------------------------------------------------------------------------- hmac-auth


def test_hmac_correctly_signed_request_passes(gw):
    headers = hmac_headers("GET", "/hmac/x?a=1")
    r = request(gw.port, path="/hmac/x?a=1", headers={**headers, "X-Consumer-Username": "jill"})
    assert r.status == 200, r.body
    assert consumer_seen(r) == ["jack"]
    assert "authorization" in echoed_headers(r)
    for algorithm in ("hmac-sha1", "hmac-sha512"):
        headers = hmac_headers("GET", "/hmac/y", algorithm=algorithm)
        assert request(gw.port, path="/hmac/y", headers=headers).status == 200


def test_hmac_refusals(gw, upstream):
    upstream.requests.clear()
    good = hmac_headers("GET", "/hmac/x")
    stale = formatdate(time.time() - 1000, usegmt=True)
    cases = {
        "no authorization": {"Date": good["Date"]},
        "not a signature": {"Date": good["Date"], "Authorization": "Basic abc"},
        "wrong secret": hmac_headers("GET", "/hmac/x", secret="not-the-secret"),
        "unknown key id": hmac_headers("GET", "/hmac/x", key_id="who"),
        "signed for another path": hmac_headers("GET", "/hmac/other"),
        "signed for another method": hmac_headers("POST", "/hmac/x"),
        "signed for another query": hmac_headers("GET", "/hmac/x?a=2"),
        "missing date": {
            "Authorization": hmac_headers("GET", "/hmac/x", names=("@request-target",))[
                "Authorization"
            ]
        },
        "expired date": hmac_headers("GET", "/hmac/x", date=stale),
        "date in the future": hmac_headers(
            "GET", "/hmac/x", date=formatdate(time.time() + 1000, usegmt=True)
        ),
        "unknown algorithm": hmac_headers("GET", "/hmac/x", algorithm="hmac-sha256").copy(),
    }
    cases["unknown algorithm"]["Authorization"] = cases["unknown algorithm"][
        "Authorization"
    ].replace("hmac-sha256", "hmac-md5")
    # a replayed signature with the Date header moved forward no longer matches (date is signed)
    replay = hmac_headers("GET", "/hmac/x", date=formatdate(time.time() - 200, usegmt=True))
    replay["Date"] = formatdate(usegmt=True)
    cases["replay with a fresh date"] = replay
    explained = {  # APISIX says why for these two (tests/integration/test_auth_compat.py)
        "no authorization": "missing Authorization header",
        "not a signature": "Authorization header does not start with 'Signature'",
    }
    for name, headers in cases.items():
        r = request(gw.port, path="/hmac/x", headers=headers)
        body = HMAC_REFUSED
        if name in explained:
            body = {"message": f"{HMAC_REFUSED['message']}: {explained[name]}"}
        assert (r.status, r.json()) == (401, body), name
    assert upstream.requests == []


def test_hmac_required_signed_headers_and_allowed_algorithms(gw):
    extra = {"X-Custom": "v1"}
    names = ("@request-target", "date", "x-custom")
    ok = hmac_headers("GET", "/hmac-strict/x", names=names, extra=extra)
    assert request(gw.port, path="/hmac-strict/x", headers=ok).status == 200
    # x-custom sent but not signed: refused (it could have been changed on the way)
    unsigned = hmac_headers("GET", "/hmac-strict/x", extra=extra)
    r = request(gw.port, path="/hmac-strict/x", headers=unsigned)
    assert (r.status, r.json()) == (401, HMAC_REFUSED)
    # signed, then changed
    changed = {**ok, "X-Custom": "v2"}
    assert request(gw.port, path="/hmac-strict/x", headers=changed).status == 401
    # signed, then a second value appended
    doubled = [*ok.items(), ("X-Custom", "v2")]
    assert request(gw.port, path="/hmac-strict/x", headers=doubled).status == 401
    # sha1 is not allowed on this route
    sha1 = hmac_headers("GET", "/hmac-strict/x", names=names, extra=extra, algorithm="hmac-sha1")
    assert request(gw.port, path="/hmac-strict/x", headers=sha1).status == 401


def test_hmac_request_body_validation(gw, upstream):
    body = b'{"name": "world"}'
    headers = {**hmac_headers("POST", "/hmac-body/x"), "Digest": body_digest(body)}
    r = request(gw.port, "POST", "/hmac-body/x", headers=headers, body=body)
    assert r.status == 200, r.body
    seen = r.json()
    assert seen["body_len"] == len(body) and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert consumer_seen(r) == ["jack"] and "authorization" not in echoed_headers(r)
    upstream.requests.clear()
    tampered = b'{"name": "admin"}'
    r = request(gw.port, "POST", "/hmac-body/x", headers=headers, body=tampered)
    assert (r.status, r.json()) == (401, HMAC_REFUSED)
    no_digest = hmac_headers("POST", "/hmac-body/x")
    r = request(gw.port, "POST", "/hmac-body/x", headers=no_digest, body=body)
    assert (r.status, r.json()) == (401, HMAC_REFUSED)
    assert upstream.requests == []
    # an empty body has a digest too
    headers = {**hmac_headers("GET", "/hmac-body/x"), "Digest": body_digest(b"")}
    assert request(gw.port, path="/hmac-body/x", headers=headers).status == 200


# --------------------------------------------------------------------------- consumer-restriction


def test_restriction_by_consumer_group(gw):
    r = request(gw.port, path="/only-gold", headers=basic("jack", "pa:ss word"))
    assert r.status == 200 and consumer_seen(r) == ["jack"]
    r = request(gw.port, path="/only-gold", headers=basic("jill", "jill-pw"))
    assert (r.status, r.json()) == (403, {"message": "The consumer_group_id is forbidden."})
    # a consumer in no group has no consumer_group_id
    r = request(gw.port, path="/only-gold", headers=basic("eve", "eve-pw"))
    assert (r.status, r.json()) == (
        401,
        {"message": "The request is rejected, please check the consumer_group_id for this request"},
    )


def test_restriction_by_consumer_name(gw):
    assert request(gw.port, path="/only-jack", headers=basic("jack", "pa:ss word")).status == 200
    r = request(gw.port, path="/only-jack", headers=basic("jill", "jill-pw"))
    assert (r.status, r.json()) == (403, {"message": "The consumer_name is forbidden."})
    r = request(gw.port, path="/not-jack", headers=basic("jack", "pa:ss word"))
    assert (r.status, r.json()) == (401, {"message": "jack is not welcome"})
    assert request(gw.port, path="/not-jack", headers=basic("jill", "jill-pw")).status == 200
    # the blacklist wins over the whitelist
    assert (
        request(gw.port, path="/black-and-white", headers=basic("jack", "pa:ss word")).status == 403
    )
    assert request(gw.port, path="/black-and-white", headers=basic("jill", "jill-pw")).status == 200


def test_restriction_by_method(gw):
    jill, jack = basic("jill", "jill-pw"), basic("jack", "pa:ss word")
    assert request(gw.port, "GET", "/by-method", headers=jill).status == 200
    r = request(gw.port, "POST", "/by-method", headers=jill, body=b"x")
    assert (r.status, r.json()) == (403, {"message": "The consumer_name is forbidden."})
    # users without an entry may use any method
    assert request(gw.port, "DELETE", "/by-method", headers=jack).status == 200
    # a whitelisted consumer skips allowed_by_methods
    assert request(gw.port, "POST", "/white-over-methods", headers=jill, body=b"x").status == 200


def test_restriction_without_a_consumer_and_by_route_or_service(gw):
    r = request(gw.port, path="/no-auth", headers={"X-Consumer-Username": "jack"})
    assert (r.status, r.json()) == (
        401,
        {"message": "The request is rejected, please check the consumer_name for this request"},
    )
    r = request(gw.port, path="/by-route")
    assert (r.status, r.json()) == (403, {"message": "The route_id is forbidden."})
    assert request(gw.port, path="/by-service").status == 200
    r = request(gw.port, path="/no-service")
    assert (r.status, r.json()) == (
        401,
        {"message": "The request is rejected, please check the service_id for this request"},
    )
