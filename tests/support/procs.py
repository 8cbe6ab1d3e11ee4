"""Process trees read from /proc: a gateway's master and workers (and, for the single-file binary,
its bootloader), so tests can check that every process they started is gone."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (pid -> its /proc start time, which tells a reused pid apart),
    read from /proc: the bootloader's child interpreter, the master's workers, and so on."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
        children.setdefault(int(fields[1]), []).append(int(entry))
        starts[int(entry)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found[p] = starts[p]
        todo.extend(children.get(p, []))
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """The processes of `descendants()` still running (zombies count as gone: nothing runs)."""
    out = []
    for pid, start in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[19] == start and fields[0] != "Z":
            out.append(pid)
    return out
