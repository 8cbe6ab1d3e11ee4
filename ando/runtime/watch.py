"""Watch the config file for changes, the way files really change on servers.

Editors save by writing a temp file and renaming it over the original, and Kubernetes updates a
mounted ConfigMap by swapping a `..data` symlink to a new directory. Both replace the inode, so a
watch on the file itself goes deaf after the first change. We therefore watch the *directories*
(the config's own and the one its symlinks finally resolve to), keep only events on the paths that
can change what the config path reads (the path, every symlink met while resolving it, the final
target), debounce, and re-arm whenever the symlink layout changed. An error never ends the
watch: it is logged and the watch is re-armed with a back-off.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import aclosing, suppress

from watchfiles import awatch

from ando.runtime.events import log

DEBOUNCE = 0.1  # seconds of quiet after the last relevant event before reloading
_MAX_LINKS = 40  # as the kernel's ELOOP limit


def watch_targets(path: str) -> tuple[frozenset[str], frozenset[str]]:
    """(directories to watch, paths whose events matter) for the config at `path`."""
    names: set[str] = set()
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        names.add(current)
        link, rest = _first_symlink(current)
        if link is None:
            break
        names.add(link)
        target = os.readlink(link)
        current = os.path.normpath(os.path.join(os.path.dirname(link), target, rest))
    dirs = {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}
    # Also the directories holding the symlinks met on the way (a `..data` swap happens there).
    dirs.update(os.path.dirname(n) for n in names if os.path.islink(n))
    return frozenset(d for d in dirs if os.path.isdir(d)), frozenset(names)


def _first_symlink(path: str) -> tuple[str | None, str]:
    """The first component of `path` that is a symlink, and what follows it."""
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:i]) or os.sep
        if os.path.islink(prefix):
            return prefix, os.sep.join(parts[i:])
    return None, ""


class ConfigWatcher:
    """Calls `on_change()` once per burst of relevant changes to the config at `path`, or to
    the files `extra()` names (the Lua modules the config loads: a change to one reloads too)."""

    def __init__(
        self,
        path: str,
        on_change: Callable[[], None],
        extra: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.extra = extra
        self._stop = threading.Event()  # read by watchfiles' thread every `step` ms
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-watch")

    async def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 2)

    def refresh(self) -> None:
        """The set of extra files changed: watch the new one from now on."""
        if self._task is not None and not self._stop.is_set():
            self._task.cancel()
            self.start()

    def _targets(self) -> tuple[frozenset[str], frozenset[str]]:
        dirs, names = watch_targets(self.path)
        extra = {os.path.abspath(f) for f in self.extra()}
        if not extra:
            return dirs, names
        more = {d for d in (os.path.dirname(f) for f in extra) if os.path.isdir(d)}
        return dirs | more, names | extra

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            dirs, names = self._targets()
            try:
                if not dirs:
                    raise FileNotFoundError(f"no directory to watch for {self.path}")
                await self._watch(dirs, names)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log(
                    "watch_error",
                    level="error",
                    file=self.path,
                    error=f"{type(e).__name__}: {e}",
                    retry_in=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._changed()  # something may have changed while we were not watching

    async def _watch(self, dirs: frozenset[str], names: frozenset[str]) -> None:
        """Until the layout of symlinks changes (then the caller re-arms on the new one)."""
        stream = awatch(
            *sorted(dirs),
            watch_filter=None,
            recursive=False,
            debounce=int(DEBOUNCE * 1000),
            step=20,
            stop_event=self._stop,
            rust_timeout=1000,
        )
        async with aclosing(stream) as changes_stream:
            async for changes in changes_stream:
                if any(p in names for _, p in changes):
                    self._changed()
                if self._targets() != (dirs, names):
                    self._changed()
                    return

    def _changed(self) -> None:
        """Trailing debounce: the reload runs DEBOUNCE after the last event and reads the file
        then, so a burst of writes becomes one reload of the latest content."""
        if self._stop.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(DEBOUNCE, self.on_change)
