"""Built-in traffic plugins."""

from __future__ import annotations

from ando.plugins.base import Plugin
from ando.plugins.traffic.api_breaker import ApiBreaker
from ando.plugins.traffic.limit_conn import LimitConn
from ando.plugins.traffic.limit_count import LimitCount
from ando.plugins.traffic.limit_req import LimitReq
from ando.plugins.traffic.traffic_split import TrafficSplit

PLUGINS: tuple[type[Plugin], ...] = (LimitCount, LimitReq, LimitConn, TrafficSplit, ApiBreaker)
