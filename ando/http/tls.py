"""TLS for `listen: [{addr, tls: true}]`: certificates chosen per SNI from the config's `ssls`.

One server SSLContext per listener stays bound to the socket for the process's life; its SNI
callback looks up the *current* certificate table, so a reload that adds or replaces an ssl takes
effect on the next handshake without reopening the port.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable, Iterable

_PROTOCOLS = {
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def _load(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    # The ssl module loads PEM only from files: write them privately, load, delete.
    fd, path = tempfile.mkstemp(prefix="ando-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(cert.strip() + "\n" + key.strip() + "\n")
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def _context(pairs: Iterable[tuple[str, str]], protocols: Iterable[str] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_alpn_protocols(["http/1.1"])
    versions = sorted(_PROTOCOLS[p] for p in protocols or () if p in _PROTOCOLS)
    if versions:
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for cert, key in pairs:  # several pairs: e.g. an ECDSA and an RSA certificate, same names
        _load(ctx, cert, key)
    return ctx


class CertTable:
    """SNI name -> SSLContext: exact names, then `*.example.com` wildcards (one label, as
    nginx's server_name), then the default (the first certificate in the file)."""

    __slots__ = ("default", "default_pair", "exact", "wildcard")

    def __init__(self, ssls: Iterable[object]) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}
        self.default: ssl.SSLContext | None = None
        self.default_pair: tuple[str, str] | None = None
        for s in ssls:
            if getattr(s, "status", 1) == 0 or getattr(s, "type", "server") != "server":
                continue
            pairs = [(c.cert, c.key) for c in s.certificates]  # type: ignore[attr-defined]
            if not pairs:
                continue
            ctx = _context(pairs, s.ssl_protocols)  # type: ignore[attr-defined]
            if self.default is None:
                self.default, self.default_pair = ctx, pairs[0]
            for name in s.snis:  # type: ignore[attr-defined]
                if name.startswith("*."):
                    self.wildcard.setdefault(name[1:], ctx)
                else:
                    self.exact.setdefault(name, ctx)

    def match(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name:
            name = server_name.lower()
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot:])
                if ctx is not None:
                    return ctx
        return self.default


def server_context(table: Callable[[], CertTable]) -> ssl.SSLContext:
    """The listener's context. `table()` returns the current CertTable (it changes on reload)."""
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.set_alpn_protocols(["http/1.1"])
    base.minimum_version = ssl.TLSVersion.TLSv1_2
    pair = table().default_pair
    if pair is not None:
        _load(base, *pair)

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        # The server side of an SSLObject does not keep the name the client asked for; the
        # access log reads it from here (ando/observability/access_log.py, add_tls).
        sslobj.ando_sni = name  # type: ignore[attr-defined]
        chosen = table().match(name)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    base.sni_callback = on_sni
    return base
