"""Gateway events as one JSON line each on stderr.

Why JSON lines on stderr: operators grep and ship them (journald, Kubernetes, VictoriaLogs) without
a parser per message, and stdout stays free for the access log. The master and every worker share
one stderr; each line goes out in a single `os.write`, which a pipe keeps whole up to PIPE_BUF
(4 KiB), so lines from different processes do not interleave in practice.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from typing import Any

import orjson

_STDERR = 2


def log(event: str, level: str = "info", **fields: Any) -> None:
    """Write one event. Never raises: a closed or full stderr must not take the gateway down."""
    record = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "event": event,
        **{k: v for k, v in fields.items() if v is not None},  # absent rather than null
    }
    try:
        line = orjson.dumps(record, default=str) + b"\n"
    except TypeError as e:  # a field orjson cannot render even with str(): say so, keep going
        line = orjson.dumps({**record, **{k: repr(v) for k, v in fields.items()}, "bug": str(e)})
        line += b"\n"
    view = memoryview(line)
    try:
        while view:
            view = view[os.write(_STDERR, view) :]
    except OSError:
        # stderr is non-blocking and full (or gone): drop the rest rather than block serving.
        return


def describe_status(status: int) -> dict[str, Any]:
    """A wait() status as log fields: {"exit_code": 1} or {"signal": "SIGKILL"}."""
    if os.WIFSIGNALED(status):
        fields: dict[str, Any] = {"signal": signal_name(os.WTERMSIG(status))}
        if os.WCOREDUMP(status):
            fields["core_dumped"] = True
        return fields
    if os.WIFEXITED(status):
        return {"exit_code": os.WEXITSTATUS(status)}
    return {"status": status}


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)
