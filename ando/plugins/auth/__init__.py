"""Built-in authentication plugins: they identify a consumer in `rewrite`."""

from __future__ import annotations

from ando.plugins.auth.key_auth import KeyAuth
from ando.plugins.base import Plugin

PLUGINS: tuple[type[Plugin], ...] = (KeyAuth,)
