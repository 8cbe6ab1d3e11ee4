"""request-id: a unique id per request, for the upstream, the client and the logs.

APISIX's request-id (priority 12015, so it runs before nearly every other plugin and even a
request refused by auth gets an id): in `rewrite`, a request without the `header_name` header
(or with it empty) gets a new id in that header, which the upstream receives; a request that
carries one keeps it. With `include_in_response` the response (the upstream's or a gateway-made
one) gets the id too, unless it already has that header. The access log's `request_id` is the
request's X-Request-Id, so with the default header name the log line and the client agree.

Algorithms: `uuid` (random UUID v4), `nanoid` (21 characters of the URL-safe alphabet, as
nanoid's safe_simple), `range_id` (`range_id.length` characters drawn from `range_id.char_set`),
`ksuid` (27 base62 characters: a 4-byte timestamp since 2014-05-13 then 16 random bytes, so
ids sort by creation second).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from random import getrandbits
from typing import Any

from ando.plugins.base import BuildContext, Plugin
from ando.plugins.context import RequestContext

_NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000
# A UUID's 13th hex digit is its version (4), the top two bits of the 17th its variant (10,
# RFC 4122): cleared by the first mask, set by the second, in one step each.
_UUID_KEEP = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
_UUID_SET = 0x00000000_0000_4000_8000_000000000000


def _uuid() -> str:
    """A random (version 4) UUID. Drawn from the process's PRNG, seeded from the OS and re-seeded
    in every forked worker, as APISIX's lua-resty-jit-uuid draws from math.random: request ids
    must not repeat, they need not be secret, and a getrandom() syscall per request was 7% of a
    loaded worker's time."""
    x = "%032x" % (getrandbits(128) & _UUID_KEEP | _UUID_SET)
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _nanoid() -> str:
    alphabet = _NANOID_ALPHABET
    return "".join(alphabet[b & 63] for b in os.urandom(21))


def _ksuid() -> str:
    raw = (int(time.time()) - _KSUID_EPOCH).to_bytes(4, "big") + os.urandom(16)
    n = int.from_bytes(raw, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out)).rjust(27, "0")


def _range_id(char_set: str, length: int) -> Callable[[], str]:
    # APISIX draws with math.random: ids that need not be secret, only unlikely to repeat.
    rng = random.Random()
    choices = rng.choices

    def make() -> str:
        return "".join(choices(char_set, k=length))

    return make


class RequestId(Plugin):
    name = "request-id"
    priority = 12015

    __slots__ = ("header", "in_response", "make")

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.header: str = conf["header_name"]
        self.in_response: bool = conf["include_in_response"]
        algorithm = conf["algorithm"]
        if algorithm == "nanoid":
            self.make: Callable[[], str] = _nanoid
        elif algorithm == "range_id":
            r = conf["range_id"]
            self.make = _range_id(r["char_set"], r["length"])
        elif algorithm == "ksuid":
            self.make = _ksuid
        else:
            self.make = _uuid

    def rewrite(self, ctx: RequestContext) -> None:
        value = ctx.header(self.header)
        if value is None:
            value = self.make()
            ctx.add_header(self.header, value)  # none to replace
        elif not value:
            value = self.make()
            ctx.set_header(self.header, value)
        if self.in_response:
            # whoever makes the response; one that already has the header keeps its own
            ctx.default_response_header(self.header, value)
        return None
