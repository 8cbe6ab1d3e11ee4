"""Health checks (an upstream's `checks`), APISIX's fields and counting rules, in each worker.

Active checks probe every node of the upstream on their own: an HTTP(S) GET of `http_path` (or a
bare TCP connect for `type: tcp`) every `healthy.interval` seconds while the node is healthy and
every `unhealthy.interval` seconds while it is not. Passive checks judge the node by the answers
to real requests: the upstream's status, a connection that fails, a read that times out.

Counting is lua-resty-healthcheck's, which APISIX uses: a node is healthy until `tcp_failures`
failed connections, `timeouts` timeouts or `http_failures` responses with an unhealthy status in
a row (each counted separately); it is healthy again after `successes` successes in a row. A
success resets the failure counts and a failure the success count. An unhealthy node is left out
of the balancer's choice (unless every node is, see ando/proxy/balancer/base.py); each change is
one gateway event (`upstream_node_unhealthy` / `upstream_node_healthy`) and shows in
`ando_upstream_status`.

Why each worker checks for itself, as nginx's `max_fails` does without a shared zone: a worker
acts on what it has seen at once, with no lock and no cross-process message on the request path,
and active probes keep the workers' views in step within one interval. The probe load grows with
the worker count (a few small requests per node per second on an edge node's handful of workers).
A checker lives as long as its upstream's nodes and `checks` stay the same, across reloads, so a
reload does not forget that a node is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ando.config.snapshot import thaw, with_defaults
from ando.proxy.balancer import Balancer, Node

# The schema's defaults, for objects the file leaves out (defaults only fill objects present).
_ACTIVE = {
    "type": "http",
    "timeout": 1.0,
    "concurrency": 10,
    "http_path": "/",
    "https_verify_certificate": True,
    "req_headers": (),
}
_ACTIVE_HEALTHY = {"interval": 1, "http_statuses": (200, 302), "successes": 2}
_ACTIVE_UNHEALTHY = {
    "interval": 1,
    "http_statuses": (429, 404, 500, 501, 502, 503, 504, 505),
    "http_failures": 5,
    "tcp_failures": 2,
    "timeouts": 3,
}
_PASSIVE_HEALTHY = {"http_statuses": (*range(200, 209), 226, *range(300, 309)), "successes": 5}
_PASSIVE_UNHEALTHY = {"http_statuses": (429, 500, 503), "tcp_failures": 2, "timeouts": 7,
                      "http_failures": 5}  # fmt: skip
_MAX_STATUS_LINE = 1024

SUCCESS, HTTP_FAILURE, TCP_FAILURE, TIMEOUT = "success", "http_failures", "tcp_failures", "timeouts"
NEUTRAL = "neutral"  # a status in neither list: counts for nothing


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Rules:
    """One side's (active or passive) thresholds."""

    __slots__ = ("bad_statuses", "good_statuses", "limits", "successes")

    def __init__(self, healthy: Mapping[str, Any], unhealthy: Mapping[str, Any]) -> None:
        self.good_statuses = frozenset(healthy["http_statuses"])
        self.successes = int(healthy["successes"])
        self.bad_statuses = frozenset(unhealthy["http_statuses"])
        # A threshold of 0 (allowed for passive checks) turns that kind of failure off.
        self.limits = {kind: int(unhealthy[kind]) for kind in (HTTP_FAILURE, TCP_FAILURE, TIMEOUT)}


class _NodeState:
    __slots__ = ("failures", "healthy", "successes")

    def __init__(self) -> None:
        self.healthy = True
        self.successes = 0
        self.failures = {HTTP_FAILURE: 0, TCP_FAILURE: 0, TIMEOUT: 0}


class HealthChecker:
    """The health of one upstream's nodes in this worker."""

    def __init__(
        self,
        name: str,
        checks: Mapping[str, Any],
        nodes: Iterable[Node],
        log: Callable[..., None],
        *,
        pass_host: str = "pass",
        upstream_host: str | None = None,
    ) -> None:
        self.name = name
        self._log = log
        self.nodes = tuple(dict.fromkeys(nodes))
        self._state = {n: _NodeState() for n in self.nodes}
        self._balancers: list[Balancer] = []
        active = with_defaults(checks.get("active"), _ACTIVE)
        self.active = active
        healthy = with_defaults(active.get("healthy"), _ACTIVE_HEALTHY)
        unhealthy = with_defaults(active.get("unhealthy"), _ACTIVE_UNHEALTHY)
        self._active_rules = _Rules(healthy, unhealthy)
        self._healthy_interval = float(healthy["interval"])
        self._unhealthy_interval = float(unhealthy["interval"])
        passive = checks.get("passive")
        self._passive_rules: _Rules | None = None
        if passive is not None:
            self._passive_rules = _Rules(
                with_defaults(passive.get("healthy"), _PASSIVE_HEALTHY),
                with_defaults(passive.get("unhealthy"), _PASSIVE_UNHEALTHY),
            )
        self._tls: ssl.SSLContext | None = None
        if active["type"] == "https":
            self._tls = ssl.create_default_context()
            if not active["https_verify_certificate"]:
                self._tls.check_hostname = False
                self._tls.verify_mode = ssl.CERT_NONE
        # The probe's Host (and TLS SNI) per node, as APISIX adds its checker targets
        # (apisix/upstream.lua, create_checker): pass_host rewrite's upstream_host, else with
        # pass_host node a node named by domain, else `checks.active.host`, else the node's host.
        rewrite = upstream_host if pass_host == "rewrite" and upstream_host else None
        self._probe_host = {
            n: rewrite
            or (n.host if pass_host == "node" and not _is_ip(n.host) else None)
            or active.get("host")
            or n.host
            for n in self.nodes
        }
        self._request = self._probe_request(active, self._probe_host)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _probe_request(
        active: Mapping[str, Any], hosts: Mapping[Node, str]
    ) -> Callable[[Node], bytes]:
        path = str(active["http_path"])
        extra = "".join(f"{h}\r\n" for h in active["req_headers"])
        # Ando's own User-Agent, unless req_headers has one: a probe never sends two.
        if not any(
            h.split(":", 1)[0].strip().lower() == "user-agent" for h in active["req_headers"]
        ):
            extra = "User-Agent: ando-health-check\r\n" + extra

        def build(node: Node) -> bytes:
            return (
                f"GET {path} HTTP/1.0\r\nHost: {hosts.get(node) or node.host}\r\n{extra}\r\n"
            ).encode("latin-1")

        return build

    # --- the balancers it steers ------------------------------------------------------------

    def attach(self, balancer: Balancer) -> None:
        """Steer `balancer` (a new config's, for the same upstream): it learns the nodes that
        are down now, and every later change."""
        self._balancers.append(balancer)
        for node, state in self._state.items():
            if not state.healthy:
                balancer.mark_down(node)

    def detach_all(self) -> None:
        self._balancers.clear()

    # --- outcomes ---------------------------------------------------------------------------

    def passive(self, node: Node, outcome: str) -> None:
        """A real request's outcome at `node` (passive checks; ignored without them)."""
        rules = self._passive_rules
        if rules is not None:
            self._count(node, outcome, rules, "passive")

    def passive_status(self, node: Node, status: int) -> None:
        rules = self._passive_rules
        if rules is None:
            return
        if status in rules.bad_statuses:
            self._count(node, HTTP_FAILURE, rules, "passive")
        elif status in rules.good_statuses:
            self._count(node, SUCCESS, rules, "passive")

    def _count(self, node: Node, outcome: str, rules: _Rules, check: str) -> None:
        state = self._state.get(node)
        if state is None or outcome == NEUTRAL:
            return
        # A threshold of 0 makes that report a no-op: it neither counts nor resets the other
        # counts (lua-resty-healthcheck's incr_counter returns first thing when limit == 0).
        if outcome == SUCCESS:
            if not rules.successes:
                return
            for kind in state.failures:
                state.failures[kind] = 0
            if state.healthy:
                return
            state.successes += 1
            if state.successes >= rules.successes:
                self._set(node, state, True, check, "successes", state.successes)
            return
        limit = rules.limits[outcome]
        if not limit:
            return
        state.successes = 0
        state.failures[outcome] += 1
        if state.healthy and state.failures[outcome] >= limit:
            self._set(node, state, False, check, outcome, state.failures[outcome])

    def _set(
        self, node: Node, state: _NodeState, healthy: bool, check: str, why: str, n: int
    ) -> None:
        state.healthy = healthy
        state.successes = 0
        for kind in state.failures:
            state.failures[kind] = 0
        for balancer in self._balancers:
            (balancer.mark_up if healthy else balancer.mark_down)(node)
        self._log(
            "upstream_node_healthy" if healthy else "upstream_node_unhealthy",
            level="info" if healthy else "warn",
            upstream=self.name,
            node=node.addr,
            check=check,
            reason=f"{n} {why}",
        )

    def status(self) -> list[list[Any]]:
        """[[upstream name, ip, port, 1 healthy | 0 unhealthy], ...] for ando_upstream_status."""
        return [[self.name, n.host, n.port, 1 if s.healthy else 0] for n, s in self._state.items()]

    # --- active probes ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe_forever(self) -> None:
        limit = asyncio.Semaphore(max(1, int(self.active["concurrency"])))
        due = dict.fromkeys(self.nodes, 0.0)
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            ready = [n for n, t in due.items() if t <= now]
            if ready:
                await asyncio.gather(*(self._probe_one(n, limit) for n in ready))
                now = loop.time()
                for n in ready:
                    healthy = self._state[n].healthy
                    due[n] = now + (self._healthy_interval if healthy else self._unhealthy_interval)
            await asyncio.sleep(max(0.0, min(due.values()) - loop.time()))

    async def _probe_one(self, node: Node, limit: asyncio.Semaphore) -> None:
        async with limit:
            outcome = await self.probe(node)
        self._count(node, outcome, self._active_rules, "active")

    async def probe(self, node: Node) -> str:
        """One probe of `node`: SUCCESS, HTTP_FAILURE, TCP_FAILURE, TIMEOUT or NEUTRAL."""
        active = self.active
        port = int(active.get("port") or node.port)
        timeout = float(active["timeout"])
        writer = None
        try:
            async with asyncio.timeout(timeout):
                try:
                    reader, writer = await asyncio.open_connection(
                        node.host,
                        port,
                        ssl=self._tls,
                        server_hostname=self._probe_host.get(node) if self._tls else None,
                    )
                except (OSError, ssl.SSLError):
                    return TCP_FAILURE
                if active["type"] == "tcp":
                    return SUCCESS
                writer.write(self._request(node))
                line = await reader.readline()
        except TimeoutError:
            return TIMEOUT
        except (OSError, ssl.SSLError, ValueError):
            return TCP_FAILURE
        finally:
            if writer is not None:
                writer.close()
        parts = line[:_MAX_STATUS_LINE].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return HTTP_FAILURE
        status = int(parts[1])
        if status in self._active_rules.good_statuses:
            return SUCCESS
        if status in self._active_rules.bad_statuses:
            return HTTP_FAILURE
        return NEUTRAL  # neither listed: lua-resty-healthcheck leaves the counts alone


class HealthRegistry:
    """The worker's checkers, kept across reloads while an upstream's nodes and checks stay."""

    def __init__(self, log: Callable[..., None]) -> None:
        self._log = log
        self._checkers: dict[tuple[Any, ...], HealthChecker] = {}

    def sync(self, checked: Iterable[tuple[str, Any]]) -> None:
        """`checked`: (name, UpstreamRuntime) for every upstream of the new config with `checks`.
        Reuses, creates and stops checkers; sets each runtime's `health`."""
        keep: dict[tuple[Any, ...], HealthChecker] = {}
        for name, upstream in checked:
            record = upstream.record
            key = (
                name,
                orjson.dumps(thaw(record.checks), option=orjson.OPT_SORT_KEYS),
                upstream.nodes,
                record.pass_host,
                record.upstream_host,
            )
            checker = keep.get(key) or self._checkers.get(key)
            if checker is None:
                checker = HealthChecker(
                    name,
                    record.checks,
                    upstream.nodes,
                    self._log,
                    pass_host=record.pass_host,
                    upstream_host=record.upstream_host,
                )
            elif key not in keep:
                checker.detach_all()
            checker.attach(upstream.balancer)
            upstream.health = checker
            keep[key] = checker
        for key, old in self._checkers.items():
            if key not in keep:
                old.stop()
        self._checkers = keep
        for checker in keep.values():
            with contextlib.suppress(RuntimeError):  # no running loop: built outside a worker
                checker.start()

    def stop_all(self) -> None:
        for checker in self._checkers.values():
            checker.stop()

    def status(self) -> list[list[Any]]:
        return [row for c in self._checkers.values() for row in c.status()]
