"""Access log lines pushed to VictoriaLogs, batched, over its JSON stream API.

`ando.observability.victoria_logs: {url, batch_size, flush_interval, stream_fields, ...}`: every
access log line (already one JSON document) goes to `{url}/insert/jsonline` as newline-delimited
JSON, with the query arguments VictoriaLogs documents: `_time_field=time` (our ISO 8601 time),
`_msg_field` (the first non-empty of the listed fields becomes the message) and
`_stream_fields` (low-cardinality fields that name a stream; `route_id` by default).

Why batched per worker and bounded: a worker pushes its own lines (no cross-process queue), at
most `batch_size` per request or every `flush_interval` seconds; when VictoriaLogs is slow or
down, at most `max_pending` lines wait, the oldest are dropped and counted, and retries back off
up to 30 s. Nothing here can block or fail a request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from ando.config.snapshot import with_defaults
from ando.observability.batch import BatchProcessor
from ando.observability.httpclient import HttpPoster, PushError, Target

CONTENT_TYPE = "application/stream+json"  # what VictoriaLogs' own examples send
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110 token)
DEFAULTS: dict[str, Any] = {
    "batch_size": 1000,
    "flush_interval": 1.0,
    "stream_fields": ["route_id"],
    "msg_field": "event,path",
    "max_pending": 100_000,
    "timeout": 5.0,
    "headers": {},
}


def settings_of(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The node settings with defaults filled in (the node schema's own defaults)."""
    return with_defaults(conf, DEFAULTS)


def insert_path(target: Target, settings: Mapping[str, Any]) -> str:
    """`/insert/jsonline?...` under the URL's own path (a vmauth prefix, say)."""
    base = target.path.split("?", 1)[0].rstrip("/")
    query = {"_msg_field": settings["msg_field"], "_time_field": "time"}
    if settings["stream_fields"]:
        query["_stream_fields"] = ",".join(settings["stream_fields"])
    return f"{base}/insert/jsonline?{urlencode(query, safe=',')}"


class VictoriaLogs:
    """One worker's pusher. `push(line)` takes a JSON line ending in a newline."""

    __slots__ = ("_path", "_poster", "processor", "push", "settings")

    def __init__(self, conf: Mapping[str, Any], log: Callable[..., None]) -> None:
        self.settings = settings_of(conf)
        target = Target.parse(self.settings["url"])
        self._path = insert_path(target, self.settings)
        headers = []
        for name, value in self.settings["headers"].items():
            if _TOKEN.match(name) and not any(c in str(value) for c in "\r\n\0"):
                headers.append((name, str(value)))
            else:
                log("victoria_logs_header_ignored", level="warn", header=name)
        self._poster = HttpPoster(target, timeout=float(self.settings["timeout"]), headers=headers)
        interval = float(self.settings["flush_interval"])
        self.processor = BatchProcessor(
            self._send,
            name="victoria_logs",
            batch_max_size=int(self.settings["batch_size"]),
            inactive_timeout=interval,
            buffer_duration=interval,
            max_retry_count=None,  # until VictoriaLogs is back; the bounded queue sheds the rest
            retry_delay=1.0,
            backoff=2.0,
            max_delay=30.0,
            max_pending=int(self.settings["max_pending"]),
            separator=b"",  # lines carry their newline
            log=log,
        )
        self.push = self.processor.push

    async def _send(self, body: bytearray, count: int) -> None:
        status, answer = await self._poster.post(self._path, CONTENT_TYPE, bytes(body))
        if not 200 <= status < 300:
            raise PushError(f"VictoriaLogs answered {status}: {answer[:200]!r}")

    async def close(self, timeout: float) -> None:
        """Flush what is waiting (bounded by `timeout`), then drop the connection."""
        try:
            await self.processor.close(timeout)
        finally:
            self._poster.close()
