"""One JSON line per request, written in batches so a request never waits on a write.

Lines are collected during a loop iteration and written together at its end (one syscall for
many requests under load). The destination is stdout or a file (`ando.observability.access_log`),
reopened on SIGUSR1 so logrotate can move it; the same lines optionally go to VictoriaLogs
(`ando.observability.victoria_logs`). Credentials never appear: the query string is logged with
secret arguments masked (ando/observability/redact.py), and no header is logged but X-Request-Id.

Why a bytearray and not a list of lines: each line is appended and its bytes object freed at
once. Holding hundreds of freshly serialized lines until the end of the iteration made the
allocator hand memory back to the kernel and fault it in again, several microseconds per line.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ando.observability.redact import Redactor, credential_names
from ando.observability.victoria_logs import VictoriaLogs, settings_of

MAX_BUFFERED = 4 * 1024 * 1024  # beyond this (a stuck stdout), lines are dropped and counted
CLOSE_TIMEOUT = 3.0  # seconds a retired VictoriaLogs pusher gets to send what it holds
_OPT = orjson.OPT_APPEND_NEWLINE
_background: set[asyncio.Task[None]] = set()


class FileSink:
    """stdout, stderr or a file opened for appending."""

    __slots__ = ("_buf", "_fd", "_owns_fd", "_scheduled", "dropped", "loop", "path")

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.path = path
        self._fd, self._owns_fd = self._open(path)
        self._buf = bytearray()
        self._scheduled = False
        self.dropped = 0

    @staticmethod
    def _open(path: str) -> tuple[int, bool]:
        if path == "stdout":
            return sys.stdout.fileno(), False
        if path == "stderr":
            return sys.stderr.fileno(), False
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), True

    def add(self, line: bytes) -> None:
        self._buf += line
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buf = self._buf
        if not buf:
            return
        try:
            while buf:
                n = os.write(self._fd, buf)
                del buf[:n]
        except BlockingIOError:
            if len(buf) > MAX_BUFFERED:
                self.dropped += buf.count(b"\n")
                buf.clear()
            else:
                self._scheduled = True
                self.loop.call_later(0.05, self.flush)
        except OSError:
            self.dropped += buf.count(b"\n")
            buf.clear()

    def reopen(self) -> None:
        """logrotate moved the file: write what is buffered to the old one, open the path anew.
        If the path cannot be opened now, keep writing to the old file rather than lose lines."""
        if not self._owns_fd:
            return
        self.flush()
        try:
            fd, _ = self._open(self.path)
        except OSError:
            return
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
            self._owns_fd = False


class AccessLog:
    """What the gateway writes request records to: formats the time, masks credentials, and
    hands each line to the file and to VictoriaLogs."""

    __slots__ = (
        "_ms",
        "_ms_text",
        "_sec",
        "_sec_text",
        "file",
        "query",
        "redactor",
        "route_names",
        "victoria",
    )

    def __init__(
        self,
        file: FileSink | None,
        victoria: VictoriaLogs | None,
        redactor: Redactor,
        route_names: Mapping[str, str] | None = None,
    ) -> None:
        self.file = file
        self.victoria = victoria
        self.redactor = redactor
        self.query = redactor.query  # the query string as logged: secrets masked
        self.route_names = route_names or {}
        self._sec = -1
        self._ms = -1
        self._ms_text = ""
        self._sec_text = ""

    def timestamp(self, now: float) -> str:
        """ISO 8601 with milliseconds, formatted once per millisecond (many requests share one)."""
        ms = int(now * 1000)
        if ms == self._ms:
            return self._ms_text
        sec = ms // 1000
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self._ms = ms
        self._ms_text = f"{self._sec_text}.{ms % 1000:03d}Z"
        return self._ms_text

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=_OPT)
        file = self.file
        if file is not None:
            file.add(line)
        victoria = self.victoria
        if victoria is not None:
            victoria.push(line)

    def event(self, record: Mapping[str, Any]) -> None:
        """A gateway event (JSON, with `time`, `level`, `event`) for VictoriaLogs: the events
        already go to stderr; this sends them where the access lines go."""
        if self.victoria is not None:
            self.victoria.push(orjson.dumps(record, option=_OPT, default=str))

    def reopen(self) -> None:
        if self.file is not None:
            self.file.reopen()

    async def aclose(self, timeout: float) -> None:
        """At worker exit: write the buffered lines, send what VictoriaLogs has not got yet."""
        if self.file is not None:
            self.file.close()
        if self.victoria is not None:
            await self.victoria.close(timeout)


def add_tls(record: dict[str, Any], transport: Any) -> None:
    """The TLS facts of an https request's connection: protocol version, cipher suite and the
    server name (SNI) the client asked for, when it sent one."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return
    record["tls_protocol"] = ssl_object.version()
    cipher = ssl_object.cipher()
    record["tls_cipher"] = cipher[0] if cipher else None
    record["tls_sni"] = getattr(ssl_object, "ando_sni", None)


def configure(
    snapshot: Any,
    previous: AccessLog | None,
    loop: asyncio.AbstractEventLoop,
    log: Callable[..., None],
) -> tuple[AccessLog | None, Callable[[], None]]:
    """The access log for a new config, and a function that retires what it no longer uses
    (call it after the swap). The open file and the VictoriaLogs pusher (with its queue) are
    kept across reloads that do not change them."""
    observability = snapshot.node.observability
    settings = observability.get("access_log", {})
    victoria_conf = observability.get("victoria_logs")
    file: FileSink | None = None
    if settings.get("enabled", True):
        path = settings.get("path", "stdout")
        old = previous.file if previous is not None else None
        file = old if old is not None and old.path == path else FileSink(path, loop)
    victoria: VictoriaLogs | None = None
    if victoria_conf is not None:
        old_v = previous.victoria if previous is not None else None
        if old_v is not None and old_v.settings == settings_of(victoria_conf):
            victoria = old_v
        else:
            victoria = VictoriaLogs(victoria_conf, log)
    if file is None and victoria is None:
        current = None
    else:
        redact = set(settings.get("redact", ())) | credential_names(snapshot)
        names = {r.id: r.name for r in snapshot.routes if r.name}
        current = AccessLog(file, victoria, Redactor(redact), names)

    def retire() -> None:
        if previous is None:
            return
        if previous.file is not None and previous.file is not file:
            previous.file.close()
        if previous.victoria is not None and previous.victoria is not victoria:
            task = loop.create_task(previous.victoria.close(CLOSE_TIMEOUT))
            _background.add(task)
            task.add_done_callback(_background.discard)

    return current, retire
