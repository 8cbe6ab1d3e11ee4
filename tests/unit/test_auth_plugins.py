"""The auth plugins socket-free: `ando validate` refusing bad credentials with their line and
column, and the pure parts of each scheme (Basic credentials, Signature headers, signing strings,
dates, digests, jwt-auth's payload kept for later plugins)."""

from __future__ import annotations

import base64
import time
from email.utils import formatdate

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ando.config.source import snapshot_from_text
from ando.plugins.auth.basic_auth import parse_basic
from ando.plugins.auth.hmac_auth import body_digest, date_within, parse_signature, signing_string
from ando.plugins.auth.jwt_auth import JwtAuth
from ando.plugins.base import BuildContext, Response
from ando.plugins.context import RequestContext
from ando.plugins.shared import SharedDict
from tests.support.config import UP
from tests.support.config import config_problems as problems

SECRET = "jack-secret-long-enough-for-hs256!"
P256_PUB = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


# --------------------------------------------------------------------------- ando validate


def test_jwt_credentials_that_cannot_verify_anything_are_refused_where_they_are_written():
    pem = P256_PUB.replace("\n", "\\n")
    text = f"""consumers:
  - username: a
    plugins:
      jwt-auth: {{key: a, algorithm: RS256}}
  - username: b
    plugins:
      jwt-auth: {{key: b, algorithm: ES256, public_key: "not a key"}}
  - username: c
    plugins:
      jwt-auth: {{key: c}}
  - username: d
    plugins:
      jwt-auth: {{key: d, secret: "***", base64_secret: true}}
  - username: e
    plugins:
      jwt-auth: {{key: e, algorithm: RS256, public_key: "{pem}"}}
  - username: f
    plugins:
      jwt-auth: {{key: f, algorithm: ES384, public_key: "{pem}"}}
  - username: g
    plugins:
      jwt-auth: {{key: g, algorithm: HS384, secret: s, lifetime_grace_period: -1}}
"""
    got = problems(text)
    assert got[0] == (
        "t.yaml:4:17: consumers[0].plugins.jwt-auth: "
        "missing valid public key: RS256 needs property 'public_key'"
    )
    assert got[1].startswith(
        "t.yaml:7:56: consumers[1].plugins.jwt-auth.public_key: invalid public key"
    )
    assert got[2] == (
        "t.yaml:10:17: consumers[2].plugins.jwt-auth: "
        "property 'secret' is required when algorithm is HS256"
    )
    assert got[3] == (
        "t.yaml:13:34: consumers[3].plugins.jwt-auth.secret: "
        "base64_secret required but the secret is not in base64 format"
    )
    assert got[4].startswith("t.yaml:16:56: consumers[4].plugins.jwt-auth.public_key: ")
    assert got[4].endswith("RS256 needs an RSA public key")
    assert got[5] == (
        "t.yaml:19:56: consumers[5].plugins.jwt-auth.public_key: "
        "ES384 needs an EC public key on curve secp384r1"
    )
    assert got[6] == (
        "t.yaml:22:78: consumers[6].plugins.jwt-auth.lifetime_grace_period: must be >= 0, got -1"
    )
    assert len(got) == 7


def test_a_good_jwt_credential_and_route_conf_pass_with_apisix_defaults():
    pem = P256_PUB.replace("\n", "\\n")
    snap = snapshot_from_text(
        f"""routes: [{{uri: /a, {UP}, plugins: {{jwt-auth: {{}}}}}}]
consumers:
  - {{username: a, plugins: {{jwt-auth: {{key: a, secret: s}}}}}}
  - {{username: b, plugins: {{jwt-auth: {{key: b, algorithm: ES256, public_key: "{pem}"}}}}}}
""",
        "t.yaml",
        environ={},
    )
    assert dict(snap.consumers["a"].plugins["jwt-auth"]) == {
        "key": "a",
        "secret": "s",
        "algorithm": "HS256",
        "exp": 86400,
        "base64_secret": False,
        "lifetime_grace_period": 0,
    }
    assert dict(snap.routes[0].plugins["jwt-auth"]) == {
        "header": "authorization",
        "query": "jwt",
        "cookie": "jwt",
        "hide_credentials": False,
        "key_claim_name": "key",
        "store_in_ctx": False,
        "realm": "jwt",
    }


def test_other_auth_confs_are_checked_by_their_schemas():
    text = f"""routes:
  - uri: /a
    {UP}
    plugins:
      hmac-auth: {{clock_skew: 0, allowed_algorithms: [hmac-md5]}}
      consumer-restriction: {{rejected_code: 403}}
consumers:
  - username: a
    plugins:
      basic-auth: {{username: a}}
      hmac-auth: {{key_id: k}}
"""
    got = "\n".join(problems(text))
    assert "t.yaml:5:" in got and "clock_skew" in got and "allowed_algorithms" in got
    assert "t.yaml:6:" in got and "consumer-restriction" in got
    assert "t.yaml:10:" in got and "password" in got
    assert "t.yaml:11:" in got and "secret_key" in got


def test_hmac_and_consumer_restriction_defaults():
    snap = snapshot_from_text(
        f"routes: [{{uri: /a, {UP}, plugins: {{hmac-auth: {{}}, consumer-restriction: {{blacklist: [x]}}}}}}]",
        "t.yaml",
        environ={},
    )
    plugins = snap.routes[0].plugins
    assert dict(plugins["hmac-auth"]) == {
        "allowed_algorithms": ("hmac-sha1", "hmac-sha256", "hmac-sha512"),
        "clock_skew": 300,
        "validate_request_body": False,
        "hide_credentials": False,
    }
    assert dict(plugins["consumer-restriction"]) == {
        "blacklist": ("x",),
        "type": "consumer_name",
        "rejected_code": 403,
    }


# --------------------------------------------------------------------------- basic-auth


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"jack:secret").decode(), ("jack", b"secret")),
        ("basic " + base64.b64encode(b"jack:a:b c").decode(), ("jack", b"a:b c")),
        ("BASIC  " + base64.b64encode(b"jack:").decode() + " ", ("jack", b"")),
        ("Basic " + base64.b64encode("jörg:pw".encode()).decode(), ("jörg", b"pw")),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("Basic " + base64.b64encode(b":pw").decode(), None),
        ("Basic !!!", None),
        ("Basic", None),
        ("Bearer abc", None),
        ("Basicx " + base64.b64encode(b"a:b").decode(), None),
    ],
)
def test_parse_basic(header, expected):
    assert parse_basic(header) == expected


# --------------------------------------------------------------------------- hmac-auth


def test_parse_signature_header():
    p = parse_signature(
        'Signature keyId="k",algorithm="hmac-sha256",headers="@request-target date x-a",'
        'signature="c2ln==",other="ignored"'
    )
    assert p is not None
    assert (p.key_id, p.algorithm, p.signature) == ("k", "hmac-sha256", "c2ln==")
    assert p.headers == ["@request-target", "date", "x-a"]
    assert parse_signature('Bearer keyId="k"') is None
    empty = parse_signature("Signature keyId=k,signature=")
    assert empty is not None and empty.key_id is None and empty.signature is None


def test_signing_string_follows_the_headers_list():
    values = {"date": ["Fri, 06 Sep 2024 06:41:29 GMT"], "x-a": ["1", "2"]}.get
    text = signing_string("k", ["@request-target", "date", "x-a"], "GET", "/p?q=1", values)
    assert text == "k\nGET /p?q=1\ndate: Fri, 06 Sep 2024 06:41:29 GMT\nx-a: 1, 2\n"
    assert signing_string("k", [], "GET", "/", values) == "k\n"
    assert signing_string("k", ["x-missing"], "GET", "/", values) is None


def test_date_within_clock_skew():
    now = time.time()
    assert date_within(formatdate(now, usegmt=True), 300, now)
    assert date_within(formatdate(now - 299, usegmt=True), 300, now)
    assert not date_within(formatdate(now - 301, usegmt=True), 300, now)
    assert not date_within(formatdate(now + 301, usegmt=True), 300, now)
    assert not date_within(None, 300, now)
    assert not date_within("yesterday", 300, now)
    assert not date_within("Fri, 06 Sep 2024 06:41:29", 300, now)  # no zone


def test_body_digest_matches_apisix_example():
    # The example of APISIX's hmac-auth documentation.
    assert (
        body_digest(b'{"name": "world"}') == "SHA-256=78qzJuLwSpZ8HacsTdFCQJWxzPMOf8bYctRk2ySLpS8="
    )


# --------------------------------------------------------------------------- jwt-auth


class _Req:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.method, self.path, self.query, self.host = "GET", "/", b"", "h"
        self.has_body = False


def _jwt_plugin(conf: dict) -> JwtAuth:
    snap = snapshot_from_text(
        f"""routes: [{{uri: /a, {UP}, plugins: {{jwt-auth: {conf!r}}}}}]
consumers: [{{username: jack, plugins: {{jwt-auth: {{key: jack-key, secret: {SECRET}}}}}}}]
""".replace("'", '"').replace("True", "true"),
        "t.yaml",
        environ={},
    )
    build = BuildContext(owner="route:1", snapshot=snap, shared=SharedDict(16), cache={})
    return JwtAuth(dict(snap.routes[0].plugins["jwt-auth"]), build)


def test_jwt_store_in_ctx_keeps_the_verified_payload_for_later_plugins():
    token = jwt.encode({"key": "jack-key", "role": "admin"}, SECRET, algorithm="HS256")
    for store in (True, False):
        plugin = _jwt_plugin({"store_in_ctx": store})
        ctx = RequestContext(_Req({"Authorization": token}), lambda name: None, None)
        assert plugin.rewrite(ctx) is None
        assert ctx.consumer_name == "jack"
        assert ("jwt_auth_payload" in ctx.data) is store
        if store:
            assert ctx.data["jwt_auth_payload"]["role"] == "admin"


def test_jwt_refusal_leaves_no_consumer_and_no_payload():
    plugin = _jwt_plugin({"store_in_ctx": True})
    token = jwt.encode({"key": "jack-key"}, SECRET[::-1], algorithm="HS256")
    ctx = RequestContext(_Req({"Authorization": token}), lambda name: None, None)
    result = plugin.rewrite(ctx)
    assert isinstance(result, Response) and result.status == 401
    assert ctx.consumer is None and "jwt_auth_payload" not in ctx.data


def test_a_realm_that_would_break_the_challenge_header_is_refused():
    got = problems(f"routes: [{{uri: /a, {UP}, plugins: {{basic-auth: {{realm: 'say \"hi\"'}}}}}}]")
    assert len(got) == 1 and got[0].startswith("t.yaml:1:") and "realm" in got[0]
