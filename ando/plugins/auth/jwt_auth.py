"""jwt-auth: a consumer identified by a JSON Web Token.

APISIX's jwt-auth (3.x): priority 2510, runs in rewrite. The token comes from the `header`
(default Authorization, with or without "Bearer "), else the `query` argument, else the `cookie`
(both default `jwt`). Its `key_claim_name` claim (default `key`) names the consumer whose
jwt-auth credential verifies it. Every refusal is a 401 with APISIX's message:
"Missing JWT token in request", "JWT token invalid" (not a JWT at all), "missing user key in JWT
token", "Invalid user key in JWT token" and "failed to verify jwt" (signature, algorithm, exp,
nbf), each with `WWW-Authenticate: Bearer realm="<realm>"` (realm "jwt" by default). exp and
nbf are checked when present, with `lifetime_grace_period` seconds of leeway; `claims_to_verify`
narrows that to the claims it lists and makes them required (APISIX's jwt-auth/parser.lua).

The security of this plugin is in two rules, both enforced by PyJWT once told: a token is only
verified with the one algorithm its consumer is configured with (so `alg: none`, or an RS256
consumer's public key presented as an HS256 secret, fail), and the unverified payload is read only
to find the consumer. Public keys are parsed once per config, never per request.
"""

from __future__ import annotations

import base64
import binascii
import warnings
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ando.plugins.auth.consumers import Anonymous
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems
from ando.plugins.context import RequestContext

# PyJWT warns on every verification with a short HMAC secret; the secret is the operator's
# choice (APISIX takes any), and a warning per request would flood stderr.
warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)

MISSING = "Missing JWT token in request"
INVALID = "JWT token invalid"
MISSING_KEY = "missing user key in JWT token"
UNKNOWN_KEY = "Invalid user key in JWT token"
NOT_VERIFIED = "failed to verify jwt"

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}

# Only the signature and the time claims APISIX checks (exp, nbf); aud, iat, sub and jti are the
# upstream's business, as they are in APISIX.
_VERIFY = jwt.PyJWT(
    {
        "verify_signature": True,
        "verify_exp": True,
        "verify_nbf": True,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
)
_READ = jwt.PyJWT({"verify_signature": False})


def load_public_key(algorithm: str, pem: str) -> Any:
    """The cryptography key object for `pem`, checked to suit `algorithm`. Raises ValueError
    with a message for `ando validate`."""
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError, UnicodeEncodeError):
        raise ValueError(
            "invalid public key: not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if algorithm.startswith(("RS", "PS")):
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{algorithm} needs an RSA public key")
    elif algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
            raise ValueError(f"{algorithm} needs an EC public key on curve {curve.name}")
    elif algorithm == "EdDSA" and not isinstance(
        key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        raise ValueError("EdDSA needs an Ed25519 or Ed448 public key")
    return key


def hmac_secret(conf: Mapping[str, Any]) -> bytes:
    """The HMAC key of a consumer credential: `secret`, base64-decoded with `base64_secret`.
    Raises ValueError."""
    secret = str(conf["secret"])
    if conf.get("base64_secret"):
        try:
            return base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "base64_secret required but the secret is not in base64 format"
            ) from None
    return secret.encode("utf-8")


class _Credential:
    """One consumer's verifier: its algorithm, prepared key and leeway."""

    __slots__ = ("algorithms", "consumer", "key", "leeway")

    def __init__(self, consumer: Any, algorithm: str, key: Any, leeway: int) -> None:
        self.consumer = consumer
        self.algorithms = [algorithm]
        self.key = key
        self.leeway = leeway


def _credentials(build: BuildContext, plugin: str) -> Mapping[str, _Credential]:
    """{key: credential} over the consumers with jwt-auth, keys parsed once per config. A
    credential whose key cannot be used (`ando validate` refuses those) is left out."""

    def make() -> dict[str, _Credential]:
        index: dict[str, _Credential] = {}
        for consumer in build.snapshot.consumers.values():
            conf = consumer.plugins.get(plugin)
            if conf is None or conf.get("key") is None or str(conf["key"]) in index:
                continue
            algorithm = conf.get("algorithm", "HS256")
            try:
                if algorithm in HMAC_ALGORITHMS:
                    key = hmac_secret(conf)
                else:
                    key = load_public_key(algorithm, str(conf["public_key"]))
            except (KeyError, ValueError) as e:
                build.log("jwt_auth_bad_credential", consumer=consumer.username, error=str(e))
                continue
            leeway = int(conf.get("lifetime_grace_period", 0))
            index[str(conf["key"])] = _Credential(consumer, algorithm, key, leeway)
        return index

    return build.per_snapshot(("jwt-auth", "credentials"), make)


class JwtAuth(Plugin):
    name = "jwt-auth"
    priority = 2510
    type = "auth"
    has_consumer_schema = True

    __slots__ = (
        "anonymous",
        "claim",
        "cookie",
        "credentials",
        "header",
        "hide",
        "invalid",
        "missing",
        "missing_key",
        "not_verified",
        "options",
        "query",
        "store",
        "unknown_key",
    )

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.header = conf["header"]
        self.query = conf["query"]
        self.cookie = conf["cookie"]
        self.hide = conf["hide_credentials"]
        self.claim = conf["key_claim_name"]
        self.store = conf["store_in_ctx"]
        self.credentials = _credentials(build, self.name)
        challenge = {"WWW-Authenticate": f'Bearer realm="{conf["realm"]}"'}
        self.missing = Response(401, {"message": MISSING}, challenge)
        self.invalid = Response(401, {"message": INVALID}, challenge)
        self.missing_key = Response(401, {"message": MISSING_KEY}, challenge)
        self.unknown_key = Response(401, {"message": UNKNOWN_KEY}, challenge)
        self.not_verified = Response(401, {"message": NOT_VERIFIED}, challenge)
        self.anonymous = Anonymous(build, conf, no_consumer_headers=challenge)
        # claims_to_verify listed: only those, and required; otherwise exp and nbf when present
        claims = conf.get("claims_to_verify")
        self.options: dict[str, Any] | None = None
        if claims:
            self.options = {
                "verify_exp": "exp" in claims,
                "verify_nbf": "nbf" in claims,
                "require": list(claims),
            }

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        if not on_consumer:
            return []
        algorithm = conf["algorithm"]
        if algorithm in HMAC_ALGORITHMS:
            if "secret" not in conf:
                return [((), f"property 'secret' is required when algorithm is {algorithm}")]
            try:
                hmac_secret(conf)
            except ValueError as e:
                return [(("secret",), str(e))]
            return []
        if "public_key" not in conf:
            return [((), f"missing valid public key: {algorithm} needs property 'public_key'")]
        try:
            load_public_key(algorithm, conf["public_key"])
        except ValueError as e:
            return [(("public_key",), str(e))]
        return []

    def rewrite(self, ctx: RequestContext) -> Response | None:
        token = self._take_token(ctx)
        if token is None:
            return self.anonymous.refuse(ctx, self.missing)
        try:
            payload = _READ.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self.anonymous.refuse(ctx, self.invalid)
        user_key = payload.get(self.claim)
        if user_key is None:
            return self.anonymous.refuse(ctx, self.missing_key)
        credential = self.credentials.get(user_key) if isinstance(user_key, str) else None
        if credential is None:
            return self.anonymous.refuse(ctx, self.unknown_key)
        try:
            payload = _VERIFY.decode(
                token,
                credential.key,
                algorithms=credential.algorithms,
                leeway=credential.leeway,
                options=self.options,
            )
        except jwt.PyJWTError:
            return self.anonymous.refuse(ctx, self.not_verified)
        if self.store:
            ctx.data["jwt_auth_payload"] = payload
        ctx.attach_consumer(credential.consumer)
        return None

    def _take_token(self, ctx: RequestContext) -> str | None:
        """The token, from the header, the query argument or the cookie (in that order, as
        APISIX looks); with hide_credentials, removed from what goes upstream."""
        value = ctx.header(self.header)
        if value is not None:
            if self.hide:
                ctx.remove_header(self.header)
            if value[:7].lower() == "bearer ":
                return value[7:].strip()
            return value.strip()
        value = ctx.args.get(self.query)
        if value is not None:
            if self.hide:
                ctx.set_arg(self.query, None)
            return value
        value = ctx.var("cookie_" + self.cookie)
        if value is not None and self.hide:
            _remove_cookie(ctx, self.cookie)
        return value


def _remove_cookie(ctx: RequestContext, name: str) -> None:
    kept = [
        part.strip()
        for header in ctx.header_values("Cookie")
        for part in header.split(";")
        if part.strip() and part.strip().partition("=")[0].strip() != name
    ]
    if kept:
        ctx.set_header("Cookie", "; ".join(kept))
    else:
        ctx.remove_header("Cookie")
