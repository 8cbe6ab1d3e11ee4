"""Built-in security plugins."""

from __future__ import annotations

from ando.plugins.base import Plugin
from ando.plugins.security.cors import Cors
from ando.plugins.security.csrf import Csrf
from ando.plugins.security.ip_restriction import IpRestriction
from ando.plugins.security.real_ip import RealIp
from ando.plugins.security.referer_restriction import RefererRestriction
from ando.plugins.security.ua_restriction import UaRestriction
from ando.plugins.security.uri_blocker import UriBlocker

PLUGINS: tuple[type[Plugin], ...] = (
    RealIp,
    Cors,
    IpRestriction,
    UaRestriction,
    RefererRestriction,
    Csrf,
    UriBlocker,
)
