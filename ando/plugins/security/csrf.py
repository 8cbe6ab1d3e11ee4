"""csrf: the double-submit cookie defence, with APISIX 3.x's token format.

APISIX's csrf: priority 2980. `access` lets the safe methods (GET, HEAD, OPTIONS) through; any
other method must carry the token in the header `name`, equal to the cookie `name`, with a valid
signature that has not expired, else 401 with APISIX's `error_msg`:
"no csrf token in headers", "no csrf cookie", "csrf token mismatch",
"Failed to verify the csrf token signature". `header_filter` gives every response a fresh token:
`Set-Cookie: NAME=TOKEN;path=/;SameSite=Lax;Expires=<now + expires>`.

The token is APISIX's, so tokens issued by APISIX and by Ando are accepted by both:
base64(JSON {"random": R, "expires": T, "sign": S}) where T is the issue time (Unix seconds),
R a random number, and S the lower-case hex SHA-256 of the text
`{expires:T,random:R,key:KEY}` with the numbers written as Lua's tostring writes them (`%.14g`).
A token is expired when `expires` > 0 and now - T > `expires`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Any

import orjson

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext, ResponseHead

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_HEADER = Response(401, {"error_msg": "no csrf token in headers"})
NO_COOKIE = Response(401, {"error_msg": "no csrf cookie"})
MISMATCH = Response(401, {"error_msg": "csrf token mismatch"})
BAD_SIGNATURE = Response(401, {"error_msg": "Failed to verify the csrf token signature"})

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def lua_number(value: int | float | str) -> str:
    """A JSON number as Lua's tostring writes it (LuaJIT: `%.14g`); strings stay as they are,
    as Lua's `..` leaves them."""
    if isinstance(value, str):
        return value
    return format(value, ".14g")


def sign(random: int | float | str, issued: int | float | str, key: str) -> str:
    text = "{expires:" + lua_number(issued) + ",random:" + lua_number(random) + ",key:" + key + "}"
    return hashlib.sha256(text.encode()).hexdigest()


def make_token(key: str, now: int | None = None) -> str:
    """A fresh token issued `now`. The random number is kept to the 14 digits Lua would print,
    so the value in the JSON and the one signed are the same number for APISIX too."""
    random = float(format(secrets.randbits(53) / (1 << 53), ".14g"))
    issued = int(time.time()) if now is None else now
    body = {"random": random, "expires": issued, "sign": sign(random, issued, key)}
    return base64.b64encode(orjson.dumps(body)).decode("ascii")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_token(token: str, key: str, expires: int, now: float | None = None) -> bool:
    """Whether `token` was signed with `key` and is not older than `expires` seconds."""
    try:
        data = orjson.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    random = data.get("random")
    issued = data.get("expires")
    signature = data.get("sign")
    if not (_number(random) or isinstance(random, str)) or not _number(issued):
        return False
    if expires > 0 and (time.time() if now is None else now) - issued > expires:
        return False
    if not isinstance(signature, str):
        return False
    return hmac.compare_digest(signature.encode(), sign(random, issued, key).encode())


def cookie_time(t: float) -> str:
    """nginx's cookie date (`ngx.cookie_time`): a two-digit year up to 2037, then four."""
    tm = time.gmtime(t)
    year = tm.tm_year if tm.tm_year > 2037 else tm.tm_year % 100
    return (
        f"{_WEEKDAYS[tm.tm_wday]}, {tm.tm_mday:02d}-{_MONTHS[tm.tm_mon - 1]}-{year:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} GMT"
    )


class Csrf(Plugin):
    __slots__ = ("cookie_var", "expires", "key", "token_name")

    name = "csrf"
    priority = 2980

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.key: str = conf["key"]
        self.expires: int = conf["expires"]
        self.token_name: str = conf["name"]
        self.cookie_var = "cookie_" + self.token_name

    def access(self, ctx: RequestContext) -> Response | None:
        if ctx.method in SAFE_METHODS:
            return None
        header_token = ctx.header(self.token_name)
        if not header_token:
            return NO_HEADER
        cookie_token = ctx.var(self.cookie_var)
        if cookie_token is None:
            return NO_COOKIE
        if not hmac.compare_digest(header_token.encode(), cookie_token.encode()):
            return MISMATCH
        if not verify_token(cookie_token, self.key, self.expires):
            return BAD_SIGNATURE
        return None

    def header_filter(self, ctx: RequestContext, head: ResponseHead) -> None:
        now = int(time.time())
        head.add(
            "Set-Cookie",
            f"{self.token_name}={make_token(self.key, now)};path=/;SameSite=Lax;"
            f"Expires={cookie_time(now + self.expires)}",
        )
