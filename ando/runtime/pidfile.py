"""The pid file: how `ando reload -c FILE` finds the master that serves FILE.

The default path is derived from the config's absolute path, so `ando run -c X` and
`ando reload -c X` agree without being told where to look, and two gateways serving different
files on one host never share a pid file. It lives in the temp directory, so it is written
atomically (rename over, never follow a planted symlink) and is trusted only when it belongs to us.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import tempfile


class PidFileError(Exception):
    """The pid file is missing, unreadable, not ours, or names a process that is gone."""


def default_pid_file(config_path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(config_path).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"ando-{os.getuid()}-{digest}.pid")


def write_pid_file(path: str, pid: int) -> None:
    """Replace `path` atomically: a reader sees the old pid or the new one, never half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ando-pid-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_pid_file(path: str) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PidFileError(f"no pid file at {path}") from None
    except OSError as e:
        raise PidFileError(f"cannot read pid file {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PidFileError(f"{path} is not a regular file; refusing to trust it")
    if st.st_uid != os.getuid():
        raise PidFileError(f"{path} belongs to another user; refusing to trust it")
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except OSError as e:
        raise PidFileError(f"cannot read pid file {path}: {e.strerror or e}") from None
    if not text.isdigit() or int(text) <= 0:
        raise PidFileError(f"{path} does not hold a pid ({text[:20]!r})")
    return int(text)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    return True


def looks_like_ando(pid: int) -> bool:
    """False when the process is known to be something else: pids are reused (quickly, in a
    container's small pid namespace), and a stale pid file must not get a stranger signalled.
    True when it cannot be told (no /proc, or no such process: liveness is checked apart)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ando" in f.read()
    except OSError:
        return True


def running_pid(path: str) -> int | None:
    """The pid a live pid file names, or None when there is none or it is stale."""
    try:
        pid = read_pid_file(path)
    except PidFileError:
        return None
    return pid if is_alive(pid) and looks_like_ando(pid) else None


def remove_pid_file(path: str, pid: int) -> None:
    """Remove `path` only if it still names `pid`: a newer master may have taken it over."""
    try:
        if read_pid_file(path) == pid:
            os.unlink(path)
    except (PidFileError, OSError):
        pass


def signal_master(pid_file: str, sig: signal.Signals, *, config_hint: str | None) -> int:
    """Send `sig` to the master named by `pid_file`; return its pid. Raises PidFileError with a
    message a user can act on."""
    hint = f"is ando running with -c {config_hint}?" if config_hint else "is ando running?"
    try:
        pid = read_pid_file(pid_file)
    except PidFileError as e:
        if not os.path.exists(pid_file):
            raise PidFileError(f"{e}; {hint} (or pass its --pid-file)") from None
        raise
    if not looks_like_ando(pid):
        raise PidFileError(f"stale pid file {pid_file}: process {pid} is not ando; {hint}")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise PidFileError(
            f"stale pid file {pid_file}: process {pid} is not running; {hint}"
        ) from None
    except PermissionError:
        raise PidFileError(f"not allowed to signal process {pid} (from {pid_file})") from None
    return pid
