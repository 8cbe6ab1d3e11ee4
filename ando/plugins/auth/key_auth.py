"""key-auth: a consumer identified by an API key in a header (or query argument).

APISIX's key-auth (3.x): priority 2500, runs in rewrite; 401 `{"message": "Missing API key in
request"}` without a key and `{"message": "Invalid API key in request"}` with an unknown one,
each with `WWW-Authenticate: apikey realm="<realm>"` (realm "key" by default).

With `anonymous_consumer`, a request without a valid key goes on as that consumer instead (one
that names no consumer refuses with 401 "Invalid user authorization"); with hide_credentials the
rejected key is then removed from both the header and the query argument, as APISIX does, so an
invalid key never reaches the upstream either.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.auth.consumers import Anonymous, credential_index
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

MISSING = "Missing API key in request"
INVALID = "Invalid API key in request"


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500
    type = "auth"
    has_consumer_schema = True

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.header = conf["header"]
        self.query = conf["query"]
        self.hide = conf["hide_credentials"]
        self.keys = credential_index(build, self.name, "key")
        challenge = {"WWW-Authenticate": f'apikey realm="{conf["realm"]}"'}
        self.missing = Response(401, {"message": MISSING}, challenge)
        self.invalid = Response(401, {"message": INVALID}, challenge)
        self.anonymous = Anonymous(build, conf, no_consumer_headers=challenge)

    def rewrite(self, ctx: RequestContext) -> Response | None:
        key = ctx.header(self.header)
        from_header = key is not None
        if key is None:
            key = ctx.args.get(self.query)
        if key is None:
            return self._refuse(ctx, self.missing)
        consumer = self.keys.get(key)
        if consumer is None:
            return self._refuse(ctx, self.invalid)
        if self.hide:
            if from_header:
                ctx.remove_header(self.header)
            else:
                ctx.set_arg(self.query, None)
        ctx.attach_consumer(consumer)
        return None

    def _refuse(self, ctx: RequestContext, refusal: Response) -> Response | None:
        if self.hide and self.anonymous.usable:
            # the anonymous consumer goes on; whatever key was sent, from wherever, does not
            ctx.remove_header(self.header)
            if self.query in ctx.args:
                ctx.set_arg(self.query, None)
        return self.anonymous.refuse(ctx, refusal)
