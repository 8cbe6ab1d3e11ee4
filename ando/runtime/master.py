"""The master process: validate, fork the workers, supervise them, reload, shut down.

The master serves no traffic. It is the one place that reads the config file, so every worker
serves a config the master has validated, built from the very text the master validated (sent over
each worker's channel). It runs its own uvloop loop for signals, the file watch and the channels:

- SIGHUP, or a change seen by the watcher: reload (read, validate, send to every worker, wait for
  each to apply it, log one line). An invalid file is refused and the old config keeps serving.
- SIGTERM / SIGINT: workers drain (stop accepting, finish requests in flight) within
  `limits.graceful_shutdown_timeout`; stragglers are killed after a little more. A second SIGINT,
  or SIGQUIT at any time, kills the workers at once.
- A worker that dies is replaced; if they die in a loop the replacement is delayed, increasingly.
- /status and /status/ready (ando/runtime/status.py) are answered here, from the master's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import uvloop

from ando import __version__
from ando.config.diagnostics import ConfigError, render_text
from ando.config.snapshot import Snapshot, thaw
from ando.config.source import UnreadableConfig, read_text, snapshot_from_text
from ando.observability.exposition import NodeFacts, NodeTotals, render
from ando.observability.victoria_metrics import VictoriaMetricsPusher
from ando.runtime import channel
from ando.runtime.channel import Channel
from ando.runtime.contract import GatewayFactory, ServingUnavailable, default_gateway_factory
from ando.runtime.events import describe_status, log
from ando.runtime.listeners import BindError, check_listeners, describe
from ando.runtime.metrics_server import ASK_TIMEOUT, MetricsServer, prometheus_config
from ando.runtime.pidfile import default_pid_file, remove_pid_file, running_pid, write_pid_file
from ando.runtime.status import StatusServer, status_config, status_settings
from ando.runtime.watch import ConfigWatcher
from ando.runtime.worker import WorkerSpec, run_worker

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE, EXIT_UNAVAILABLE = 0, 1, 2, 3

SHUTDOWN_SLACK = 5.0  # seconds the master waits beyond the workers' own grace period
KILL_WAIT = 5.0  # seconds to wait for SIGKILLed workers to be reaped
CRASH_WINDOW, CRASH_LIMIT = 10.0, 5  # more than LIMIT deaths within WINDOW seconds: back off
CRASH_DELAY_MIN, CRASH_DELAY_MAX = 1.0, 30.0
ACK_TIMEOUT_MIN = 10.0  # seconds to wait for workers to apply a reload (or 5x the master's build)
_REAP_INTERVAL = 1.0  # fallback reaping when pidfd is unavailable (or a wakeup was missed)
_FORK_BLOCKED = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD}


def run(
    config_path: str,
    *,
    gateway_factory: GatewayFactory | None = None,
    pid_file: str | None = None,
) -> int:
    """`ando run`: everything that can be refused is refused before a worker exists (invalid
    config: 1, unreadable: 2, a listener or the status address that cannot be bound: 1), then
    serve until a signal."""
    try:
        text = read_text(config_path)
        snapshot = snapshot_from_text(text, config_path)
    except UnreadableConfig as e:
        _say(f"ando: {e}")
        return EXIT_UNREADABLE
    except ConfigError as e:
        _say(render_text(e.diagnostics))
        _say(f"ando: {config_path} is invalid; not starting")
        return EXIT_INVALID
    if gateway_factory is None:
        try:
            gateway_factory = default_gateway_factory()
        except ServingUnavailable as e:
            _say(f"ando: serving traffic is not built yet ({e}); nothing is listening. Exiting.")
            return EXIT_UNAVAILABLE
    problems = check_listeners(snapshot.node.listen)
    status = metrics = None
    if not problems:
        status, problem = _bind_status(snapshot)
        problems += [problem] if problem else []
    if not problems:
        metrics, problem = _bind_metrics(snapshot)
        problems += [problem] if problem else []
    if problems:
        for problem in problems:
            _say(f"ando: {problem}")
        _close(status)
        return EXIT_INVALID
    pid_path = pid_file or default_pid_file(config_path)
    other = running_pid(pid_path)
    if other is not None and other != os.getpid():
        _say(f"ando: already running with this config (pid {other}, pid file {pid_path})")
        _close(status, metrics)
        return EXIT_INVALID
    try:
        write_pid_file(pid_path, os.getpid())
    except OSError as e:
        _say(f"ando: cannot write pid file {pid_path}: {e.strerror or e}")
        _close(status, metrics)
        return EXIT_INVALID
    master_pid = os.getpid()
    _follow_bootloader()
    loop = uvloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        master = Master(config_path, text, snapshot, gateway_factory, pid_path, status, metrics)
        return loop.run_until_complete(master.serve())
    finally:
        if os.getpid() == master_pid:  # workers never get here (they os._exit), but be sure
            remove_pid_file(pid_path, master_pid)
            loop.close()


def _follow_bootloader() -> None:
    """In the single-file binary, the master is a child of PyInstaller's bootloader, which
    forwards signals but cannot forward SIGKILL: if it is killed, the master must not be left
    running without it. Ask the kernel for a SIGTERM (a drain) when the bootloader dies."""
    if not getattr(sys, "frozen", False) or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _bind_status(snapshot: Snapshot) -> tuple[StatusServer | None, str | None]:
    """Bind the status address now, as the listeners were checked: a taken port is one clear
    line at start rather than a node its load balancer can never see ready."""
    try:
        settings = status_settings(snapshot.node)
    except ValueError as e:
        return None, f"cannot listen on the status address (ando.observability.status): {e}"
    if settings is None:
        return None, None
    try:
        return StatusServer.bind(settings), None
    except BindError as e:
        return None, f"cannot listen on {settings.address} (ando.observability.status): {e}"


def _bind_metrics(snapshot: Snapshot) -> tuple[MetricsServer | None, str | None]:
    """The Prometheus endpoint, bound now for the same reason as the status address."""
    listen = prometheus_config(snapshot.node)[1]
    try:
        return MetricsServer.bind_from(snapshot.node), None
    except (ValueError, BindError) as e:
        return None, f"cannot listen on {listen} (ando.observability.prometheus): {e}"


def _close(*servers: StatusServer | MetricsServer | None) -> None:
    for server in servers:
        if server is not None:
            server.close()


def not_in_effect(snapshot: Snapshot) -> list[str]:
    """Settings the file may hold (they are APISIX's, and valid) that this build does not act on
    yet: said at start and on each reload, so nobody believes a node follows etcd when it
    serves its file."""
    out = []
    if snapshot.node.etcd is not None:
        out.append("ando.etcd: the config is read from the file only (etcd mode is not built yet)")
    if snapshot.node.admin.get("enabled"):
        out.append("ando.admin: the Admin API is not built yet; nothing listens for it")
    return out


def _warn_not_in_effect(snapshot: Snapshot) -> None:
    settings = not_in_effect(snapshot)
    if settings:
        log("settings_not_in_effect", level="warn", pid=os.getpid(), settings=settings)


def _master_log(event: str, level: str = "info", **fields: object) -> None:
    log(event, level=level, pid=os.getpid(), **fields)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def worker_count(snapshot: Snapshot) -> int:
    """`auto` is the CPUs this process may run on (a container's cpuset), not the host's."""
    workers = snapshot.node.workers
    if isinstance(workers, int):
        return workers
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _digest(text: str, files: tuple[str, ...] = ()) -> str:
    """What the config means, as a hash: its text and the Lua modules it loads."""
    h = hashlib.sha256(text.encode())
    for name in files:
        h.update(b"\0" + name.encode() + b"\0")
        try:
            with open(name, "rb") as f:
                h.update(f.read())
        except OSError as e:
            h.update(f"unreadable: {e.errno}".encode())
    return h.hexdigest()


@dataclass(eq=False)
class WorkerHandle:
    pid: int
    slot: int
    channel: Channel
    started: float
    pidfd: int | None = None
    ready: bool = False  # its listeners are bound (it said READY)
    generation: int = 0  # the newest config generation it serves
    task: asyncio.Task[None] | None = None
    waiters: list[tuple[int, asyncio.Future[dict[str, object]]]] = field(default_factory=list)
    metric_asks: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def settle(self, generation: int, result: dict[str, object]) -> None:
        """Answer every reload waiting for `generation` or an older one."""
        keep = []
        for gen, fut in self.waiters:
            if gen <= generation:
                if not fut.done():
                    fut.set_result(result if gen == generation else {"ok": True})
            else:
                keep.append((gen, fut))
        self.waiters = keep


class Master:
    def __init__(
        self,
        config_path: str,
        text: str,
        snapshot: Snapshot,
        gateway_factory: GatewayFactory,
        pid_file: str,
        status: StatusServer | None = None,
        metrics: MetricsServer | None = None,
    ) -> None:
        self.config_path = config_path
        self.snapshot, self.digest = snapshot, _digest(text, snapshot.source_files)
        self.generation = 1
        self.gateway_factory = gateway_factory
        self.pid_file = pid_file
        self.pid = os.getpid()
        self.size = worker_count(snapshot)
        self.workers: dict[int, WorkerHandle] = {}
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.stopping = False
        self._last_seen = self.digest  # the content the last reload attempt looked at
        self._deaths: deque[float] = deque()
        self._crash_delay = CRASH_DELAY_MIN
        self._timers: set[asyncio.TimerHandle] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self._reload_wanted = asyncio.Event()
        self._reload_trigger: str | None = None
        self._stop_request: asyncio.Future[tuple[str, str]] | None = None
        self._escalate = asyncio.Event()
        self._no_workers = asyncio.Event()
        self.watcher = ConfigWatcher(
            config_path,
            lambda: self.request_reload("watch"),
            extra=lambda: self.snapshot.source_files,
        )
        self.status = status
        if status is not None:
            status.readiness = self.readiness
        self.totals = NodeTotals()
        self.last_reload_ok = True
        self._asks = 0
        self.metrics = metrics
        if metrics is not None:
            metrics.collect = self.collect_metrics
        self.vm_pusher: VictoriaMetricsPusher | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop_request = loop.create_future()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "signal")
        loop.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "graceful", "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal, "graceful", "SIGINT")
        loop.add_signal_handler(signal.SIGQUIT, self._on_stop_signal, "fast", "SIGQUIT")
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        try:
            return await self._serve(loop)
        finally:
            _close(self.status, self.metrics)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        """Serve until a stop signal, then shut down. The status server answers from before the
        first worker is forked (not ready yet) until the last one is gone (draining)."""
        for side in (self.status, self.metrics):
            if side is not None:
                await side.start()
        log(
            "start",
            pid=self.pid,
            version=__version__,
            config=os.path.abspath(self.config_path),
            generation=self.generation,
            workers=self.size,
            listen=[describe(listener) for listener in self.snapshot.node.listen],
            counts=self.snapshot.counts(),
            pid_file=self.pid_file,
            status=self.status.settings.address if self.status is not None else None,
            metrics=self.metrics.address if self.metrics is not None else None,
        )
        _warn_not_in_effect(self.snapshot)
        for slot in range(self.size):
            self._respawn(slot, None)
        self._configure_pusher()
        self.watcher.start()
        reloader = loop.create_task(self._reloader(), name="reloader")
        reaper = loop.create_task(self._reap_periodically(), name="reaper")
        mode, sig = await self._stop_request
        reloader.cancel()
        reaper.cancel()
        await self._shutdown(mode, sig)
        if self.vm_pusher is not None:  # the workers' last totals, after the drain
            await self.vm_pusher.stop(final_push=mode == "graceful")
        return EXIT_OK

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """/status/ready's answer. Ready means: a valid config is loaded (always true of a running
        master: start refuses an invalid file and a failed reload keeps the last good config),
        the node is not stopping, and at least one worker has its listeners bound. One is
        enough: SO_REUSEPORT spreads connections only over sockets that exist, so a node with
        one of four workers being replaced still serves every connection it accepts. A worker
        still on an older generation (a reload being applied) serves a valid config too; the
        body says how many are current."""
        ready = [h for h in self.workers.values() if h.ready]
        facts: dict[str, object] = {
            "generation": self.generation,
            "workers": self.size,
            "workers_ready": len(ready),
            "workers_current": sum(1 for h in ready if h.generation >= self.generation),
        }
        if self.stopping:
            return False, {"status": "unavailable", "reason": "draining", **facts}
        if not ready:
            return False, {"status": "unavailable", "reason": "no worker is serving", **facts}
        return True, {"status": "ok", **facts}

    def _on_stop_signal(self, mode: str, sig: str) -> None:
        assert self._stop_request is not None
        if not self._stop_request.done():
            self._stop_request.set_result((mode, sig))
        elif mode == "fast" or sig == "SIGINT":  # SIGQUIT, or Ctrl-C twice: stop waiting
            self._escalate.set()

    async def _shutdown(self, mode: str, sig: str) -> None:
        started = time.monotonic()
        self.stopping = True
        for timer in self._timers:
            timer.cancel()
        grace = float(self.snapshot.node.limits.get("graceful_shutdown_timeout", 30))
        log("shutdown", pid=self.pid, signal=sig, mode=mode, workers=len(self.workers), grace=grace)
        await self.watcher.stop()
        if mode == "graceful":
            self._signal_workers(signal.SIGTERM)
            await self._wait_for_workers(grace + SHUTDOWN_SLACK, escalate=True)
        killed = len(self.workers)
        self._signal_workers(signal.SIGKILL)
        await self._wait_for_workers(KILL_WAIT, escalate=False)
        log(
            "stopped",
            pid=self.pid,
            mode=mode,
            killed=killed,
            left=len(self.workers),
            duration_ms=round((time.monotonic() - started) * 1000),
        )

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's postrotate): every worker reopens its access log file."""
        log("reopen_logs", pid=self.pid, workers=len(self.workers))
        self._signal_workers(signal.SIGUSR1)

    def _signal_workers(self, sig: signal.Signals) -> None:
        for handle in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, sig)

    async def _wait_for_workers(self, timeout: float, *, escalate: bool) -> None:
        self._reap()
        if not self.workers:
            return
        waits = [asyncio.ensure_future(self._no_workers.wait())]
        if escalate:
            waits.append(asyncio.ensure_future(self._escalate.wait()))
        _, pending = await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
        for fut in pending:
            fut.cancel()

    # --- workers --------------------------------------------------------------------------

    def _spawn(self, slot: int) -> WorkerHandle:
        """Fork one worker. Signals are blocked around the fork so none can reach the child
        before it has dropped the master's handlers (they would wake the master's loop)."""
        parent_sock, child_sock = socket.socketpair()
        spec = WorkerSpec(
            slot=slot,
            config_path=self.config_path,
            snapshot=self.snapshot,
            generation=self.generation,
            sock=child_sock,
            gateway_factory=self.gateway_factory,
            master_pid=self.pid,
        )
        inherited = list(self.workers.values())
        status_fds = [
            fd for side in (self.status, self.metrics) if side for fd in side.inherited_fds()
        ]
        sys.stdout.flush()
        sys.stderr.flush()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_BLOCKED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            parent_sock.close()
            child_sock.close()
            raise
        if pid == 0:  # the child: drop the master's ends of every channel, then be a worker
            try:
                for fd in status_fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                parent_sock.close()
                for other in inherited:
                    other.channel.close()
                    if other.pidfd is not None:
                        os.close(other.pidfd)
                run_worker(spec)
            finally:
                os._exit(70)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child_sock.close()
        handle = WorkerHandle(pid, slot, Channel(parent_sock), time.monotonic())
        handle.generation = self.generation
        self.workers[pid] = handle
        loop = asyncio.get_running_loop()
        handle.task = loop.create_task(self._listen(handle), name=f"worker-{pid}")
        try:
            handle.pidfd = os.pidfd_open(pid)
            loop.add_reader(handle.pidfd, self._reap)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): periodic reaping
            handle.pidfd = None
        return handle

    def _respawn(self, slot: int, replaces: int | None) -> None:
        if self.stopping:
            return
        try:
            handle = self._spawn(slot)
        except OSError as e:
            log("spawn_failed", level="error", pid=self.pid, slot=slot, error=e.strerror or str(e))
            self._later(self._crash_delay, self._respawn, slot, replaces)
            return
        if replaces is not None:
            log("worker_restarted", pid=handle.pid, replaces=replaces, slot=slot)

    def _later(self, delay: float, callback: Callable[..., None], *args: object) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            callback(*args)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def _listen(self, handle: WorkerHandle) -> None:
        """What a worker tells the master: it is ready, it applied a config."""
        while True:
            try:
                frame = await handle.channel.receive()
            except (channel.ProtocolError, OSError):
                return
            if frame is None:
                return
            if frame.kind == channel.READY:
                handle.ready = True
            elif frame.kind == channel.METRICS:
                self._metrics_reported(handle, frame.generation, frame.payload)
            elif frame.kind == channel.APPLIED:
                try:
                    result = orjson.loads(frame.payload)
                except orjson.JSONDecodeError:
                    result = {"ok": False, "error": "unreadable answer from the worker"}
                if result.get("ok"):
                    handle.generation = max(handle.generation, frame.generation)
                handle.settle(frame.generation, result)

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(_REAP_INTERVAL)
            self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = self.workers.pop(pid, None)
            if handle is not None:
                self._exited(handle, status)

    def _exited(self, handle: WorkerHandle, status: int) -> None:
        try:
            last_words = [] if handle.task is None else handle.channel.read_buffered()
        except OSError:
            last_words = []
        if handle.pidfd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(handle.pidfd)
            os.close(handle.pidfd)
        if handle.task is None or handle.task.done():
            handle.channel.close()
        else:  # close only once the reader is off the socket: its fd number will be reused
            handle.task.cancel()
            handle.task.add_done_callback(lambda _: handle.channel.close())
        handle.settle(sys.maxsize, {"ok": False, "error": "worker exited"})
        for frame in last_words:
            if frame.kind == channel.METRICS:
                self._metrics_reported(handle, frame.generation, frame.payload)
        self.totals.retire(handle.pid)
        for fut in handle.metric_asks.values():
            if not fut.done():
                fut.set_result(None)
        handle.metric_asks.clear()
        now = time.monotonic()
        uptime = round(now - handle.started, 3)
        if self.stopping:
            log(
                "worker_exited",
                pid=handle.pid,
                slot=handle.slot,
                expected=True,
                **describe_status(status),
            )
            if not self.workers:
                self._no_workers.set()
            return
        status_fields = describe_status(status)
        log(
            "worker_exited",
            level="warn" if status_fields.get("exit_code") == 0 else "error",
            pid=handle.pid,
            slot=handle.slot,
            expected=False,
            uptime=uptime,
            ready=handle.ready,
            **status_fields,
        )
        if uptime >= CRASH_WINDOW:  # it had been healthy: this is not a crash loop
            self._crash_delay = CRASH_DELAY_MIN
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > CRASH_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) > CRASH_LIMIT or self._crash_delay > CRASH_DELAY_MIN:
            delay = self._crash_delay
            self._crash_delay = min(delay * 2, CRASH_DELAY_MAX)
            log(
                "crash_loop",
                level="error",
                pid=self.pid,
                deaths=len(self._deaths),
                window=CRASH_WINDOW,
                respawn_in=delay,
            )
            self._later(delay, self._respawn, handle.slot, handle.pid)
        else:
            self._respawn(handle.slot, handle.pid)

    # --- reload ---------------------------------------------------------------------------

    def request_reload(self, trigger: str) -> None:
        """SIGHUP ("signal") and the watcher ("watch") both land here; reloads run one at a time
        and requests made meanwhile fold into one more. A signal always reloads; the watcher
        skips content it has already looked at."""
        if self.stopping:
            return
        if self._reload_trigger != "signal":
            self._reload_trigger = trigger
        self._reload_wanted.set()

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            trigger, self._reload_trigger = self._reload_trigger or "signal", None
            try:
                await self._reload(trigger)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not end reloading, nor the master
                self._failed(
                    trigger, [f"internal error: {type(e).__name__}: {e}"], time.monotonic()
                )

    async def _reload(self, trigger: str) -> None:
        started = time.monotonic()
        try:
            text = read_text(self.config_path)
        except UnreadableConfig as e:
            self._last_seen = ""
            self._failed(trigger, [str(e)], started)
            return
        except ConfigError as e:
            self._last_seen = ""
            self._failed(trigger, [d.format() for d in e.diagnostics], started)
            return
        digest = _digest(text, self.snapshot.source_files)
        if trigger == "watch" and digest == self._last_seen:
            return  # an event that did not change the content (touch, chmod, a sibling file)
        self._last_seen = digest
        try:
            snapshot = snapshot_from_text(text, self.config_path)
        except ConfigError as e:
            self._failed(trigger, [d.format() for d in e.diagnostics], started)
            return
        built = time.monotonic() - started
        restart_required = self._restart_required(snapshot)
        self.generation += 1
        if snapshot.source_files != self.snapshot.source_files:
            digest = self._last_seen = _digest(text, snapshot.source_files)
            self.watcher.refresh()  # watch the Lua modules this config loads now
        self.snapshot, self.digest = snapshot, digest
        results = await self._broadcast(self.generation, text, max(ACK_TIMEOUT_MIN, 5 * built))
        self.reloads_ok += 1
        self.last_reload_ok = True
        self._configure_pusher()
        _warn_not_in_effect(snapshot)
        failures = [r for r in results if not r.get("ok")]
        log(
            "reload",
            level="warn" if failures or restart_required else "info",
            pid=self.pid,
            result="ok",
            trigger=trigger,
            generation=self.generation,
            counts=snapshot.counts(),
            workers=len(results),
            applied=len(results) - len(failures),
            worker_errors=[r.get("error") for r in failures] or None,
            restart_required=restart_required or None,
            duration_ms=round((time.monotonic() - started) * 1000),
            reloads_ok=self.reloads_ok,
            reloads_failed=self.reloads_failed,
        )

    def _failed(self, trigger: str, diagnostics: list[str], started: float) -> None:
        self.reloads_failed += 1
        self.last_reload_ok = False
        log(
            "reload",
            level="error",
            pid=self.pid,
            result="failed",
            trigger=trigger,
            file=self.config_path,
            diagnostics=diagnostics,
            serving_generation=self.generation,
            duration_ms=round((time.monotonic() - started) * 1000),
            reloads_ok=self.reloads_ok,
            reloads_failed=self.reloads_failed,
        )

    def _restart_required(self, snapshot: Snapshot) -> list[str]:
        """Settings the running processes cannot change: sockets are bound, workers forked."""
        changed = []
        if snapshot.node.listen != self.snapshot.node.listen:
            changed.append("ando.listen")
        if worker_count(snapshot) != self.size:
            changed.append("ando.workers")
        if status_config(snapshot.node) != status_config(self.snapshot.node):
            changed.append("ando.observability.status")
        if prometheus_config(snapshot.node) != prometheus_config(self.snapshot.node):
            changed.append("ando.observability.prometheus")
        return changed

    async def _broadcast(
        self, generation: int, text: str, timeout: float
    ) -> list[dict[str, object]]:
        """Send the text to every worker and wait (bounded) until each has swapped to it."""
        loop = asyncio.get_running_loop()
        payload = text.encode()
        waits: list[asyncio.Future[dict[str, object]]] = []
        for handle in list(self.workers.values()):
            fut: asyncio.Future[dict[str, object]] = loop.create_future()
            handle.waiters.append((generation, fut))
            waits.append(fut)
            task = loop.create_task(self._send(handle, generation, payload))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        if not waits:
            return []
        await asyncio.wait(waits, timeout=timeout)
        results = []
        for fut in waits:
            if fut.done():
                results.append(fut.result())
            else:
                fut.cancel()
                results.append({"ok": False, "error": f"no answer within {timeout:.0f}s"})
        return results

    async def _send(self, handle: WorkerHandle, generation: int, payload: bytes) -> None:
        try:
            await handle.channel.send(channel.CONFIG, generation, payload)
        except OSError as e:  # the worker is gone; reaping answers its waiter
            handle.settle(generation, {"ok": False, "error": f"send failed: {e.strerror or e}"})

    # --- metrics --------------------------------------------------------------------------

    async def collect_metrics(self) -> bytes:
        """The node's metrics page: ask every worker for its totals (at most ASK_TIMEOUT; one
        that is late counts with its last report), add them up, render."""
        loop = asyncio.get_running_loop()
        self._asks += 1
        ask = self._asks
        waits = []
        for handle in list(self.workers.values()):
            if not handle.ready:
                continue
            fut: asyncio.Future[None] = loop.create_future()
            handle.metric_asks[ask] = fut
            waits.append(fut)
            task = loop.create_task(self._ask(handle, ask))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        if waits:
            await asyncio.wait(waits, timeout=ASK_TIMEOUT)
        for handle in self.workers.values():
            handle.metric_asks.pop(ask, None)
        facts = NodeFacts(
            reloads_ok=self.reloads_ok,
            reloads_failed=self.reloads_failed,
            last_reload_ok=self.last_reload_ok,
            workers={pid: h.slot for pid, h in self.workers.items()},
        )
        return render(self.totals, facts, master_pid=self.pid)

    async def _ask(self, handle: WorkerHandle, ask: int) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: reaping answers the ask
            await handle.channel.send(channel.METRICS_ASK, ask)

    def _metrics_reported(self, handle: WorkerHandle, ask: int, payload: bytes) -> None:
        try:
            report = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(report, dict):
            self.totals.update(handle.pid, report)
        fut = handle.metric_asks.pop(ask, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _configure_pusher(self) -> None:
        """Start, restart or stop the VictoriaMetrics pusher as the config now says."""
        conf = self.snapshot.node.observability.get("victoria_metrics")
        current = self.vm_pusher
        if current is not None and conf is not None and thaw(conf) == current.conf:
            return
        if current is not None:
            task = asyncio.get_running_loop().create_task(current.stop())
            self._sends.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._sends.discard)  # type: ignore[arg-type]
            self.vm_pusher = None
        if conf is not None:
            self.vm_pusher = VictoriaMetricsPusher(thaw(conf), self.collect_metrics, _master_log)
            self.vm_pusher.start()
