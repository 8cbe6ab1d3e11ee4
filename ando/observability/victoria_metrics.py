"""The node's metrics pushed to VictoriaMetrics (`/api/v1/import/prometheus`), from the master.

`ando.observability.victoria_metrics: {url, interval, extra_labels, timeout}`: every `interval`
seconds the master renders the same page /metrics serves (every worker's totals added up) and
POSTs it; `extra_labels` become VictoriaMetrics' `extra_label=name=value` query arguments, so
every sample of this node carries them (a site, a device id). Samples carry no timestamp:
VictoriaMetrics stamps them on arrival, which is the moment they were collected within a
request's round trip.

Why push from the master and not from each worker: a worker's totals are only part of the node's,
and pushing them separately would need a `worker` label on every series (and double the series
count with every worker). Why it cannot slow requests: it runs in the master, which serves none,
and a collection asks each worker once for a few kilobytes of totals, which costs a worker less
than one request. A failed push is retried at the next tick, after a backoff that doubles up to
`MAX_BACKOFF`, and logged once per failure streak; metrics are cumulative counters, so a push
that is skipped loses no count, only resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from ando.config.snapshot import with_defaults
from ando.observability.exposition import CONTENT_TYPE
from ando.observability.httpclient import HttpPoster, PushError, Target

MAX_BACKOFF = 300.0  # seconds between attempts at most while VictoriaMetrics is down
DEFAULTS: dict[str, Any] = {"interval": 10.0, "extra_labels": {}, "timeout": 5.0}


def settings_of(conf: Mapping[str, Any]) -> dict[str, Any]:
    return with_defaults(conf, DEFAULTS)


def import_path(target: Target, extra_labels: Mapping[str, str]) -> str:
    """`/api/v1/import/prometheus` under the URL's own path, with the extra labels."""
    base = target.path.split("?", 1)[0].rstrip("/")
    path = f"{base}/api/v1/import/prometheus"
    if extra_labels:
        path += "?" + urlencode([("extra_label", f"{k}={v}") for k, v in extra_labels.items()])
    return path


class VictoriaMetricsPusher:
    """Pushes `collect()`'s page every interval until `stop()`."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        collect: Callable[[], Awaitable[bytes]],
        log: Callable[..., None],
    ) -> None:
        self.conf = dict(conf)  # as configured: a reload that changes it restarts the pusher
        self.settings = settings_of(conf)
        target = Target.parse(self.settings["url"])
        self._path = import_path(target, self.settings["extra_labels"])
        self._poster = HttpPoster(target, timeout=float(self.settings["timeout"]))
        self._collect = collect
        self._log = log
        self.interval = float(self.settings["interval"])
        self.pushed = 0
        self.failed = 0
        self._failing_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="victoria_metrics")

    async def stop(self, *, final_push: bool = False, timeout: float | None = None) -> None:
        """Stop pushing; with `final_push`, send the last totals first (at shutdown), within
        `timeout` seconds (default: the configured push timeout)."""
        if timeout is None:
            timeout = float(self.settings["timeout"])
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if final_push:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.push_once()
        self._poster.close()

    async def _run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            ok = await self.push_once()
            delay = self.interval if ok else min(max(delay * 2, self.interval), MAX_BACKOFF)

    async def push_once(self) -> bool:
        try:
            body = await self._collect()
            status, answer = await self._poster.post(self._path, CONTENT_TYPE, body)
            if not 200 <= status < 300:
                raise PushError(f"VictoriaMetrics answered {status}: {answer[:200]!r}")
        except PushError as e:
            self.failed += 1
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                self._log("victoria_metrics_push_failed", level="warn", error=str(e))
            return False
        self.pushed += 1
        if self._failing_since is not None:
            down = round(time.monotonic() - self._failing_since, 1)
            self._log("victoria_metrics_push_recovered", level="info", after_seconds=down)
            self._failing_since = None
        return True
