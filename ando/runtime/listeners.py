"""Bind-check every listener in the master before any worker is forked.

Why: each worker binds its own SO_REUSEPORT socket, so a port that is taken would otherwise show up
as N workers crashing in a loop. One plain bind (SO_REUSEADDR, *without* SO_REUSEPORT) here turns
it into one clear line and exit 1; leaving SO_REUSEPORT off also means a second gateway started on
the same port is refused instead of silently sharing the port with the first.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from ando.config.snapshot import Listener


def describe(listener: Listener) -> str:
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"{host}:{listener.port}"


def check_listeners(listeners: Iterable[Listener]) -> list[str]:
    """One message per listener that cannot be bound; empty when all can."""
    problems: list[str] = []
    for listener in listeners:
        problem = _check(listener)
        if problem:
            problems.append(f"cannot listen on {describe(listener)}: {problem}")
    return problems


def _check(listener: Listener) -> str | None:
    try:
        infos = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        return f"cannot resolve '{listener.host}': {e.strerror or e}"
    for family, kind, proto, _, addr in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as e:
            return e.strerror or str(e)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server does: no dual stack
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(1)
        except OSError as e:
            return _explain(e)
        finally:
            sock.close()
    return None


def _explain(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use (another ando, or another server, is listening there)"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface on this host has that address)"
    return e.strerror or str(e)
