"""Built-in observability plugins: loggers that ship each request's entry elsewhere, metrics."""

from __future__ import annotations

from ando.plugins.base import Plugin
from ando.plugins.observability.http_logger import HttpLogger
from ando.plugins.observability.prometheus import Prometheus

PLUGINS: tuple[type[Plugin], ...] = (HttpLogger, Prometheus)
