"""Bind-check every listener in the master before any worker is forked.

Why: each worker binds its own SO_REUSEPORT socket, so a port that is taken would otherwise show up
as N workers crashing in a loop. One plain bind (SO_REUSEADDR, *without* SO_REUSEPORT) here turns
it into one clear line and exit 1; leaving SO_REUSEPORT off also means a second gateway started on
the same port is refused instead of silently sharing the port with the first.

The master's own listener (the status endpoints, ando/runtime/status.py) is bound here the same
way, and kept: it is the master's socket, not a worker's.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from ando.config.snapshot import Listener


def describe(listener: Listener) -> str:
    return address(listener.host, listener.port)


def address(host: str, port: int) -> str:
    """`host:port` as a user writes it in the config (`[v6]:port` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        sockets = bind_sockets(listener.host, listener.port, backlog=1)
    except BindError as e:
        return str(e)
    for sock in sockets:
        sock.close()
    return None


class BindError(Exception):
    """An address that cannot be bound, with the reason in words a user can act on."""


def bind_sockets(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` resolves to, as asyncio's
    create_server would make them (SO_REUSEADDR, IPv6-only). Raises BindError, having closed
    whatever it had opened."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"cannot resolve '{host}': {e.strerror or e}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as e:
                raise BindError(e.strerror or str(e)) from None
            sockets.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as asyncio's create_server does: no dual stack
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(backlog)
                sock.setblocking(False)
            except OSError as e:
                raise BindError(_explain(e)) from None
    except BindError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _explain(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use (another ando, or another server, is listening there)"
    if e.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available (no interface on this host has that address)"
    return e.strerror or str(e)
