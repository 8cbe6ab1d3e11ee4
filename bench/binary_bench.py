"""The single-file binary's footprint: file size, cold start to the first served response, and
idle memory of the master and each worker.

    .venv/bin/python bench/binary_bench.py [--runs 5] [BINARY ...]

BINARY defaults to whichever of dist/ando-VERSION-linux-ARCH and its -static twin exist; `python
-m ando` from this checkout's venv is measured beside them for reference. Each start serves
config/ando.yaml as shipped, rewritten only to listen on free 127.0.0.1 ports.

- `ando version`: unpacking and starting the interpreter alone (median of --runs).
- cold start: from spawning the command to the first 200 from GET /hello (answered by the mocking
  plugin, so no backend is involved). Every start is a new process that unpacks its bundle anew
  (PyInstaller onefile; staticx's wrapper first); the page cache is left warm, as on a device
  that starts the service a second time. Median of --runs starts.
- idle memory: 2 s after /status/ready reports every worker serving (this config runs
  `workers: auto`), RSS and PSS (smaps_rollup: shared pages split between the processes that
  share them, so PSS adds up and RSS does not) of every process of the tree: the workers, the
  master, PyInstaller's bootloader above it and, for the static file, staticx's wrapper.

Everything stays on 127.0.0.1, every wait is bounded, and every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_text(port: int, status_port: int, metrics_port: int) -> str:
    text = (ROOT / "config" / "ando.yaml").read_text()
    listen = '"0.0.0.0:${{ANDO_PORT:=9080}}"'
    if text.count(listen) != 1 or text.count("\nando:\n") != 1:
        raise SystemExit("config/ando.yaml changed shape: update bench/binary_bench.py")
    text = text.replace(listen, f'"127.0.0.1:{port}"')
    return text.replace(
        "\nando:\n",
        "\nando:\n  observability:\n"
        f'    status: {{listen: "127.0.0.1:{status_port}"}}\n'
        f'    prometheus: {{listen: "127.0.0.1:{metrics_port}"}}\n',
    )


def get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, body); (0, b"") when refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3})", head)
    return (int(match.group(1)) if match else 0), body


class Gateway:
    def __init__(self, command: list[str], tmp: Path) -> None:
        self.port, self.status_port = free_port(), free_port()
        config = tmp / "ando.yaml"
        config.write_text(config_text(self.port, self.status_port, free_port()))
        self.log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 (closed in stop())
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [*command, "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=tmp,
            env={**os.environ, "TMPDIR": str(tmp)},
            start_new_session=True,
        )

    def first_response(self) -> float:
        """Seconds from spawning to the first 200 on /hello."""
        deadline = self.started + START_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}")
            if get(self.port, "/hello", timeout=0.5)[0] == 200:
                return time.perf_counter() - self.started
            time.sleep(0.002)
        raise TimeoutError(f"no response within {START_TIMEOUT} s")

    def wait_all_workers(self, workers: int) -> None:
        deadline = time.perf_counter() + START_TIMEOUT
        while time.perf_counter() < deadline:
            status, body = get(self.status_port, "/status/ready")
            if status == 200 and json.loads(body).get("workers_ready") == workers:
                return
            time.sleep(0.05)
        raise TimeoutError("not every worker became ready")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


def _kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory(gw: Gateway) -> list[tuple[str, int, int]]:
    """(role, RSS KiB, PSS KiB) for each process of the gateway's tree. The master is the process
    whose children are the workers (the deepest parent); above it, PyInstaller's bootloader and,
    for the static file, staticx's wrapper above that."""
    pids = _tree(gw.proc.pid)
    parents = {
        p: int(Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[1]) for p in pids
    }
    leaves = [p for p in pids if p not in parents.values()]
    master = parents[leaves[0]] if leaves and leaves[0] != gw.proc.pid else gw.proc.pid
    out = []
    for p in pids:
        if p == master:
            role = "master"
        elif parents[p] == master:
            role = "worker"
        elif parents.get(master) == p:
            role = "bootloader (PyInstaller)"
        else:
            role = "staticx wrapper"
        out.append(
            (role, _kib(f"/proc/{p}/status", "VmRSS"), _kib(f"/proc/{p}/smaps_rollup", "Pss"))
        )
    return out


def version_time(command: list[str]) -> float:
    """Seconds for `ando version`: unpacking and starting the interpreter, no config, no fork."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ando-binary-bench-") as tmp:
        subprocess.run(
            [*command, "version"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
            env={**os.environ, "TMPDIR": tmp},
        )
    return time.perf_counter() - started


def measure(name: str, command: list[str], runs: int) -> dict:
    workers = len(os.sched_getaffinity(0)) or 1
    versions = [version_time(command) for _ in range(runs)]
    starts: list[float] = []
    mem: list[tuple[str, int, int]] = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="ando-binary-bench-") as tmp:
            gw = Gateway(command, Path(tmp))
            try:
                starts.append(gw.first_response())
                if i == runs - 1:  # memory once, on the last start
                    gw.wait_all_workers(workers)
                    time.sleep(2.0)
                    mem = memory(gw)
            finally:
                gw.stop()
    return {"name": name, "starts": starts, "versions": versions, "memory": mem}


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binaries", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-source", action="store_true", help="skip `python -m ando`")
    args = parser.parse_args(argv)
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "ando/__init__.py").read_text())
    assert version is not None
    base = ROOT / "dist" / f"ando-{version.group(1)}-linux-{platform.machine()}"
    binaries = args.binaries or [p for p in (base, Path(f"{base}-static")) if p.exists()]
    targets = [
        (str(b.relative_to(ROOT) if b.is_relative_to(ROOT) else b), [str(b)]) for b in binaries
    ]
    if not args.no_source:
        targets.append(("python -m ando (venv)", [sys.executable, "-m", "ando"]))
    print(f"# bench/binary_bench.py, {args.runs} start(s) each, {platform.machine()}\n")
    print("| target | size | `ando version` | cold start to first response: median (min-max) |")
    print("| --- | --- | --- | --- |")
    results = []
    for name, command in targets:
        r = measure(name, command, args.runs)
        results.append(r)
        size = f"{Path(command[0]).stat().st_size / 1e6:.1f} MB" if len(command) == 1 else "-"
        s, v = r["starts"], r["versions"]
        print(
            f"| `{name}` | {size} | {statistics.median(v) * 1000:.0f} ms "
            f"| {statistics.median(s) * 1000:.0f} ms ({min(s) * 1000:.0f}-{max(s) * 1000:.0f}) |",
            flush=True,
        )
    print("\nidle memory, 2 s after every worker is ready (RSS / PSS):\n")
    print("| target | process | RSS | PSS |")
    print("| --- | --- | --- | --- |")
    for r in results:
        for role, rss, pss in r["memory"]:
            print(f"| `{r['name']}` | {role} | {_mib(rss)} | {_mib(pss)} |")
        total = sum(p for _, _, p in r["memory"])
        print(f"| `{r['name']}` | all (PSS adds up) | | {_mib(total)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
