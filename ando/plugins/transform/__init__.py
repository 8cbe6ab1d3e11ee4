"""Built-in transform plugins."""

from __future__ import annotations

from ando.plugins.base import Plugin
from ando.plugins.transform.fault_injection import FaultInjection
from ando.plugins.transform.mocking import Mocking
from ando.plugins.transform.proxy_rewrite import ProxyRewrite
from ando.plugins.transform.redirect import Redirect
from ando.plugins.transform.request_id import RequestId
from ando.plugins.transform.request_validation import RequestValidation
from ando.plugins.transform.response_rewrite import ResponseRewrite

PLUGINS: tuple[type[Plugin], ...] = (
    FaultInjection,
    Mocking,
    RequestValidation,
    ProxyRewrite,
    ResponseRewrite,
    RequestId,
    Redirect,
)
