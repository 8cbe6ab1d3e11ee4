"""A worker's request metrics: plain counters in this process, read by the master on a scrape.

Why not prometheus-client's multiprocess mode: every `labels(...)` call there takes a lock and
looks the child up in a dict of dicts, and every increment is a locked write into a per-process
mmap file; the six updates APISIX makes per request (status, three latencies, two bandwidths)
cost about 10 microseconds that way, three times the budget of the whole plugin. Here one
request costs two dict lookups and a few integer additions on lists this worker alone writes,
so nothing is locked and nothing is shared while requests run. The master asks each worker for
its totals when it is scraped (or pushes to VictoriaMetrics) and adds them up: one scrape counts
every worker's requests exactly once, and a worker that exits hands over its final totals, which
the master keeps (`ando/observability/exposition.py`).

Labels are APISIX's: `route` and `service` are ids (or names with `prefer_name`), `matched_uri`
and `matched_host` the route's own patterns, `consumer` the consumer's name, `node` the upstream
node's IP. None of them is ever taken from the request, so a client cannot make new series: a
request no route matched is counted under route "". Each worker still keeps at most
`max_series` label sets per metric and counts what it had to drop.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

# APISIX's default buckets for apisix_http_latency, in milliseconds.
BUCKETS_MS: tuple[float, ...] = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
)  # fmt: skip
DEFAULT_MAX_SERIES = 10_000
_NB = len(BUCKETS_MS) + 1  # bucket slots per histogram; the last one is +Inf
# A series' values as the master receives them (dump): per type (request, upstream, ando) the
# bucket counts (not cumulative), the sum and the count; then ingress and egress bytes.
_REQ, _UP, _ANDO = 0, _NB + 2, 2 * (_NB + 2)
_WIDTH = 3 * (_NB + 2) + 2
LATENCY_TYPES = (("request", _REQ), ("upstream", _UP), ("ando", _ANDO))

RouteKey = tuple[str, str, str, str]  # route, matched_uri, matched_host, service
UNMATCHED: RouteKey = ("", "", "", "")


class RouteMetrics:
    """A route's label values, fixed when the config is compiled. Only the uri pattern that
    matched and, for a route with several hosts, the host pattern vary per request."""

    __slots__ = ("_by_uri", "_hosts", "_route", "_service", "_wild")

    def __init__(
        self, route: str, service: str, uris: tuple[str, ...], hosts: tuple[str, ...] | None
    ) -> None:
        self._route = route
        self._service = service
        hosts = tuple(h.lower() for h in hosts or ())
        self._hosts = frozenset(h for h in hosts if not h.startswith("*"))
        self._wild = tuple(h for h in hosts if h.startswith("*"))
        one_host = hosts[0] if len(hosts) == 1 else None
        self._by_uri: dict[str, RouteKey] | None = (
            {u: (route, u, one_host or "", service) for u in uris}
            if one_host is not None or not hosts
            else None
        )

    def key(self, matched_uri: str, host: str) -> RouteKey:
        by_uri = self._by_uri
        if by_uri is not None:
            found = by_uri.get(matched_uri)
            if found is not None:
                return found
            return (self._route, matched_uri, "", self._service)
        return (self._route, matched_uri, self._matched_host(host), self._service)

    def _matched_host(self, host: str) -> str:
        if host in self._hosts:
            return host
        for pattern in self._wild:
            if host.endswith(pattern[1:]):
                return pattern
        return ""


class _Series:
    """One (route, consumer, node): its status codes, histograms and bytes."""

    __slots__ = ("ando", "ando_sum", "codes", "egress", "ingress", "req", "req_sum", "up", "up_sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.req = [0] * _NB
        self.up = [0] * _NB
        self.ando = [0] * _NB
        self.req_sum = self.up_sum = self.ando_sum = 0.0
        self.ingress = self.egress = 0

    def values(self) -> list[float]:
        out: list[float] = []
        hists = ((self.req, self.req_sum), (self.up, self.up_sum), (self.ando, self.ando_sum))
        for counts, total in hists:
            out += counts
            out += (total, sum(counts))
        out += (self.ingress, self.egress)
        return out


class WorkerMetrics:
    """This worker's totals since it started. `record` is on the request path."""

    __slots__ = ("_series", "_statuses", "dropped", "max_series")

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._series: dict[tuple[RouteKey, str, str], _Series] = {}
        self._statuses = 0  # (series, code) pairs recorded
        self.dropped = 0  # label sets not recorded because a table was full

    def record(
        self,
        route: RouteKey,
        code: int,
        consumer: str,
        node: str,
        latency: float,
        upstream_latency: float | None,
        ingress: int,
        egress: int,
    ) -> None:
        """One finished request. Latencies in seconds (recorded in ms, as APISIX does)."""
        key = (route, consumer, node)
        s = self._series.get(key)
        if s is None:
            if len(self._series) >= self.max_series:
                self.dropped += 1
                return
            s = self._series[key] = _Series()
        codes = s.codes
        n = codes.get(code)
        if n is not None:
            codes[code] = n + 1
        elif self._statuses < self.max_series:
            codes[code] = 1
            self._statuses += 1
        else:
            self.dropped += 1
        ms = latency * 1000.0
        s.req[bisect_left(BUCKETS_MS, ms)] += 1
        s.req_sum += ms
        if upstream_latency is not None:
            ums = upstream_latency * 1000.0
            s.up[bisect_left(BUCKETS_MS, ums)] += 1
            s.up_sum += ums
            ms = ms - ums if ms > ums else 0.0
        s.ando[bisect_left(BUCKETS_MS, ms)] += 1
        s.ando_sum += ms
        s.ingress += ingress
        s.egress += egress

    def dump(self) -> dict[str, Any]:
        """Everything recorded so far, as JSON-able lists (for the master)."""
        status = []
        series = []
        for (route, who, node), s in self._series.items():
            status += [[code, *route, who, node, n] for code, n in s.codes.items()]
            series.append([*route, who, node, *s.values()])
        return {"status": status, "series": series, "dropped": self.dropped}


def request_length(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: int
) -> int:
    """nginx's $request_length, rebuilt from the parsed head: exact for a client that writes
    single spaces and `name: value` lines (every common one does)."""
    n = len(method) + len(target) + 12 + 2  # "M T HTTP/1.1\r\n", then the blank line
    for k, v in headers:
        n += len(k) + len(v) + 4
    return n + body


def max_series_of(observability: Mapping[str, Any]) -> int:
    """`ando.observability.prometheus.max_series`, with its default."""
    return int(observability.get("prometheus", {}).get("max_series", DEFAULT_MAX_SERIES))
