"""uri-blocker: refuse requests whose URI matches one of a list of regexes.

APISIX's uri-blocker: priority 2900, runs in `rewrite`; `block_rules` are searched (unanchored,
case-sensitive unless `case_insensitive`) in `request_uri`, the path with its query as the client
wrote it. A match answers `rejected_code` (403) with `{"error_msg": rejected_msg}`, or, without
`rejected_msg`, as APISIX's bare `ngx.exit(code)` does: nginx's HTML page for the status (an
empty body for a status nginx has no page for, such as 418).

Ando also searches the normalized path (with the query) that routing, every plugin and the
upstream see: a blocked path stays blocked however it is spelled (`/%61dmin`, `/x/../admin`),
and every spelling APISIX blocks is still blocked, since the raw form is searched too.
"""

from __future__ import annotations

import re
from typing import Any

from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.context import RequestContext
from ando.plugins.pages import nginx_page
from ando.plugins.security._checks import Problems, compile_all, regex_problems, search_any


class UriBlocker(Plugin):
    __slots__ = ("refusal", "rules")

    name = "uri-blocker"
    priority = 2900

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        flags = re.IGNORECASE if conf["case_insensitive"] else 0
        self.rules = compile_all(conf["block_rules"], flags)
        code = conf["rejected_code"]
        msg = conf.get("rejected_msg")
        self.refusal = Response(code, {"error_msg": msg}) if msg else nginx_page(code)

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        flags = re.IGNORECASE if conf.get("case_insensitive") else 0
        return regex_problems(conf, "block_rules", flags)

    def rewrite(self, ctx: RequestContext) -> Response | None:
        rules = self.rules
        raw = ctx.var("request_uri") or ""
        if search_any(rules, raw):
            return self.refusal
        query = ctx.query
        normalized = ctx.path + "?" + query if query else ctx.path
        if normalized != raw and search_any(rules, normalized):
            return self.refusal
        return None
