"""One JSON line per request, written in batches so a request never waits on a write.

Lines are collected during a loop iteration and written together at its end (one syscall for
many requests under load). The destination is stdout or a file (`ando.observability.access_log`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import orjson

MAX_BUFFERED = 4 * 1024 * 1024  # beyond this (a stuck stdout), lines are dropped and counted


class AccessLog:
    __slots__ = (
        "_buf",
        "_fd",
        "_ms",
        "_ms_text",
        "_owns_fd",
        "_scheduled",
        "_sec",
        "_sec_text",
        "dropped",
        "loop",
        "path",
    )

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.path = path
        if path == "stdout":
            self._fd, self._owns_fd = sys.stdout.fileno(), False
        elif path == "stderr":
            self._fd, self._owns_fd = sys.stderr.fileno(), False
        else:
            self._fd, self._owns_fd = (
                os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
                True,
            )
        self._buf: list[bytes] = []
        self._scheduled = False
        self._sec = -1
        self._ms = -1
        self._ms_text = ""
        self._sec_text = ""
        self.dropped = 0

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
        self._buf.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
        except BlockingIOError:
            if len(data) > MAX_BUFFERED:
                self.dropped += data.count(b"\n")
            else:
                self._buf.append(data)
                self._scheduled = True
                self.loop.call_later(0.05, self.flush)
        except OSError:
            self.dropped += data.count(b"\n")

    def close(self) -> None:
        self.flush()
        if self._owns_fd:
            os.close(self._fd)
