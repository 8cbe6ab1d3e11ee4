"""Plugin chains, socket-free: APISIX's merge precedence, phase order by priority, `_meta`,
consumers joining a chain, global rules. Small test plugins record what ran."""

from __future__ import annotations

from typing import Any

from ando.config.source import snapshot_from_text
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.catalog import PluginCatalog, PluginSpec
from ando.plugins.chain import ChainBuilder
from ando.plugins.shared import SharedDict
from ando.proxy.pipeline import run_request_phases

ANY_CONF = {"type": "object", "properties": {"tag": {"type": "string"}}}


class _Recorder(Plugin):
    """Appends "name:tag:phase" to ctx.data["ran"]; refuses when its tag says "deny"."""

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.tag = conf.get("tag", "")
        self.owner = build.owner

    def _note(self, ctx: Any, phase: str) -> Response | None:
        ctx.data.setdefault("ran", []).append(f"{self.name}:{self.tag}:{phase}")
        if self.tag == "deny":
            return Response(403, {"message": f"{self.name} says no"})
        return None

    def rewrite(self, ctx: Any) -> Response | None:
        return self._note(ctx, "rewrite")

    def access(self, ctx: Any) -> Response | None:
        return self._note(ctx, "access")


class High(_Recorder):
    name, priority = "high", 3000


class Low(_Recorder):
    name, priority = "low", 1000


class Auth(Plugin):
    """Identifies the consumer named by the X-User header."""

    name, priority, type, has_consumer_schema = "auth", 2500, "auth", True

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.consumers = build.snapshot.consumers

    def rewrite(self, ctx: Any) -> Response | None:
        consumer = self.consumers.get(ctx.header("x-user") or "")
        if consumer is None:
            return Response(401, {"message": "who are you"})
        ctx.attach_consumer(consumer)
        return None


CLASSES = {c.name: c for c in (High, Low, Auth)}
CATALOG = PluginCatalog.of(
    PluginSpec(c.name, c.priority, ANY_CONF, consumer_schema=ANY_CONF) for c in CLASSES.values()
)


class _Req:
    """The few request fields a chain run reads."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.method, self.path, self.query, self.host = "GET", "/", b"", "h"
        self.has_body = False


def build(text: str) -> ChainBuilder:
    snap = snapshot_from_text(text, "t.yaml", environ={}, catalog=CATALOG)
    return ChainBuilder(snap, CLASSES, SharedDict(64))


def run(chain: Any, headers: dict[str, str] | None = None, var: Any = None) -> tuple[Any, Any]:
    from ando.plugins.context import RequestContext

    ctx = RequestContext(_Req(headers), var or (lambda name: None), chain)
    result = run_request_phases(ctx)
    return result, ctx


def route_chain(b: ChainBuilder, index: int = 0) -> Any:
    snap = b.snapshot
    route = snap.routes[index]
    return b.route_chain(route, snap.services.get(route.service_id) if route.service_id else None)


UP = "upstream: {nodes: {'127.0.0.1:1980': 1}}"


def test_a_route_without_plugins_and_no_global_rules_has_no_chain():
    b = build(f"routes: [{{uri: /a, {UP}}}]")
    assert route_chain(b) is None


def test_phases_run_by_priority_rewrite_before_access():
    b = build(f"routes: [{{uri: /a, {UP}, plugins: {{low: {{}}, high: {{}}}}}}]")
    result, ctx = run(route_chain(b))
    assert result is None
    assert ctx.data["ran"] == ["high::rewrite", "low::rewrite", "high::access", "low::access"]


def test_route_beats_plugin_config_beats_service_for_one_plugin_name():
    text = f"""
services: [{{id: s, {UP}, plugins: {{high: {{tag: service}}, low: {{tag: service}}}}}}]
plugin_configs: [{{id: pc, plugins: {{high: {{tag: plugin_config}}}}}}]
routes:
  - {{uri: /a, service_id: s, plugin_config_id: pc, plugins: {{low: {{tag: route}}}}}}
  - {{uri: /b, service_id: s, plugin_config_id: pc}}
  - {{uri: /c, service_id: s}}
"""
    b = build(text)
    _, ctx = run(route_chain(b, 0))
    assert ctx.data["ran"][:2] == ["high:plugin_config:rewrite", "low:route:rewrite"]
    _, ctx = run(route_chain(b, 1))
    assert ctx.data["ran"][:2] == ["high:plugin_config:rewrite", "low:service:rewrite"]
    _, ctx = run(route_chain(b, 2))
    assert ctx.data["ran"][:2] == ["high:service:rewrite", "low:service:rewrite"]


def test_a_service_plugin_is_one_instance_shared_by_its_routes():
    text = f"""
services: [{{id: s, {UP}, plugins: {{high: {{}}}}}}]
routes: [{{uri: /a, service_id: s}}, {{uri: /b, service_id: s}}]
"""
    b = build(text)
    first, second = route_chain(b, 0), route_chain(b, 1)
    assert first.rewrite[0].plugin is second.rewrite[0].plugin
    assert first.rewrite[0].plugin.owner == "service:s"


def test_a_refusal_ends_the_run():
    b = build(f"routes: [{{uri: /a, {UP}, plugins: {{high: {{tag: deny}}, low: {{}}}}}}]")
    result, ctx = run(route_chain(b))
    assert isinstance(result, Response) and result.status == 403
    assert ctx.data["ran"] == ["high:deny:rewrite"]


def test_meta_disable_priority_filter_and_error_response():
    text = f"""
routes:
  - uri: /a
    {UP}
    plugins:
      high: {{_meta: {{disable: true}}}}
      low: {{tag: deny, _meta: {{priority: 5000, error_response: {{"message": "custom"}},
             filter: [["http_x_on", "==", "yes"]]}}}}
"""
    b = build(text)
    chain = route_chain(b)
    assert [e.name for e in chain.rewrite] == ["low"]  # high disabled
    headers = {"x-on": "yes"}
    result, ctx = run(chain, headers, var=lambda n: headers.get(n[5:].replace("_", "-")))
    assert result.status == 403 and result.body == b'{"message":"custom"}\n'
    result, ctx = run(chain, {}, var=lambda n: None)  # the filter does not match: not run
    assert result is None and "ran" not in ctx.data


def test_global_rules_run_first_and_a_consumer_brings_its_plugins_after_rewrite():
    text = f"""
global_rules: [{{id: g, plugins: {{low: {{tag: global}}}}}}]
consumer_groups: [{{id: team, plugins: {{high: {{tag: group}}}}}}]
consumers:
  - {{username: ann, plugins: {{auth: {{}}, low: {{tag: ann}}}}}}
  - {{username: bob, group_id: team, plugins: {{auth: {{}}}}}}
  - {{username: cid, group_id: team, plugins: {{auth: {{}}, high: {{tag: cid}}}}}}
routes: [{{uri: /a, {UP}, plugins: {{auth: {{}}, high: {{tag: route}}}}}}]
"""
    b = build(text)
    chain = route_chain(b)
    result, ctx = run(chain, {"x-user": "ann"})
    assert result is None
    assert ctx.data["ran"] == [
        "low:global:rewrite",
        "low:global:access",
        "high:route:rewrite",
        # ann brings low: its rewrite runs once she is known, then access with her merged chain
        "low:ann:rewrite",
        "high:route:access",
        "low:ann:access",
    ]
    _, ctx = run(chain, {"x-user": "bob"})  # the group's high replaces the route's
    assert ctx.data["ran"][-2:] == ["high:group:rewrite", "high:group:access"]
    _, ctx = run(chain, {"x-user": "cid"})  # the consumer beats its group
    assert ctx.data["ran"][-2:] == ["high:cid:rewrite", "high:cid:access"]
    assert chain.for_consumer(b.snapshot.consumers["bob"]) is chain.for_consumer(
        b.snapshot.consumers["bob"]
    )
    result, _ = run(chain, {"x-user": "nobody"})
    assert result.status == 401


def test_describe_lists_the_plugins_in_run_order_with_their_source():
    text = f"""
global_rules: [{{id: g, plugins: {{low: {{}}}}}}]
routes: [{{id: r, uri: /a, {UP}, plugins: {{low: {{}}, high: {{_meta: {{disable: true}}}}}}}}]
"""
    rows = route_chain(build(text)).describe()
    assert [(r["name"], r["from"], r["disabled"]) for r in rows] == [
        ("low", "global_rule:g", False),
        ("high", "route:r", True),
        ("low", "route:r", False),
    ]
