"""prometheus: count this route's requests in the node's metrics (APISIX's prometheus plugin).

On a route, a service, a plugin_config or a global rule, as in APISIX; `prefer_name: true` labels
series with the route's and service's names instead of their ids (where they have one). The
series (`ando_http_status`, `ando_http_latency`, `ando_bandwidth`) are served by the node's
exporter (`ando.observability.prometheus`, default 127.0.0.1:9091/metrics) and pushed to
VictoriaMetrics when configured; node-wide series (connections, reloads, process) are there
whether or not any route has the plugin.

Why the plugin has no phase: a request's status, latencies and sizes are known only when it
ends, and the gateway ends every request in one place, so it records them there for routes whose
config enabled this plugin (ando/observability/metrics.py). A phase function would put an
otherwise plugin-free route on the plugin path, which alone costs more than the counting.
"""

from __future__ import annotations

from ando.plugins.base import Plugin


class Prometheus(Plugin):
    name = "prometheus"
    priority = 500  # APISIX's
