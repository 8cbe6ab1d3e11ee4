"""Built-in authentication plugins: they identify a consumer in `rewrite`."""

from __future__ import annotations

from ando.plugins.auth.basic_auth import BasicAuth
from ando.plugins.auth.consumer_restriction import ConsumerRestriction
from ando.plugins.auth.hmac_auth import HmacAuth
from ando.plugins.auth.jwt_auth import JwtAuth
from ando.plugins.auth.key_auth import KeyAuth
from ando.plugins.base import Plugin

PLUGINS: tuple[type[Plugin], ...] = (
    KeyAuth,
    BasicAuth,
    JwtAuth,
    HmacAuth,
    ConsumerRestriction,
)
