"""Built-in transform plugins."""

from __future__ import annotations

from ando.plugins.base import Plugin

PLUGINS: tuple[type[Plugin], ...] = ()
