"""The batch processor: log entries collected per worker and sent in batches, never in the way.

One implementation serves every pusher (VictoriaLogs, the `http-logger` plugin), with APISIX's
batch processor's knobs: a batch goes out when it holds `batch_max_size` entries, when no entry
arrived for `inactive_timeout` seconds, or when its oldest entry is `buffer_duration` old. A
failed batch is retried `max_retry_count` times (None: until it goes through) `retry_delay`
seconds apart, the delay multiplied by `backoff` after each failure up to `max_delay`.

Why it can never slow a request: `push` only appends the entry's bytes to the open batch (no
await, no I/O, no per-entry allocation beyond the entry itself), and at most `max_pending`
entries wait; beyond that the oldest waiting batch is dropped, and drops are counted and logged.
One batch is in flight at a time, in order.

Entries are bytes (JSON documents) joined by `separator` inside a batch; the send function
gets the joined bytes and the entry count, and frames them as its receiver wants.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[bytearray, int], Awaitable[None]]
_LOG_EVERY = 5.0  # seconds between two failure (or drop) events of one processor

_live: weakref.WeakSet[BatchProcessor] = weakref.WeakSet()
# Entries dropped by processors already closed (a reload replaced them), by pusher name: the
# worker's metrics count them for its whole life, not only while their processor lives.
_retired_dropped: dict[str, int] = {}


class BatchProcessor:
    __slots__ = (
        "__weakref__",
        "_closed",
        "_closing",
        "_last_drop_log",
        "_last_fail_log",
        "_loop",
        "_open",
        "_open_count",
        "_opened_at",
        "_ready",
        "_seen",
        "_sender",
        "_timer",
        "_waker",
        "backoff",
        "batch_max_size",
        "buffer_duration",
        "dropped",
        "failed",
        "inactive_timeout",
        "log",
        "max_delay",
        "max_pending",
        "max_retry_count",
        "name",
        "pending",
        "pushed",
        "retry_delay",
        "send",
        "sent",
        "separator",
    )

    def __init__(
        self,
        send: Send,
        *,
        name: str,
        batch_max_size: int = 1000,
        inactive_timeout: float = 5.0,
        buffer_duration: float = 60.0,
        max_retry_count: int | None = 0,
        retry_delay: float = 1.0,
        backoff: float = 1.0,
        max_delay: float = 30.0,
        max_pending: int = 10_000,
        separator: bytes = b"\n",
        log: Callable[..., None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.send = send
        self.name = name
        self.batch_max_size = max(1, batch_max_size)
        self.inactive_timeout = inactive_timeout
        self.buffer_duration = buffer_duration
        self.max_retry_count = max_retry_count
        self.retry_delay = retry_delay
        self.backoff = backoff
        self.max_delay = max_delay
        self.max_pending = max(max_pending, self.batch_max_size)
        self.separator = separator
        self.log = log or (lambda event, **fields: None)
        self._loop = loop  # the worker's, taken at the first push (no loop at validate time)
        self._open = bytearray()
        self._open_count = 0
        self._opened_at = 0.0
        self._seen = 0
        self._ready: deque[tuple[bytearray, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None
        self._waker: asyncio.Future[None] | None = None
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._last_fail_log = -_LOG_EVERY
        self._last_drop_log = -_LOG_EVERY
        self.pending = 0  # entries waiting (open and sealed batches, not the one in flight)
        self.pushed = 0
        self.sent = 0
        self.dropped = 0
        self.failed = 0  # batches that failed an attempt
        _live.add(self)

    # --- the request path ----------------------------------------------------------------

    def push(self, entry: bytes) -> None:
        """Add one encoded entry. O(1), never waits, never raises for a full queue."""
        if self._closing:
            self.dropped += 1
            return
        count = self._open_count
        if count:
            self._open += self.separator
        self._open += entry
        count += 1
        self._open_count = count
        self.pushed += 1
        self.pending += 1
        if count == 1:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._opened_at = self._loop.time()
            if self._timer is None:
                self._arm()
        if count >= self.batch_max_size:
            self._seal()
        if self.pending > self.max_pending:
            self._drop_oldest()

    # --- batching ------------------------------------------------------------------------

    def _arm(self) -> None:
        assert self._loop is not None
        self._seen = self._open_count
        tick = min(self.inactive_timeout, self.buffer_duration)
        self._timer = self._loop.call_later(tick, self._on_tick)

    def _on_tick(self) -> None:
        """Inactive for a whole tick, or the batch is buffer_duration old: it goes out."""
        self._timer = None
        count = self._open_count
        if not count or self._loop is None:
            return
        age = self._loop.time() - self._opened_at
        if count == self._seen or age >= self.buffer_duration - 0.001:
            self._seal()
        else:
            self._arm()

    def _seal(self) -> None:
        if self._open_count:
            self._ready.append((self._open, self._open_count))
            self._open = bytearray()
            self._open_count = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ready and self._loop is not None and (self._sender is None or self._sender.done()):
            self._sender = self._loop.create_task(self._drain())

    def _drop_oldest(self) -> None:
        while self.pending > self.max_pending:
            if self._ready:
                _, n = self._ready.popleft()
            else:  # everything waiting is the open batch
                n = self._open_count
                self._open = bytearray()
                self._open_count = 0
            self.pending -= n
            self.dropped += n
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._last_drop_log >= _LOG_EVERY:
            self._last_drop_log = now
            self.log(
                "log_entries_dropped",
                level="warn",
                pusher=self.name,
                dropped=self.dropped,
                pending=self.pending,
                max_pending=self.max_pending,
            )

    # --- sending -------------------------------------------------------------------------

    async def _drain(self) -> None:
        while self._ready:
            batch, count = self._ready.popleft()
            self.pending -= count
            if not await self._deliver(batch, count) and self._closing:
                return  # exiting and the receiver fails: do not spend the exit on the rest

    async def _deliver(self, batch: bytearray, count: int) -> bool:
        """True once the batch went through; False when it was given up (and counted)."""
        attempt = 0
        delay = self.retry_delay
        while True:
            try:
                await self.send(batch, count)
            except asyncio.CancelledError:
                self.dropped += count
                raise
            except Exception as e:
                attempt += 1
                self.failed += 1
                give_up = self._closing or (
                    self.max_retry_count is not None and attempt > self.max_retry_count
                )
                if give_up:
                    self.dropped += count
                self._failure(e, attempt, give_up, delay)
                if give_up:
                    return False
                await self._sleep(delay)
                delay = min(delay * self.backoff, self.max_delay) if self.backoff > 1 else delay
                continue
            self.sent += count
            return True

    async def _sleep(self, delay: float) -> None:
        """A retry's wait, which `close` cuts short: at exit there is no time to wait."""
        assert self._loop is not None
        waker = self._waker = self._loop.create_future()
        handle = self._loop.call_later(delay, _wake, waker)
        try:
            await waker
        finally:
            handle.cancel()
            self._waker = None

    def _failure(self, error: Exception, attempt: int, gave_up: bool, delay: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_fail_log < _LOG_EVERY and not gave_up:
            return
        self._last_fail_log = now
        self.log(
            "log_push_failed",
            level="error",
            pusher=self.name,
            error=str(error) or type(error).__name__,
            attempt=attempt,
            retry_in=None if gave_up else delay,
            dropped=self.dropped,
            pending=self.pending,
        )

    # --- shutdown ------------------------------------------------------------------------

    async def close(self, timeout: float) -> None:
        """Send what is waiting (a failure is not retried now), within `timeout` seconds; what
        is still unsent after that is dropped and counted. Closing twice waits for the first."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._closed)

    async def _close(self, timeout: float) -> None:
        self._seal()
        self._closing = True
        if self._waker is not None:
            _wake(self._waker)
        sender = self._sender
        if sender is not None and not sender.done():
            done, _ = await asyncio.wait({sender}, timeout=timeout)
            if not done:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        lost = self.pending + self._open_count
        self.pending = 0
        self._ready.clear()
        _live.discard(self)
        if lost:
            self.dropped += lost
            self.log("log_entries_dropped", level="warn", pusher=self.name, dropped=self.dropped)
        if self.dropped:
            _retired_dropped[self.name] = _retired_dropped.get(self.name, 0) + self.dropped

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and tests."""
        return {
            "name": self.name,
            "pushed": self.pushed,
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": self.pending,
            "failed_batches": self.failed,
        }


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


def live_processors() -> list[BatchProcessor]:
    """Every processor of this worker that has not been closed (for metrics and shutdown)."""
    return list(_live)


def dropped_by_pusher() -> dict[str, int]:
    """Entries dropped since the worker started, by pusher name (closed processors included)."""
    out = dict(_retired_dropped)
    for p in list(_live):
        out[p.name] = out.get(p.name, 0) + p.dropped
    return out


async def close_all(timeout: float) -> None:
    """At worker exit: every processor sends what it holds, together, within `timeout`."""
    processors = live_processors()
    if processors:
        await asyncio.gather(*(p.close(timeout) for p in processors), return_exceptions=True)
