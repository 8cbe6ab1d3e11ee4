"""The node's metrics, as the master adds them up from its workers, in Prometheus' text format.

Each worker keeps its own totals (`ando/observability/metrics.py`) and hands them over when the
master asks (a scrape, a VictoriaMetrics push) and once more when it exits. `NodeTotals` keeps the
latest report of every live worker and folds a worker's last report into `retired` when it is
gone, so the node's counters never go backwards when a worker is replaced.

The text is written here rather than by prometheus-client's `generate_latest`: that one names a
counter family `X_total`, while APISIX's dashboards query `apisix_http_status` and
`apisix_bandwidth` as they are, and Ando's metric names are APISIX's with an `ando_` prefix so a
dashboard ports with a find-and-replace. prometheus-client still provides the process metrics
(`ProcessCollector`, read from /proc for the master and for each worker), and its parser is what
the tests read our output with.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import ProcessCollector

from ando import __version__
from ando.observability.metrics import _NB, _WIDTH, BUCKETS_MS, LATENCY_TYPES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LE = (*(f"{b:g}" for b in BUCKETS_MS), "+Inf")
# Counters a worker reports as plain numbers (summed over workers, kept when a worker exits).
_COUNTERS = ("accepted", "handled", "requests", "dropped")
# Gauges a worker reports (summed over live workers only).
_GAUGES = ("active", "reading", "writing", "waiting")


Table = dict[tuple[Any, ...], list[float]]  # ("status"|"series"|"dropped", *labels) -> values


class NodeTotals:
    """Every worker's latest report, and what exited workers had counted."""

    def __init__(self) -> None:
        self.latest: dict[int, Mapping[str, Any]] = {}  # pid -> its last report
        self._retired_table: dict[tuple[Any, ...], list[float]] = {}
        self._retired_counts: dict[str, float] = {}
        self._retired_log_drops: dict[str, float] = {}

    def update(self, pid: int, report: Mapping[str, Any]) -> None:
        self.latest[pid] = report

    def retire(self, pid: int) -> None:
        """The worker is gone: its last report becomes part of the node's history."""
        report = self.latest.pop(pid, None)
        if report is None:
            return
        _merge_table(self._retired_table, report.get("metrics", {}))
        for name in _COUNTERS:
            self._retired_counts[name] = self._retired_counts.get(name, 0) + report.get(name, 0)
        for name, n in report.get("log_dropped", {}).items():
            self._retired_log_drops[name] = self._retired_log_drops.get(name, 0) + n

    def upstream_status(self) -> dict[tuple[str, str, int], int]:
        """(upstream, ip, port) -> 1 healthy, 0 unhealthy: a node is down for the node when any
        live worker's health checks found it down (each worker checks for itself)."""
        out: dict[tuple[str, str, int], int] = {}
        for report in self.latest.values():
            for name, ip, port, up in report.get("upstream_status", ()):
                key = (name, ip, port)
                out[key] = min(out.get(key, 1), up)
        return out

    def merged(self) -> tuple[Table, dict[str, float], dict[str, float]]:
        """(label table, plain counters and gauges, log lines dropped per pusher) for the node."""
        table = {k: list(v) for k, v in self._retired_table.items()}
        counts = dict(self._retired_counts)
        drops = dict(self._retired_log_drops)
        for name in _GAUGES:
            counts[name] = 0
        for report in self.latest.values():
            _merge_table(table, report.get("metrics", {}))
            for name in (*_COUNTERS, *_GAUGES):
                counts[name] = counts.get(name, 0) + report.get(name, 0)
            for name, n in report.get("log_dropped", {}).items():
                drops[name] = drops.get(name, 0) + n
        return table, counts, drops


def _merge_table(into: dict[tuple[Any, ...], list[float]], dump: Mapping[str, Any]) -> None:
    for row in dump.get("status", ()):
        key = ("status", *row[:-1])
        found = into.get(key)
        if found is None:
            into[key] = [row[-1]]
        else:
            found[0] += row[-1]
    for row in dump.get("series", ()):
        key = ("series", *row[:6])
        found = into.get(key)
        if found is None:
            into[key] = list(row[6:])
        else:
            for i, v in enumerate(row[6:]):
                found[i] += v
    dropped = dump.get("dropped", 0)
    if dropped:
        key = ("dropped",)
        into.setdefault(key, [0])[0] += dropped


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What only the master knows, as of this render: reloads, whether the last one worked,
    which processes run."""

    reloads_ok: int = 0
    reloads_failed: int = 0
    last_reload_ok: bool = True
    workers: Mapping[int, int] = field(default_factory=dict)  # pid -> slot


def render(totals: NodeTotals, facts: NodeFacts, *, master_pid: int | None = None) -> bytes:
    """The whole /metrics page."""
    table, counts, drops = totals.merged()
    out: list[str] = []
    status = [(k[1:], v[0]) for k, v in table.items() if k[0] == "status"]
    series = [(k[1:], v) for k, v in table.items() if k[0] == "series"]

    doc = "HTTP status codes per route, service and consumer."
    _family(out, "ando_http_status", "counter", doc)
    for (code, route, muri, mhost, service, consumer, node), n in status:
        labels = {
            "code": str(code),
            "route": route,
            "matched_uri": muri,
            "matched_host": mhost,
            "service": service,
            "consumer": consumer,
            "node": node,
        }
        _sample(out, "ando_http_status", labels, n)

    # APISIX's latency and bandwidth labels leave out matched_uri and matched_host.
    latency: dict[tuple[str, str, str, str], list[float]] = {}
    for (route, _muri, _mhost, service, consumer, node), values in series:
        key = (route, service, consumer, node)
        found = latency.get(key)
        if found is None:
            latency[key] = list(values)
        else:
            for i, v in enumerate(values):
                found[i] += v
    _family(
        out,
        "ando_http_latency",
        "histogram",
        "Request latency in milliseconds: request (all of it), upstream (waiting for the "
        "upstream), ando (the gateway's own share).",
    )
    for (route, service, consumer, node), v in latency.items():
        for kind, base in LATENCY_TYPES:
            count = v[base + _NB + 1]
            if not count:
                continue
            labels = _series_labels(kind, route, service, consumer, node)
            running = 0.0
            for i, le in enumerate(_LE):
                running += v[base + i]
                _sample(out, "ando_http_latency_bucket", {**labels, "le": le}, running)
            _sample(out, "ando_http_latency_sum", labels, v[base + _NB])
            _sample(out, "ando_http_latency_count", labels, count)
    _family(out, "ando_bandwidth", "counter", "Bytes: ingress from clients, egress to them.")
    for (route, service, consumer, node), v in latency.items():
        for kind, index in (("ingress", _WIDTH - 2), ("egress", _WIDTH - 1)):
            labels = _series_labels(kind, route, service, consumer, node)
            _sample(out, "ando_bandwidth", labels, v[index])

    _family(out, "ando_http_current_connections", "gauge", "Client connections, by state.")
    for state in ("active", "reading", "writing", "waiting", "accepted", "handled"):
        _sample(out, "ando_http_current_connections", {"state": state}, counts.get(state, 0))
    _family(out, "ando_http_requests_total", "gauge", "Requests received by the node.")
    _sample(out, "ando_http_requests_total", {}, counts.get("requests", 0))

    doc = "Health of upstream nodes with health checks: 1 healthy, 0 unhealthy."
    _family(out, "ando_upstream_status", "gauge", doc)
    for (name, ip, port), up in sorted(totals.upstream_status().items()):
        _sample(out, "ando_upstream_status", {"name": name, "ip": ip, "port": str(port)}, up)
    _family(
        out,
        "ando_metrics_series_dropped",
        "counter",
        "Label sets not recorded because a worker's table was full (ando.observability."
        "prometheus.max_series).",
    )
    _sample(out, "ando_metrics_series_dropped", {}, table.get(("dropped",), [0])[0])
    _family(
        out,
        "ando_log_entries_dropped",
        "counter",
        "Log lines a pusher (VictoriaLogs, http-logger) dropped: its queue was full.",
    )
    for pusher, n in sorted(drops.items()):
        _sample(out, "ando_log_entries_dropped", {"pusher": pusher}, n)

    _family(out, "ando_config_reload_total", "counter", "Config reloads, by result.")
    _sample(out, "ando_config_reload_total", {"result": "success"}, facts.reloads_ok)
    _sample(out, "ando_config_reload_total", {"result": "failure"}, facts.reloads_failed)
    _family(
        out,
        "ando_config_last_reload_successful",
        "gauge",
        "1 when the last reload (or the start) loaded its config.",
    )
    _sample(out, "ando_config_last_reload_successful", {}, 1 if facts.last_reload_ok else 0)
    _family(out, "ando_node_info", "gauge", "This node: Ando's version and the host name.")
    _sample(out, "ando_node_info", {"version": __version__, "hostname": socket.gethostname()}, 1)

    processes = [("master", master_pid)] if master_pid is not None else []
    processes += [(f"worker-{slot}", pid) for pid, slot in sorted(facts.workers.items())]
    _process_metrics(out, processes)
    return "".join(out).encode()


def _series_labels(kind: str, route: str, service: str, consumer: str, node: str) -> dict[str, str]:
    return {"type": kind, "route": route, "service": service, "consumer": consumer, "node": node}


def _process_metrics(out: list[str], processes: Iterable[tuple[str, int | None]]) -> None:
    """prometheus-client's process_* metrics, for each process of the node, labelled by role."""
    families: dict[str, tuple[str, str, list[tuple[str, dict[str, str], float]]]] = {}
    for role, pid in processes:
        collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
        for family in collector.collect():
            entry = families.setdefault(family.name, (family.type, family.documentation, []))
            for sample in family.samples:
                entry[2].append((sample.name, {**sample.labels, "process": role}, sample.value))
    for name, (kind, doc, samples) in families.items():
        shown = samples[0][0] if kind == "counter" and samples else name
        _family(out, shown, kind, doc)
        for sample_name, labels, value in samples:
            _sample(out, sample_name, labels, value)


def _family(out: list[str], name: str, kind: str, doc: str) -> None:
    out.append(f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} {kind}\n")


def _sample(out: list[str], name: str, labels: Mapping[str, str], value: float) -> None:
    if labels:
        inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{inner}}} {_number(value)}\n")
    else:
        out.append(f"{name} {_number(value)}\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
