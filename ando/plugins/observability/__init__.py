"""Built-in observability plugins: loggers that ship each request's entry elsewhere."""

from __future__ import annotations

from ando.plugins.base import Plugin
from ando.plugins.observability.http_logger import HttpLogger

PLUGINS: tuple[type[Plugin], ...] = (HttpLogger,)
