"""basic-auth: a consumer identified by HTTP Basic credentials (RFC 7617).

APISIX's basic-auth: priority 2520, runs in rewrite. 401 `{"message": "Missing authorization in
request"}` without an Authorization header, `{"message": "Invalid authorization in request"}`
when it is not Basic credentials, `{"message": "Invalid user authorization"}` for an unknown user
or a wrong password (one message for both, so the answer does not tell which usernames exist).
Every 401 carries `WWW-Authenticate: Basic realm="<realm>"` so browsers prompt.

Where Ando differs, on purpose: the credentials split at the first colon (RFC 7617; APISIX keeps
only the text between the first and second colon, so a password with a colon never matched), and
whitespace inside them is kept (APISIX deletes it). Passwords are compared in constant time.
"""

from __future__ import annotations

import binascii
import hmac
from typing import Any

from ando.plugins.auth.consumers import Anonymous, secret_index
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

MISSING = "Missing authorization in request"
INVALID = "Invalid authorization in request"
INVALID_USER = "Invalid user authorization"

# Compared against when the username is unknown, so both refusals cost the same.
_DUMMY = b"\x00" * 32


def parse_basic(header: str) -> tuple[str, bytes] | None:
    """(username, password) from an Authorization header value, or None when it is not Basic
    credentials: the scheme (any case), then base64 of `user:password`. The password stays bytes:
    it is only ever compared."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    token = rest.strip()
    if not token:
        return None
    try:
        decoded = binascii.a2b_base64(token.encode("latin-1"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep or not user:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 2520
    type = "auth"
    has_consumer_schema = True

    __slots__ = ("anonymous", "hide", "invalid", "invalid_user", "missing", "users")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.hide = conf["hide_credentials"]
        self.users = secret_index(build, self.name, "username", "password")
        self.anonymous = Anonymous(build, conf, "Authorization" if self.hide else None)
        challenge = {"WWW-Authenticate": f'Basic realm="{conf["realm"]}"'}
        self.missing = Response(401, {"message": MISSING}, challenge)
        self.invalid = Response(401, {"message": INVALID}, challenge)
        self.invalid_user = Response(401, {"message": INVALID_USER}, challenge)

    def rewrite(self, ctx: RequestContext) -> Response | None:
        header = ctx.header("Authorization")
        if header is None:
            return self.anonymous.refuse(ctx, self.missing)
        parsed = parse_basic(header)
        if parsed is None:
            return self.anonymous.refuse(ctx, self.invalid)
        username, password = parsed
        found = self.users.get(username)
        if found is None:
            hmac.compare_digest(password, _DUMMY)
            return self.anonymous.refuse(ctx, self.invalid_user)
        consumer, expected = found
        if not hmac.compare_digest(password, expected):
            return self.anonymous.refuse(ctx, self.invalid_user)
        if self.hide:
            ctx.remove_header("Authorization")
        ctx.attach_consumer(consumer)
        return None
