"""key-auth: a consumer identified by an API key in a header (or query argument).

APISIX's key-auth: priority 2500, runs in rewrite; 401 `{"message": "Missing API key in request"}`
without a key and `{"message": "Invalid API key in request"}` with an unknown one.
"""

from __future__ import annotations

from typing import Any

from ando.plugins.auth.consumers import credential_index
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext

_MISSING = Response(401, {"message": "Missing API key in request"})
_INVALID = Response(401, {"message": "Invalid API key in request"})


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

    def rewrite(self, ctx: RequestContext) -> Response | None:
        key = ctx.header(self.header)
        from_header = key is not None
        if key is None:
            key = ctx.args.get(self.query)
        if key is None:
            return _MISSING
        consumer = self.keys.get(key)
        if consumer is None:
            return _INVALID
        if self.hide:
            if from_header:
                ctx.remove_header(self.header)
            else:
                ctx.set_arg(self.query, None)
        ctx.attach_consumer(consumer)
        return None
