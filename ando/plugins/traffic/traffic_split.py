"""traffic-split: send a share of a route's traffic to other upstreams, by conditions and weights.

APISIX's traffic-split (priority 966, access phase). `rules` are tried in order; the first whose
`match` passes (any one of its entries' `vars` expression holds; a rule without `match` always
passes) picks one of its `weighted_upstreams` by weighted round robin: an `upstream_id`, an
inline `upstream`, or, for an entry with neither, the route's own upstream. No rule passing
leaves the route's own upstream.

The round robin is nginx's smooth weighted one, kept per worker as APISIX keeps its own: with
weights 3:1 exactly three of every four requests a worker serves go to the first upstream, and
they are interleaved (A A B A) rather than bunched. An `upstream_id` that names no upstream is
answered with 502, as APISIX answers it ("failed to find upstream by id"). An inline upstream's
`checks` is accepted and ignored, as APISIX's traffic-split ignores it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ando.config.addresses import parse_host_port
from ando.plugins.base import BuildContext, Plugin, Response
from ando.plugins.checks import Problems, expr_problems
from ando.plugins.context import RequestContext
from ando.router.expr import compile_expr

# A pick for an upstream_id that names no upstream.
_MISSING = object()
_NO_UPSTREAM = Response(502, {"error_msg": "502 Bad Gateway"})


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin over a few targets: each pick adds every weight to
    its target's running score, takes the highest score (the first on a tie) and takes the
    total weight off it. Deterministic, and within every `sum(weights)` picks each target is
    chosen exactly `weight` times. Targets with weight 0 are never chosen."""

    __slots__ = ("_current", "_targets", "_total", "_weights")

    def __init__(self, targets: Sequence[Any], weights: Sequence[int]) -> None:
        kept = [(t, w) for t, w in zip(targets, weights, strict=True) if w > 0]
        self._targets = [t for t, _ in kept]
        self._weights = [w for _, w in kept]
        self._current = [0] * len(kept)
        self._total = sum(self._weights)

    def __bool__(self) -> bool:
        return bool(self._targets)

    def pick(self) -> Any:
        """The next target (never called when every weight is 0)."""
        current = self._current
        weights = self._weights
        best = 0
        for i in range(len(current)):
            current[i] += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._targets[best]


class _Rule:
    __slots__ = ("matches", "picker")

    def __init__(
        self,
        matches: tuple[Callable[[Any], bool], ...] | None,
        picker: SmoothWeightedRoundRobin,
    ) -> None:
        self.matches = matches  # None: the rule always applies
        self.picker = picker


class TrafficSplit(Plugin):
    name = "traffic-split"
    priority = 966

    def __init__(self, conf: dict[str, Any], build: BuildContext) -> None:
        super().__init__(conf, build)
        self.log_event = build.log
        self.owner = build.owner
        rules: list[_Rule] = []
        for i, rule in enumerate(conf.get("rules") or ()):
            match = rule.get("match")
            # `match: []` has nothing to fail: like no match at all, the rule applies.
            matches = (
                tuple(compile_expr(m.get("vars") or []).evaluate for m in match) if match else None
            )
            targets = []
            weights = []
            for j, entry in enumerate(rule.get("weighted_upstreams") or ({"weight": 1},)):
                targets.append(self._resolve(entry, build, f"{build.owner}#traffic-split/{i}/{j}"))
                weights.append(int(entry.get("weight", 1)))
            rules.append(_Rule(matches, SmoothWeightedRoundRobin(targets, weights)))
        self.rules = tuple(rules)

    @staticmethod
    def _resolve(entry: dict[str, Any], build: BuildContext, ident: str) -> Any:
        """The runtime upstream an entry sends to: None for the route's own, _MISSING for an
        upstream_id that names nothing. upstream_id wins over an inline upstream (APISIX)."""
        make = build.make_upstream
        if "upstream_id" in entry:
            found = make(str(entry["upstream_id"])) if make is not None else None
            return found if found is not None else _MISSING
        if "upstream" in entry:
            if make is None:
                return _MISSING
            # `checks` is accepted and ignored, as APISIX's traffic-split ignores it.
            inline = {k: v for k, v in entry["upstream"].items() if k != "checks"}
            return make({**inline, "id": ident})
        return None

    @classmethod
    def check_conf(cls, conf: dict[str, Any], on_consumer: bool) -> Problems:
        problems: Problems = []
        for i, rule in enumerate(conf.get("rules") or ()):
            for j, m in enumerate(rule.get("match") or ()):
                problems += expr_problems(m.get("vars") or [], ("rules", i, "match", j, "vars"))
            for j, entry in enumerate(rule.get("weighted_upstreams") or ()):
                up = entry.get("upstream")
                if isinstance(up, dict):
                    where = ("rules", i, "weighted_upstreams", j, "upstream", "nodes")
                    problems.extend((where + p, msg) for p, msg in _node_problems(up))
        return problems

    @classmethod
    def references(cls, conf: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, Any]]:
        return [
            (("rules", i, "weighted_upstreams", j, "upstream_id"), "upstreams", e["upstream_id"])
            for i, rule in enumerate(conf.get("rules") or ())
            for j, e in enumerate(rule.get("weighted_upstreams") or ())
            if e.get("upstream_id") is not None
        ]

    def access(self, ctx: RequestContext) -> Response | None:
        var = ctx.var
        for rule in self.rules:
            matches = rule.matches
            if matches is not None and not any(m(var) for m in matches):
                continue
            if not rule.picker:
                return None  # every weight is 0: the route's own upstream
            target = rule.picker.pick()
            if target is _MISSING:
                self.log_event(
                    "traffic_split_missing_upstream",
                    level="error",
                    owner=self.owner,
                    route_id=ctx.route_id,
                )
                return _NO_UPSTREAM
            ctx.upstream = target
            return None
        return None


def _host_problem(host: str) -> str | None:
    """Why a node host cannot be connected to (the rules of the upstream resource's nodes,
    ando.config.addresses)."""
    v6 = host.startswith("[") or ":" in host
    try:
        parse_host_port(f"[{host.strip('[]')}]" if v6 else host, 0)
    except ValueError:
        if v6:
            return f"'{host}' is not an IPv6 address"
        return f"'{host}' is not a valid host name or IP address"
    return None


def _node_problems(up: dict[str, Any]) -> Problems:
    """Node addresses the schema's patterns let through but no connection could use: an IPv6
    address that does not parse, a broken IPv4 address, a host name with a bad label."""
    out: Problems = []
    nodes = up.get("nodes")
    if isinstance(nodes, dict):
        for addr in nodes:
            host = addr[: addr.find("]") + 1] if addr.startswith("[") else addr.partition(":")[0]
            why = _host_problem(host)
            if why:
                out.append(((addr,), why))
    elif isinstance(nodes, list):
        for j, node in enumerate(nodes):
            why = _host_problem(str(node.get("host", "")))
            if why:
                out.append(((j, "host"), why))
    return out
