"""hmac-auth: a consumer identified by an HMAC signature of the request.

APISIX's hmac-auth (3.x, after draft-cavage-http-signatures): priority 2530, runs in rewrite.

    Authorization: Signature keyId="john-key",algorithm="hmac-sha256",
                   headers="@request-target date",signature="<base64>"

The signing string is the keyId, then one line per entry of `headers`, in that order:
`@request-target` is `METHOD request-uri` (the target exactly as the client sent it, query
included), any other name is `name: value` (values of a repeated header joined by ", "); every
line ends with "\\n". `keyId` names the consumer whose `secret_key` signs. The Date header must be
within `clock_skew` seconds of the gateway's clock, every `signed_headers` entry must be signed,
and with `validate_request_body` the Digest header (`SHA-256=<base64>`) must match the body.

Every refusal is APISIX's 401 `{"message": "client request can't be validated"}` (the reason goes
to the log only, as in APISIX), but for the two failures found before validation, which APISIX
explains in the body: no Authorization header (`client request can't be validated: missing
Authorization header`) and one that does not start with "Signature" (`...: Authorization header
does not start with 'Signature'`). Where Ando is stricter: a header named in `headers` but absent
from the request fails validation (APISIX skips it silently).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from typing import Any

from ando.plugins.auth.consumers import Anonymous, secret_index
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

REFUSED = Response(401, {"message": "client request can't be validated"})
NO_HEADER = Response(
    401, {"message": "client request can't be validated: missing Authorization header"}
)
NOT_SIGNATURE = Response(
    401,
    {
        "message": "client request can't be validated: "
        "Authorization header does not start with 'Signature'"
    },
)

DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}


class SignatureParams:
    """The fields of an `Authorization: Signature ...` header."""

    __slots__ = ("algorithm", "headers", "key_id", "signature")

    def __init__(self) -> None:
        self.key_id: str | None = None
        self.algorithm: str | None = None
        self.signature: str | None = None
        self.headers: list[str] = []


def parse_signature(header: str) -> SignatureParams | None:
    """The parameters of a Signature Authorization header, or None when it is not one.
    Parameters are `name="value"` separated by commas; unknown ones are ignored."""
    if not header.startswith("Signature "):
        return None
    params = SignatureParams()
    for part in header[len("Signature ") :].split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
            continue
        value = value[1:-1]
        if name == "keyId":
            params.key_id = value
        elif name == "algorithm":
            params.algorithm = value
        elif name == "signature":
            params.signature = value
        elif name == "headers":
            params.headers = value.split()
    return params


def signing_string(
    key_id: str, names: list[str], method: str, target: str, values: Any
) -> str | None:
    """The text a client signs (see the module docstring); `values(name)` returns the values of
    a request header. None when a named header is absent. Header values and the target are the
    request's bytes decoded as latin-1, so `.encode("latin-1")` gives back what was signed."""
    lines = [key_id]
    for name in names:
        if name == "@request-target":
            lines.append(f"{method} {target}")
            continue
        found = values(name)
        if not found:
            return None
        lines.append(f"{name}: {', '.join(found)}")
    return "\n".join(lines) + "\n"


def body_digest(body: bytes) -> str:
    """The Digest header value a body must come with: `SHA-256=<base64 of its SHA-256>`."""
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def date_within(date: str | None, skew: int, now: float) -> bool:
    """Whether an HTTP Date header value parses and lies within `skew` seconds of `now`."""
    if not date:
        return False
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return False
    if when.tzinfo is None:
        return False
    return abs(now - when.timestamp()) <= skew


class HmacAuth(Plugin):
    name = "hmac-auth"
    priority = 2530
    type = "auth"
    has_consumer_schema = True

    __slots__ = ("algorithms", "anonymous", "check_body", "hide", "keys", "required", "skew")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.algorithms = frozenset(conf["allowed_algorithms"])
        self.skew = conf["clock_skew"]
        self.required = tuple(h.lower() for h in conf.get("signed_headers") or ())
        self.check_body = conf["validate_request_body"]
        self.hide = conf["hide_credentials"]
        self.anonymous = Anonymous(build, conf, "Authorization" if self.hide else None)
        self.keys = secret_index(build, self.name, "key_id", "secret_key")

    def rewrite(self, ctx: RequestContext) -> Any:
        """Synchronous for every request but those whose body must be checked: only then does
        it return a coroutine (reading the body means waiting for it)."""
        header = ctx.header("Authorization")
        if header is None:
            return self.anonymous.refuse(ctx, NO_HEADER)
        if not header.startswith("Signature"):
            return self.anonymous.refuse(ctx, NOT_SIGNATURE)
        params = parse_signature(header)
        if params is None or not params.key_id or not params.signature:
            return self.anonymous.refuse(ctx, REFUSED)
        if params.algorithm not in self.algorithms:
            return self.anonymous.refuse(ctx, REFUSED)
        found = self.keys.get(params.key_id)
        if found is None:
            return self.anonymous.refuse(ctx, REFUSED)
        consumer, secret = found
        if not date_within(ctx.header("Date"), self.skew, time.time()):
            return self.anonymous.refuse(ctx, REFUSED)
        if self.required:
            signed = {h.lower() for h in params.headers}
            if any(h not in signed for h in self.required):
                return self.anonymous.refuse(ctx, REFUSED)
        text = signing_string(
            params.key_id,
            params.headers,
            ctx.method,
            ctx.var("request_uri") or "/",
            ctx.header_values,
        )
        if text is None:
            return self.anonymous.refuse(ctx, REFUSED)
        try:
            given = base64.b64decode(params.signature, validate=True)
        except (binascii.Error, ValueError):
            return self.anonymous.refuse(ctx, REFUSED)
        digest = DIGESTS[params.algorithm]
        if not hmac.compare_digest(
            given, hmac.new(secret, text.encode("latin-1"), digest).digest()
        ):
            return self.anonymous.refuse(ctx, REFUSED)
        if self.check_body:
            claimed = ctx.header("Digest")
            if claimed is None:
                return self.anonymous.refuse(ctx, REFUSED)
            return self._check_body(ctx, consumer, claimed)
        return self._accept(ctx, consumer)

    async def _check_body(
        self, ctx: RequestContext, consumer: Any, claimed: str
    ) -> Response | None:
        body = await ctx.read_body()
        if not hmac.compare_digest(body_digest(body).encode(), claimed.strip().encode("latin-1")):
            return self.anonymous.refuse(ctx, REFUSED)
        return self._accept(ctx, consumer)

    def _accept(self, ctx: RequestContext, consumer: Any) -> None:
        if self.hide:
            ctx.remove_header("Authorization")
        ctx.attach_consumer(consumer)
