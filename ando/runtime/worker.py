"""A worker process: one uvloop loop, its own SO_REUSEPORT sockets, one Gateway.

Entered in the child right after `os.fork()` and never returns (it ends in `os._exit`, so nothing
the master set up, no `finally` and no atexit hook of the master, runs twice). Config reaches it
only through its channel from the master: the worker never reads the config file itself.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import ssl
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

import orjson
import uvloop

from ando.config.diagnostics import ConfigError
from ando.config.snapshot import Snapshot
from ando.config.source import snapshot_from_text
from ando.runtime import channel
from ando.runtime.contract import GatewayFactory, GatewayLike, ssl_context_for
from ando.runtime.events import log
from ando.runtime.listeners import describe

BACKLOG = 511  # nginx's default on Linux; the kernel caps it at net.core.somaxconn
EXIT_OK, EXIT_CANNOT_LISTEN, EXIT_GATEWAY_FAILED, EXIT_BUG = 0, 3, 4, 70
_PARENT_CHECK = 1.0  # seconds between checks that the master is still our parent
LOG_FLUSH_TIMEOUT = 3.0  # seconds, after the drain, to write and push the last log lines


@dataclass(slots=True)
class WorkerSpec:
    """Everything a worker starts from, handed over in memory by the fork."""

    slot: int
    config_path: str
    snapshot: Snapshot  # the master's validated snapshot of `generation`, copied by the fork
    generation: int
    sock: socket.socket  # the worker's end of its channel to the master
    gateway_factory: GatewayFactory
    master_pid: int


def run_worker(spec: WorkerSpec) -> NoReturn:
    """The child's whole life after fork. Signals the master handles are blocked by the caller
    around the fork; they are reset here before being unblocked."""
    code = EXIT_BUG
    try:
        _reset_signals()
        asyncio.events._set_running_loop(None)  # the fork happened inside the master's loop
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(Worker(spec).serve())
    except BaseException:
        log("worker_crashed", level="error", pid=os.getpid(), error=traceback.format_exc())
    finally:
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)


def _reset_signals() -> None:
    """Forget the master's handlers: its loop's wakeup fd is shared with us, and a signal written
    there would be read by the master as its own."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl-C and a terminal hangup reach the whole process group; the master turns them into a
    # drain and a reload. Config reaches a worker only through its channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # SIGUSR1 reopens the log files once the loop handles it; until then it must not kill us.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # A plain handler, not a loop one: it runs at the next bytecode even while the loop is busy.
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.snapshot = spec.snapshot
        self.generation = spec.generation
        self.channel = channel.Channel(spec.sock)
        self.gateway: GatewayLike | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping: asyncio.Future[str] | None = None

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        try:
            self.gateway = self.spec.gateway_factory(self.snapshot)
        except Exception:
            log("worker_gateway_failed", level="error", pid=os.getpid(), error=_last_error())
            return EXIT_GATEWAY_FAILED
        for listener in self.snapshot.node.listen:
            try:
                server = await loop.create_server(
                    self.gateway.protocol_factory(listener),
                    listener.host,
                    listener.port,
                    reuse_port=True,
                    backlog=BACKLOG,
                    ssl=ssl_context_for(self.gateway, listener),
                )
            except (OSError, ssl.SSLError) as e:
                log(
                    "worker_listen_failed",
                    level="error",
                    pid=os.getpid(),
                    listen=describe(listener),
                    error=getattr(e, "strerror", None) or str(e),
                )
                return EXIT_CANNOT_LISTEN
            self.servers.append(server)
        await self.channel.send(channel.READY, self.generation)
        _tune_gc()
        log(
            "worker_started",
            pid=os.getpid(),
            slot=self.spec.slot,
            generation=self.generation,
            listen=[describe(listener) for listener in self.snapshot.node.listen],
        )
        tasks = [
            loop.create_task(self._follow_master()),
            loop.create_task(self._watch_parent()),
        ]
        reason = await self.stopping
        for task in tasks:
            task.cancel()
        return await self._drain(reason)

    def _stop(self, reason: str) -> None:
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(reason)

    async def _drain(self, reason: str) -> int:
        """Stop accepting, let requests in flight finish (bounded by the grace period), exit."""
        for server in self.servers:
            server.close()  # listening sockets only; open connections drain through the gateway
        grace = float(self.snapshot.node.limits.get("graceful_shutdown_timeout", 30))
        assert self.gateway is not None
        self.gateway.begin_drain()
        idle = await self.gateway.wait_idle(grace)
        if not idle:
            log("worker_drain_timeout", level="warn", pid=os.getpid(), grace=grace, reason=reason)
        close_logs = getattr(self.gateway, "close_logs", None)  # optional for a GatewayLike
        if close_logs is not None:
            await close_logs(LOG_FLUSH_TIMEOUT)
        if reason != "master_gone":  # the last totals, so the node's counters keep them
            await self._report_metrics(0)
        return EXIT_OK

    def _reopen_logs(self) -> None:
        """SIGUSR1 (sent by logrotate, forwarded by the master): the access log file was moved;
        the gateway opens it again by its path."""
        reopen = getattr(self.gateway, "reopen_logs", None)  # optional for a GatewayLike
        if reopen is not None:
            reopen()

    async def _follow_master(self) -> None:
        """Apply each config the master sends; when the channel closes the master is gone."""
        while True:
            try:
                frame = await self.channel.receive()
            except channel.ProtocolError as e:
                log("worker_channel_broken", level="error", pid=os.getpid(), error=str(e))
                frame = None
            if frame is None:
                self._stop("master_gone")
                return
            if frame.kind == channel.CONFIG:
                await self._apply(frame.generation, frame.payload)
            elif frame.kind == channel.METRICS_ASK:
                await self._report_metrics(frame.generation)

    async def _report_metrics(self, ask: int) -> None:
        """This worker's metric totals, for the master to add up (ando/runtime/metrics_server.py).
        Optional for a GatewayLike: a gateway without metrics reports nothing."""
        report = getattr(self.gateway, "metrics_report", None)
        if report is None:
            return
        try:
            payload = orjson.dumps(report())
        except Exception:
            log("worker_metrics_failed", level="error", pid=os.getpid(), error=_last_error())
            payload = b"{}"
        try:
            await self.channel.send(channel.METRICS, ask, payload)
        except OSError:
            self._stop("master_gone")

    async def _apply(self, generation: int, payload: bytes) -> None:
        """Build the new snapshot in one go (CPU work on this loop, between requests), then swap.
        A failure keeps the current snapshot: the master validated this text, so it is a bug."""
        error: str | None = None
        try:
            snapshot = snapshot_from_text(payload.decode("utf-8"), self.spec.config_path)
            assert self.gateway is not None
            self.gateway.swap(snapshot)
        except ConfigError as e:
            error = "; ".join(d.format() for d in e.diagnostics)
        except Exception:
            error = _last_error()
        else:
            self.snapshot, self.generation = snapshot, generation
        if error is not None:
            log(
                "worker_reload_failed",
                level="error",
                pid=os.getpid(),
                generation=generation,
                serving=self.generation,
                error=error,
            )
        body = orjson.dumps({"ok": error is None, "error": error})
        try:
            await self.channel.send(channel.APPLIED, generation, body)
        except OSError:
            self._stop("master_gone")

    async def _watch_parent(self) -> None:
        """Belt and braces for the channel's EOF: no worker outlives its master."""
        while True:
            await asyncio.sleep(_PARENT_CHECK)
            if os.getppid() != self.spec.master_pid:
                self._stop("master_gone")
                return


def _tune_gc() -> None:
    """The request path allocates many short-lived objects and few cycles: with the default
    thresholds the cyclic collector ran on ~6% of a loaded worker's samples. Freeze what start-up
    built (the config, modules) out of its reach, and let it run far less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _last_error() -> str:
    kind, value, _ = sys.exc_info()
    return f"{kind.__name__ if kind else 'Error'}: {value}"
