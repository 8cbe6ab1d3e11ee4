"""Credentials never reach a log: query arguments and headers that carry them are masked.

Why a list of names rather than "log nothing": an operator needs the query string and headers to
debug, and only a few names carry secrets. Those are APISIX's auth plugins' defaults (key-auth's
`apikey`, jwt-auth's `jwt`, Authorization), common API-key spellings, every name an auth plugin
in the running config reads its credential from (a key-auth with `query: k` makes `k` secret),
and the operator's own list (`ando.observability.access_log.redact`). Names match
case-insensitively, after percent-decoding, as the auth plugins themselves read them: a client
cannot hide `apikey` from redaction by spelling it `api%6Bey`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

MASK = "[REDACTED]"
_MASK_VALUE = b"=" + MASK.encode()

# Headers that carry credentials whatever the config says.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "apikey",
        "api-key",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
    }
)
# Query arguments that carry credentials whatever the config says.
SECRET_ARGS = frozenset(
    {
        "apikey",
        "api_key",
        "api-key",
        "key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "jwt",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "signature",
        "sig",
        "auth",
    }
)

# Where auth plugins take their credential from: plugin -> conf fields naming a header, a query
# argument or a cookie (the cookie header is masked as a whole already).
_AUTH_SOURCES = {
    "key-auth": ("header", "query"),
    "jwt-auth": ("header", "query"),
}


class Redactor:
    """Masks secret query arguments and headers. Built once per config; per request it costs a
    split of the query string and one set lookup per argument."""

    __slots__ = ("_arg_bytes", "args", "headers")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        names = {n.strip().lower() for n in extra if n and n.strip()}
        self.headers = SECRET_HEADERS | names
        self.args = SECRET_ARGS | names
        self._arg_bytes = frozenset(n.encode("latin-1", "replace") for n in self.args)

    def query(self, raw: bytes) -> str:
        """The query string as received, with the value of every secret argument masked."""
        parts = raw.split(b"&")
        secret = self._arg_bytes
        changed = False
        for i, part in enumerate(parts):
            name, sep, _ = part.partition(b"=")
            key = name.lower()
            if b"%" in key or b"+" in key:  # decoded as the auth plugins decode it
                hit = unquote_plus(name.decode("latin-1")).lower() in self.args
            else:
                hit = key in secret
            if hit:
                parts[i] = name + _MASK_VALUE if sep else name
                changed = True
        return (b"&".join(parts) if changed else raw).decode("latin-1")

    def query_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Decoded query arguments (APISIX's `querystring` object) with secret values masked."""
        return {k: (MASK if k.lower() in self.args else v) for k, v in args.items()}

    def header_map(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers as one object, lower-case names (APISIX's `headers`), secrets masked; a
        repeated header keeps its values joined by ", " as HTTP allows."""
        out: dict[str, str] = {}
        secret = self.headers
        for name, value in headers:
            lower = name.lower()
            if lower in secret:
                value = MASK
            if lower in out:
                out[lower] = out[lower] + ", " + value
            else:
                out[lower] = value
        return out


def credential_names(snapshot: Any) -> set[str]:
    """Every header and query argument name an auth plugin of this config reads a credential
    from, wherever the plugin is configured (routes, services, plugin configs, global rules,
    consumer groups)."""
    holders: list[Mapping[str, Any]] = [r.plugins for r in snapshot.routes]
    for section in (
        snapshot.services,
        snapshot.plugin_configs,
        snapshot.global_rules,
        snapshot.consumer_groups,
    ):
        holders.extend(item.plugins for item in section.values())
    names: set[str] = set()
    for plugins in holders:
        for plugin, fields in _AUTH_SOURCES.items():
            conf = plugins.get(plugin)
            if not isinstance(conf, Mapping):
                continue
            for field in fields:
                value = conf.get(field)
                if isinstance(value, str) and value:
                    names.add(value.lower())
    return names
