"""Proxy benchmark: Ando against nginx as a reverse proxy, on this machine, with wrk.

Run with `make bench` (or `python bench/proxy_bench.py --runs 1 --duration 3` for a quick look).

Everything listens on 127.0.0.1, on ports picked free at run time; every process started here runs
in its own process group and is stopped at the end, also on failure, Ctrl-C or SIGTERM.

Layout on a 2-core machine: the proxy under test (nginx, or Ando, one worker) is pinned to CPU 0;
wrk and the upstream (a second nginx, one worker, answering GET /bench with 13 bytes) share CPU 1.
Targets, measured in interleaved rounds (a, b, c, d, a, b, c, d, ...) so that the machine's noise
spreads over all of them:

  upstream     wrk straight to the upstream nginx (the ceiling of this setup)
  nginx        nginx as a keep-alive reverse proxy (the baseline)
  ando-log     `ando run` with the access log on (its default; written to a file)
  ando-nolog   `ando run` with `ando.observability.access_log.enabled: false`
  ando-lua     as ando-nolog, with the hello_world Lua plugin (lua/examples) on the route
  ando-pyhdr   as ando-nolog, with response-rewrite setting the header hello_world sets: the
               same change by a built-in Python plugin, which tells the Lua runtime's share of
               ando-lua's added CPU from what any plugin on the route costs
  ando-prom    as ando-nolog, with the prometheus plugin on the route (metrics recorded)
  ando-chain   as ando-nolog, with a plugin chain on the route: key-auth + limit-count (a count
               never reached: the cost of counting) + proxy-rewrite + cors + request-id

Per target: median requests/s, p50 and p99 latency (wrk --latency), the proxy's CPU microseconds
per request (utime+stime of its processes from /proc, over the requests wrk completed) and the
worker's RSS idle and after load. Then, in-process (bench/hotpath_bench.py, no kernel): the
request's own Python microseconds, plain and with each plugin variant, whose differences resolve
a plugin's added CPU far more finely than wrk's run-to-run spread does on this machine; and the
same requests' instructions (bench/instructions.py, valgrind), which do not move with the noise.

The regenerated part of bench/REPORT.md lies between the
`<!-- proxy-bench:start -->` and `<!-- proxy-bench:end -->` markers; notes outside them are kept.

While `ando run` still exits with code 3 ("serving is not built yet"), the Ando targets are skipped
with a note rather than failing the run. Python standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import grp
import http.client
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "bench" / "REPORT.md"
START, END = "<!-- proxy-bench:start -->", "<!-- proxy-bench:end -->"
BODY = "Hello, world\n"  # 13 bytes
PATH = "/bench"
TARGET_RATIO = 0.75
CHAIN_TARGET_RATIO = 0.60
API_KEY = "bench-key"  # sent by wrk to every target; only ando-chain's key-auth reads it
CHAIN = """    plugins:
      key-auth: {}
      limit-count: {count: 1000000000, time_window: 60, key_type: var, key: remote_addr}
      proxy-rewrite: {headers: {set: {X-Bench: "1"}}}
      cors: {}
      request-id: {}
"""
LUA_NODE = "  lua: {plugins: [examples.hello_world]}\n"
LUA_PLUGIN = "    plugins: {hello-world: {}}\n"
LUA_EXTRA_CPU_TARGET = 5.0  # us per request, issue 5
PYHDR_PLUGIN = "    plugins: {response-rewrite: {headers: {set: {X-Hello: world}}}}\n"
PROM_PLUGIN = "    plugins: {prometheus: {}}\n"
PROM_EXTRA_CPU_TARGET = 3.0  # us per request, issue 6
CONSUMERS = f"""consumers:
  - username: bench
    plugins: {{key-auth: {{key: {API_KEY}}}}}
"""
QUIET_PCT = 10  # other processes' CPU (% of one core) during a run above which it is "not quiet"
EXIT_UNAVAILABLE = 3  # `ando run`: "a command this build cannot carry out yet"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A problem that stops one target (or, for the upstream, the whole run)."""


# --------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A server started in its own process group; stop() takes the whole group down."""

    all: list[Proc] = []  # noqa: RUF012 (a registry, so cleanup finds every process)

    def __init__(self, name: str, argv: list[str], workdir: Path, stop_signal: int, **kw):
        self.name, self.argv, self.stop_signal = name, argv, stop_signal
        self.out_path, self.err_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own session and process group: killpg reaches all
                cwd=kw.pop("cwd", ROOT),
                **kw,
            )
        Proc.all.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The process itself, every descendant, and anything else left in its group."""
        return group_pids(self.pid)

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.err_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _exited(self) -> bool:
        """Has the leader exited? Asked without reaping it: until it is reaped, its pid (and so
        its process group id) cannot be handed to another process, so killpg stays ours."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def stop(self) -> None:
        if self.popen.returncode is None:  # not reaped yet
            if not self._exited():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.pid, self.stop_signal)  # the master stops its workers, cleans up
                deadline = time.monotonic() + 5
                while not self._exited() and time.monotonic() < deadline:
                    time.sleep(0.05)
            # Whatever survived in the group (the leader, workers that outlived it): SIGKILL.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        elif any(pgrp == self.pid for _, pgrp, _ in proc_table().values()):
            # Reaped already (it exited early), but members of its group live on, which keeps
            # the group id from being reused: they are ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


def stop_all() -> None:
    while Proc.all:
        Proc.all.pop().stop()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, utime+stime in clock ticks) from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()  # comm may hold spaces and parentheses
    return int(rest[1]), int(rest[2]), int(rest[11]) + int(rest[12])


def proc_table() -> dict[int, tuple[int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := read_stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def group_pids(root: int) -> list[int]:
    table = proc_table()
    found = {p for p, (_, pgrp, _) in table.items() if pgrp == root}
    if root in table:
        found.add(root)
    frontier = [root]
    while frontier:  # descendants, in case a child made its own group
        parent = frontier.pop()
        for p, (ppid, _, _) in table.items():
            if ppid == parent and p not in found:
                found.add(p)
                frontier.append(p)
    return sorted(found)


def cpu_ticks(pids: list[int]) -> int:
    return sum(st[2] for p in pids if (st := read_stat(p)) is not None)


def worker_pids(root: int) -> list[int]:
    """The direct children of a master (nginx's worker, Ando's workers); the root if it has none."""
    kids = [p for p, (ppid, _, _) in proc_table().items() if ppid == root]
    return kids or [root]


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            pass
    return total


# --------------------------------------------------------------------------------------------
# Networking helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(proc: Proc, port: int, timeout: float) -> None:
    """Poll until the port accepts; raise if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.popen.poll()
        if code is not None:
            raise BenchError(
                f"{proc.name} exited with code {code} before accepting on port {port}\n"
                + proc.stderr_tail()
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not accept on 127.0.0.1:{port} within {timeout:.0f} s")


def check_200(name: str, port: int) -> None:
    """One request through the target before measuring: it must answer 200 with the body."""
    last = ""
    for _ in range(20):  # a proxy may be accepting a moment before it can forward
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", PATH, headers={"apikey": API_KEY})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            if resp.status == 200 and body == BODY:
                return
            last = f"HTTP {resp.status}, body {body[:200]!r}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        time.sleep(0.25)
    raise BenchError(f"{name}: GET http://127.0.0.1:{port}{PATH} did not return 200: {last}")


# --------------------------------------------------------------------------------------------
# nginx


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_tools() -> tuple[str, str]:
    nginx, wrk = find_binary("nginx"), find_binary("wrk")
    if not (nginx and wrk):
        print(
            "proxy_bench: nginx or wrk missing; running build/ensure-apt.sh nginx wrk", flush=True
        )
        subprocess.run([str(ROOT / "build" / "ensure-apt.sh"), "nginx", "wrk"], check=True)
        nginx, wrk = find_binary("nginx"), find_binary("wrk")
    if not (nginx and wrk):
        raise BenchError(
            "nginx and wrk are needed: install them with build/ensure-apt.sh nginx wrk"
        )
    return nginx, wrk


def nginx_conf(prefix: Path, server_block: str, upstream_block: str = "") -> str:
    user = ""
    if os.geteuid() == 0:  # as root the workers would drop to nobody; keep them able to use DIR
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {prefix / "nginx.pid"};
lock_file {prefix / "nginx.lock"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/plain;
{temp}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{upstream_block}
    server {{
{server_block}
    }}
}}
"""


def start_nginx(name: str, nginx: str, workdir: Path, cpu: str | None, conf: str) -> Proc:
    prefix = workdir / name
    (prefix / "tmp").mkdir(parents=True)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    argv = [*taskset(cpu), nginx, "-p", f"{prefix}/", "-c", str(conf_path)]
    argv += ["-e", str(prefix / "error.log"), "-g", "daemon off;"]
    # SIGTERM is nginx's fast shutdown (SIGQUIT would wait on idle keep-alive connections).
    return Proc(name, argv, workdir, signal.SIGTERM)


def taskset(cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu] if cpu is not None else []


# --------------------------------------------------------------------------------------------
# wrk


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"unreadable latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int


def parse_wrk(text: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    reqs = re.search(r"^\s*(\d+) requests in ", text, re.M)
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", text, re.M))
    if not (rps and reqs and "50" in pct and "99" in pct):
        raise BenchError(f"could not read wrk's output:\n{text.strip()}")
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(reqs.group(1)),
        p50_ms=_ms(pct["50"]),
        p99_ms=_ms(pct["99"]),
        socket_errors=sum(int(g) for g in errs.groups()) if errs else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def run_wrk(argv: list[str], duration: int) -> WrkResult:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=duration + 60)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}: {shlex.join(argv)}\n{out}")
    result = parse_wrk(out)
    if result.requests == 0:
        raise BenchError(f"wrk completed no requests: {shlex.join(argv)}\n{out}")
    if result.non_2xx:
        raise BenchError(f"{result.non_2xx} responses were not 2xx/3xx: {shlex.join(argv)}\n{out}")
    if result.socket_errors > max(10, result.requests // 1000):
        raise BenchError(
            f"{result.socket_errors} socket errors in {result.requests} requests: "
            f"{shlex.join(argv)}\n{out}"
        )
    return result


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class Run:
    wrk: WrkResult
    cpu_us_per_req: float
    rss_end_kb: int
    rss_end_total_kb: int
    other_load_generators: int  # wrk-like processes not ours, seen just before or after
    other_cpu_pct: float = 0.0  # CPU used by processes not ours during the run, % of one core
    cpu_busy_pct: tuple[float, ...] = ()  # (proxy CPU, load CPU) busy during the run, %
    round: int = 0


@dataclass
class Target:
    key: str
    label: str
    access_log: str
    proc: Proc | None = None
    port: int = 0
    rss_idle_kb: int = 0
    rss_idle_total_kb: int = 0
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""  # why it was not measured (not an error)
    error: str = ""  # why it failed (an error: exit code 1)

    @property
    def active(self) -> bool:
        return self.proc is not None and not (self.skipped or self.error)

    def med(self, attr: str) -> float:
        values = [
            getattr(r.wrk, attr) if hasattr(r.wrk, attr) else getattr(r, attr) for r in self.runs
        ]
        return statistics.median(values)


def ando_config(
    port: int,
    upstream_port: int,
    prom: int,
    status: int,
    access_log: bool,
    chain: bool = False,
    lua: bool = False,
    prom_plugin: bool = False,
    pyhdr: bool = False,
) -> str:
    log = "" if access_log else "    access_log: {enabled: false}\n"
    plugins = (
        CHAIN
        if chain
        else LUA_PLUGIN
        if lua
        else PROM_PLUGIN
        if prom_plugin
        else PYHDR_PLUGIN
        if pyhdr
        else ""
    )
    return f"""# Generated by bench/proxy_bench.py
ando:
  workers: 1
  listen: ["127.0.0.1:{port}"]
{LUA_NODE if lua else ""}  observability:
{log}    prometheus: {{listen: "127.0.0.1:{prom}"}}
    status: {{listen: "127.0.0.1:{status}"}}
routes:
  - id: bench
    uri: {PATH}
{plugins}    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{upstream_port}": 1
{CONSUMERS if chain else ""}#END
"""


def start_ando(t: Target, workdir: Path, cpu: str | None, upstream_port: int) -> None:
    t.port = free_port()
    cfg = workdir / f"{t.key}.yaml"
    cfg.write_text(
        ando_config(
            t.port,
            upstream_port,
            free_port(),
            free_port(),
            access_log=t.key == "ando-log",
            chain=t.key == "ando-chain",
            lua=t.key == "ando-lua",
            prom_plugin=t.key == "ando-prom",
            pyhdr=t.key == "ando-pyhdr",
        )
    )
    check = subprocess.run(
        [sys.executable, "-m", "ando", "validate", str(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if check.returncode != 0:
        msg = f"`ando validate` rejected the generated config:\n{check.stdout}{check.stderr}"
        if t.key != "ando-log" and "access_log" in check.stdout + check.stderr:
            t.skipped = "this build's config cannot turn the access log off:\n" + msg
        else:
            t.error = msg
        return
    argv = [*taskset(cpu), sys.executable, "-m", "ando", "run", "-c", str(cfg)]
    # SIGQUIT is Ando's "exit now"; the access log (default: stdout) goes to a file.
    t.proc = Proc(t.key, argv, workdir, signal.SIGQUIT)
    try:
        wait_accepting(t.proc, t.port, timeout=30)
    except BenchError as e:
        if t.proc.popen.poll() == EXIT_UNAVAILABLE:
            t.skipped = "`ando run` exited with code 3 (serving is not built yet): " + (
                t.proc.stderr_tail(1) or "no message"
            )
        else:
            t.error = str(e)


# --------------------------------------------------------------------------------------------
# The run


def cpus() -> tuple[str | None, str | None, str]:
    """(proxy CPU, load CPU, note): CPU 0 and 1 of those this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) >= 2 and shutil.which("taskset"):
        return str(allowed[0]), str(allowed[1]), ""
    return None, None, "fewer than 2 usable CPUs (or no taskset): nothing is pinned"


def foreign_load() -> int:
    """How many wrk or ab processes are running that this harness did not start (it has none
    running when this is called): another benchmark on the machine makes the numbers unreliable."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                count += f.read().strip() in ("wrk", "ab", "hey", "oha", "h2load")
    return count


def machine_busy_ticks() -> int:
    """user+nice+system over all CPUs from /proc/stat: time spent in processes, ours or not."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def per_cpu_ticks() -> dict[str, tuple[int, int]]:
    """{"0": (busy, total), ...} from /proc/stat; busy counts irq and softirq (the loopback's
    network work), which no process's utime+stime includes."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
                out[name[3:]] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: here, wrk
    return usage.ru_utime + usage.ru_stime


def measure(t: Target, upstream: Proc, wrk_argv: list[str], duration: int, cpus) -> Run:
    pids = t.proc.pids()
    ours = sorted(set(pids) | set(upstream.pids()))
    others = foreign_load()
    before, ours_before, wrk_before = cpu_ticks(pids), cpu_ticks(ours), children_cpu_s()
    busy_before, t0, per_cpu_before = machine_busy_ticks(), time.monotonic(), per_cpu_ticks()
    result = run_wrk(wrk_argv, duration)
    busy_after, wall, per_cpu_after = machine_busy_ticks(), time.monotonic() - t0, per_cpu_ticks()
    cpu_busy = []
    for cpu in cpus:  # how busy the proxy's CPU and the load's CPU were: which one was the limit
        (b0, t0_), (b1, t1) = per_cpu_before.get(cpu, (0, 0)), per_cpu_after.get(cpu, (0, 0))
        cpu_busy.append(100 * (b1 - b0) / (t1 - t0_) if t1 > t0_ else float("nan"))
    after, ours_after, wrk_after = cpu_ticks(pids), cpu_ticks(ours), children_cpu_s()
    others = max(others, foreign_load())
    cpu_us = (after - before) * 1e6 / CLK_TCK / result.requests
    # CPU time the machine spent in processes that are not the proxy, the upstream or wrk.
    other_s = (busy_after - busy_before - ours_after + ours_before) / CLK_TCK
    other_s -= wrk_after - wrk_before
    workers = worker_pids(t.proc.pid)
    return Run(
        result,
        cpu_us,
        rss_kb(workers),
        rss_kb(t.proc.pids()),
        others,
        other_cpu_pct=max(0.0, 100 * other_s / wall),
        cpu_busy_pct=tuple(cpu_busy),
    )


def wrk_cmd(wrk: str, cpu: str | None, args, port: int, duration: int) -> list[str]:
    return [
        *taskset(cpu),
        wrk,
        "-t1",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--latency",
        "-H",
        f"apikey: {API_KEY}",
        f"http://127.0.0.1:{port}{PATH}",
    ]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded load first")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated targets: upstream, nginx, ando (every Ando run), ando-log, "
        "ando-nolog, ando-lua, ando-pyhdr, ando-prom, ando-chain (default: all)",
    )
    p.add_argument("--report", type=Path, default=REPORT, help="report file (bench/REPORT.md)")
    p.add_argument("--no-report", action="store_true", help="print only; leave the report alone")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument(
        "--inprocess-rounds",
        type=int,
        default=5,
        help="rounds of bench/hotpath_bench.py (plain, --prometheus, --lua, --pyhdr, --chain; "
        "default 5)",
    )
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process costs")
    p.add_argument(
        "--no-instructions",
        action="store_true",
        help="skip the instruction counts (bench/instructions.py under valgrind, ~3 min)",
    )
    args = p.parse_args()
    if args.duration < 1 or args.runs < 1 or args.connections < 1:
        p.error("--duration, --runs and --connections must be at least 1")

    targets = [
        Target("upstream", "upstream nginx, direct", "off"),
        Target("nginx", "nginx reverse proxy", "off"),
        Target("ando-log", "Ando", "on (to a file)"),
        Target("ando-nolog", "Ando", "off"),
        Target("ando-lua", "Ando + hello_world Lua plugin", "off"),
        Target("ando-pyhdr", "Ando + response-rewrite setting the same header", "off"),
        Target("ando-prom", "Ando + prometheus plugin", "off"),
        Target("ando-chain", "Ando + 5-plugin chain", "off"),
    ]
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        unknown = {w for w in wanted if not any(t.key.startswith(w) for t in targets)}
        if unknown:
            p.error(f"--only: unknown target(s) {', '.join(sorted(unknown))}")
        targets = [t for t in targets if any(t.key == w or t.key.startswith(w) for w in wanted)]

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="ando-proxy-bench-"))
    started = dt.datetime.now(dt.UTC)
    load_at_start = os.getloadavg()
    notes: list[str] = []
    try:
        nginx, wrk = ensure_tools()
        proxy_cpu, load_cpu, pin_note = cpus()
        if pin_note:
            notes.append(pin_note)
        commands = run_all(args, targets, workdir, nginx, wrk, proxy_cpu, load_cpu)
    except BenchError as e:
        print(f"proxy_bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("proxy_bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if args.keep_temp:
            print(f"proxy_bench: temp files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    env = environment(nginx, wrk, started, load_at_start)
    busy = [(t.key, r.other_load_generators) for t in targets for r in t.runs]
    if any(n for _, n in busy):
        notes.append(
            f"Another load generator (wrk, ab, ...) not started by this harness was running during "
            f"{sum(1 for _, n in busy if n)} of {len(busy)} runs: those numbers are unreliable."
        )
    other = [r.other_cpu_pct for t in targets for r in t.runs]
    if other and max(other) >= QUIET_PCT:
        notes.append(
            f"Processes outside this benchmark used CPU during some runs: median "
            f"{statistics.median(other):.0f}%, max {max(other):.0f}% of one core (column "
            "`other CPU`); compare runs with little of it, and trust ratios over absolutes."
        )
    inproc = None
    if not args.no_inprocess and any(t.key.startswith("ando") and t.runs for t in targets):
        inproc = inprocess_costs(args.inprocess_rounds)
    counts = None
    if not args.no_instructions and any(t.key.startswith("ando") and t.runs for t in targets):
        counts = instruction_counts(notes)
    text = render(args, targets, env, commands, notes, proxy_cpu, load_cpu, inproc, counts)
    print()
    print(text.split("\n### Commands")[0])  # the configs and commands: in the report
    if not args.no_report:
        write_report(args.report, text)
        print(f"proxy_bench: wrote {args.report}")
    failed = [t for t in targets if t.error]
    return 1 if failed else 0


def run_all(args, targets, workdir, nginx, wrk, proxy_cpu, load_cpu) -> list[str]:
    commands: list[tuple[str, str]] = []  # (what, command or config text)
    up_port = free_port()
    loc = f'        location = {PATH} {{ return 200 "{BODY.encode("unicode_escape").decode()}"; }}'
    upstream = start_nginx(
        "upstream-nginx",
        nginx,
        workdir,
        load_cpu,
        nginx_conf(
            workdir / "upstream-nginx",
            f"        listen 127.0.0.1:{up_port};\n{loc}\n        location / {{ return 404; }}",
        ),
    )
    commands.append(("upstream nginx", shlex.join(upstream.argv)))
    commands.append(("its config", (workdir / "upstream-nginx" / "nginx.conf").read_text()))
    wait_accepting(upstream, up_port, timeout=15)
    check_200("upstream", up_port)  # everything depends on it: a failure here ends the run

    for t in targets:
        if t.key == "upstream":
            t.proc, t.port = upstream, up_port
        elif t.key == "nginx":
            t.port = free_port()
            conf = nginx_conf(
                workdir / "proxy-nginx",
                f"        listen 127.0.0.1:{t.port};\n"
                "        location / {\n"
                "            proxy_pass http://backend;\n"
                "            proxy_http_version 1.1;\n"
                '            proxy_set_header Connection "";\n'
                "        }",
                "    upstream backend {\n"
                f"        server 127.0.0.1:{up_port};\n"
                "        keepalive 64;\n"
                "        keepalive_requests 1000000;\n"
                "    }",
            )
            t.proc = start_nginx("proxy-nginx", nginx, workdir, proxy_cpu, conf)
            commands.append(("nginx reverse proxy", shlex.join(t.proc.argv)))
            commands.append(("its config", (workdir / "proxy-nginx" / "nginx.conf").read_text()))
            try:
                wait_accepting(t.proc, t.port, timeout=15)
            except BenchError as e:
                t.error = str(e)
        else:
            start_ando(t, workdir, proxy_cpu, up_port)
            if t.proc is not None:
                what = f"`{t.key}` (stdout, where the access log goes, to a file)"
                commands.append((what, shlex.join(t.proc.argv)))
                commands.append(("its config", (workdir / f"{t.key}.yaml").read_text()))
        if t.active:
            try:
                check_200(t.key, t.port)
            except BenchError as e:
                tail = t.proc.stderr_tail(8) if t.key.startswith("ando") else ""
                t.error = str(e) + (f"\nlast lines of its stderr:\n{tail}" if tail else "")
        if t.skipped:
            print(f"proxy_bench: {t.key}: skipped: {t.skipped}", flush=True)
        if t.error:
            print(f"proxy_bench: {t.key}: FAILED: {t.error}", file=sys.stderr, flush=True)

    active = [t for t in targets if t.active]
    for t in active:
        t.rss_idle_kb = rss_kb(worker_pids(t.proc.pid))
        t.rss_idle_total_kb = rss_kb(t.proc.pids())
    wrk_line = shlex.join(wrk_cmd(wrk, load_cpu, args, 0, args.duration))
    what = f"load, per run and target (after {args.warmup} s of unrecorded warm-up per target)"
    commands.append((what, wrk_line.replace(":0/", ":PORT/")))
    if args.warmup > 0:
        for t in active:
            print(f"proxy_bench: warm-up {t.key} ({args.warmup} s)", flush=True)
            try:
                run_wrk(wrk_cmd(wrk, load_cpu, args, t.port, args.warmup), args.warmup)
            except BenchError as e:
                t.error = f"warm-up: {e}"
    for n in range(1, args.runs + 1):
        for t in targets:
            if not t.active:
                continue
            try:
                wrk_argv = wrk_cmd(wrk, load_cpu, args, t.port, args.duration)
                pinned = tuple(c for c in (proxy_cpu, load_cpu) if c is not None)
                run = measure(t, upstream, wrk_argv, args.duration, pinned)
            except BenchError as e:
                t.error = f"run {n}: {e}"
                print(f"proxy_bench: {t.key}: FAILED: {t.error}", file=sys.stderr, flush=True)
                continue
            run.round = n
            t.runs.append(run)
            w = run.wrk
            print(
                f"proxy_bench: run {n}/{args.runs} {t.key:<10} {w.rps:>9.0f} req/s  "
                f"p50 {w.p50_ms:.2f} ms  p99 {w.p99_ms:.2f} ms  "
                f"cpu {run.cpu_us_per_req:.1f} µs/req  busy {_busy(run)}  "
                f"other {run.other_cpu_pct:.0f}%",
                flush=True,
            )
    for t in targets:
        if t.key == "ando-log" and t.proc is not None and t.runs:
            size = t.proc.out_path.stat().st_size
            total = sum(r.wrk.requests for r in t.runs)
            t.access_log = f"on ({size / max(total, 1):.0f} B/request written to a file)"
    return [(what, text.replace(str(workdir), "$TMP").rstrip()) for what, text in commands]


# --------------------------------------------------------------------------------------------
# Report


def _first_line(argv: list[str], must_succeed: bool = False) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if must_succeed and r.returncode != 0:
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def environment(nginx: str, wrk: str, started: dt.datetime, load: tuple) -> dict[str, str]:
    def loadavg(values):
        return " ".join(f"{x:.2f}" for x in values)

    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = ["git", "-C", str(ROOT)]
    commit = _first_line([*git, "rev-parse", "--short", "HEAD"], must_succeed=True)
    dirty = _first_line([*git, "status", "--porcelain", "--untracked-files=no"], True)
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "load": f"at start {loadavg(load)}, at end {loadavg(os.getloadavg())}",
        "nginx": _first_line([nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": _first_line([wrk, "--version"]).split(" [")[0],
        "python": platform.python_version(),
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
    }


def _busy(run: Run) -> str:
    return "/".join(f"{b:.0f}%" for b in run.cpu_busy_pct) or "?"


def _kb(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


INPROCESS_VARIANTS = (("plain", ""), ("prometheus", "--prometheus"), ("lua", "--lua"),
                      ("pyhdr", "--pyhdr"), ("chain", "--chain"))  # fmt: skip
# The best of the subprocess's 5 runs, as timeit takes the minimum: on a shared 2-core machine
# the slower runs measure the neighbours, not the code.
_BEST_US = re.compile(r"min ([0-9.]+) us")


def inprocess_costs(rounds: int) -> dict[str, list[float]] | None:
    """Python microseconds per proxied request from bench/hotpath_bench.py (fake transports, no
    kernel), per variant, in interleaved rounds. A plugin's added CPU is small against wrk's
    run-to-run spread on a 2-core machine; in-process, the spread is a few tenths of a us."""
    out: dict[str, list[float]] = {name: [] for name, _ in INPROCESS_VARIANTS}
    script = ROOT / "bench" / "hotpath_bench.py"
    for r in range(rounds):
        for name, flag in INPROCESS_VARIANTS:
            argv = [sys.executable, str(script), "30000", "--runs", "5", *([flag] if flag else [])]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
            except subprocess.TimeoutExpired:
                return None
            found = _BEST_US.search(done.stdout)
            if done.returncode != 0 or found is None:
                print(f"proxy_bench: hotpath_bench {flag} failed: {done.stderr[-300:]}")
                return None
            out[name].append(float(found.group(1)))
            print(f"proxy_bench: in-process round {r + 1}/{rounds} {name}: {found.group(1)} us")
    return out


def instruction_counts(notes: list[str]) -> dict[str, int] | None:
    """Instructions per proxied request of each in-process variant (bench/instructions.py):
    the one figure here that does not move with the machine's noise (under 0.1% run to run).
    Two valgrind runs at a time, one per core; installs valgrind when it is missing."""
    if shutil.which("valgrind") is None:
        print("proxy_bench: valgrind missing; running build/ensure-apt.sh valgrind", flush=True)
        done = subprocess.run([str(ROOT / "build" / "ensure-apt.sh"), "valgrind"], check=False)
        if done.returncode != 0 or shutil.which("valgrind") is None:
            notes.append("Instruction counts skipped: valgrind could not be installed.")
            return None
    script = ROOT / "bench" / "instructions.py"

    def one(flag: str) -> int | None:
        done = subprocess.run(
            [sys.executable, str(script), *([flag] if flag else [])],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        found = re.search(r": ([0-9,]+)$", done.stdout.strip())
        if done.returncode != 0 or found is None:
            print(f"proxy_bench: instructions.py {flag} failed: {done.stderr[-300:]}")
            return None
        return int(found.group(1).replace(",", ""))

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, [flag for _, flag in INPROCESS_VARIANTS]))
    if any(r is None for r in results):
        notes.append("Instruction counts skipped: bench/instructions.py failed (see its output).")
        return None
    counts = {name: r for (name, _), r in zip(INPROCESS_VARIANTS, results, strict=True)}
    print(f"proxy_bench: instructions per request: {counts}")
    return counts  # type: ignore[return-value]


def render(
    args, targets, env, commands, notes, proxy_cpu, load_cpu, inproc=None, counts=None
) -> str:
    by_key = {t.key: t for t in targets}
    out = [
        "## Proxy benchmark: Ando against nginx",
        "",
        f"Generated by `bench/proxy_bench.py` on {env['date']}, commit {env['commit']}. "
        f"{args.runs} run(s) of {args.duration} s per target, {args.connections} connections, "
        "rounds interleaved across targets; every number below is the median over the runs.",
        "",
        f"- Machine: nproc {env['nproc']}, CPU {env['cpu']}, kernel {env['kernel']}; "
        f"load average {env['load']}.",
        f"- Software: {env['nginx']} (Debian), {env['wrk']}, Python {env['python']}.",
        f"- Pinning: proxy under test on CPU {proxy_cpu}; wrk and the upstream nginx on CPU "
        f"{load_cpu} (so for `upstream`, wrk and the server share one CPU). "
        f"Upstream: nginx, 1 worker, `GET {PATH}` → 200 with a {len(BODY)}-byte body, "
        "keep-alive. nginx (both instances): 1 worker, access_log off, keepalive_requests 1000000.",
        "",
        "| target | access log | req/s | p50 | p99 | proxy CPU µs/req | runs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        name = f"{t.label} (`{t.key}`)"
        if t.runs:
            out.append(
                f"| {name} | {t.access_log} | {t.med('rps'):,.0f} | {t.med('p50_ms'):.2f} ms "
                f"| {t.med('p99_ms'):.2f} ms | {t.med('cpu_us_per_req'):.1f} | {len(t.runs)} |"
            )
        else:
            why = "skipped" if t.skipped else "failed" if t.error else "not run"
            out.append(f"| {name} | {t.access_log} | {why} | | | | 0 |")
    out += [
        "",
        "CPU µs/req is utime+stime of the proxy's processes (nginx master+worker; Ando "
        "master+workers; for `upstream`, the upstream nginx) over the requests wrk completed; "
        "the kernel's softirq time (most of the loopback network stack) is in no process's "
        "account, so it understates every target alike. `CPU busy` under Every run is how busy "
        "the proxy's CPU and the load's CPU were (softirq included): a run whose proxy CPU is "
        "well under 100% was limited by something else (the load side, or a neighbour).",
        "",
        f"### Ratio Ando / nginx, requests/s (target: ≥ {TARGET_RATIO})",
        "",
    ]
    nginx_t = by_key.get("nginx")
    ratio_lines = []
    for key in ("ando-log", "ando-nolog", "ando-lua", "ando-pyhdr", "ando-prom", "ando-chain"):
        t = by_key.get(key)
        if t is None:
            continue
        if not (t.runs and nginx_t and nginx_t.runs):
            why = "skipped; see Notes" if t.skipped else "failed; see Notes" if t.error else ""
            ratio_lines.append(f"- `{key}`: no ratio ({why or 'nginx was not measured'})")
            continue
        ratio = t.med("rps") / nginx_t.med("rps")
        nginx_rounds = {r.round: r.wrk.rps for r in nginx_t.runs}
        paired = [r.wrk.rps / nginx_rounds[r.round] for r in t.runs if r.round in nginx_rounds]
        goal = CHAIN_TARGET_RATIO if key == "ando-chain" else TARGET_RATIO
        verdict = "meets" if ratio >= goal else "misses"
        ratio_lines.append(
            f"- `{key}` (access log {t.access_log.split(' ')[0]}): **{ratio:.2f}** "
            f"({verdict} the {goal} target)"
            + (f"; per round {min(paired):.2f}–{max(paired):.2f}" if paired else "")
        )
    plain_t = by_key.get("ando-nolog")
    added_cpu = (
        ("ando-lua", "The hello_world Lua plugin's", LUA_EXTRA_CPU_TARGET),
        ("ando-pyhdr", "response-rewrite's (the same header, set by a Python plugin)", None),
        ("ando-prom", "The prometheus plugin's", PROM_EXTRA_CPU_TARGET),
        ("ando-chain", "The plugin chain's", None),
    )
    for key, label, goal in added_cpu:
        t = by_key.get(key)
        if t is None or plain_t is None or not (t.runs and plain_t.runs):
            continue
        added = t.med("cpu_us_per_req") - plain_t.med("cpu_us_per_req")
        line = (
            f"- {label} added CPU per request (`{key}` − `ando-nolog`, medians): **{added:.1f} µs**"
        )
        if goal is not None:
            line += f" ({'meets' if added < goal else 'misses'} the < {goal:.0f} µs target)"
        plain_rounds = {r.round: r.cpu_us_per_req for r in plain_t.runs}
        paired = [
            r.cpu_us_per_req - plain_rounds[r.round] for r in t.runs if r.round in plain_rounds
        ]
        if len(paired) > 1:
            line += (
                f"; per round {statistics.median(paired):.1f} median, "
                f"{min(paired):.1f} to {max(paired):.1f}"
            )
        ratio_lines.append(line)
    out += ratio_lines or ["- (no Ando target selected)"]
    goals = {"prometheus": PROM_EXTRA_CPU_TARGET, "lua": LUA_EXTRA_CPU_TARGET}
    labels = {"prometheus": "the prometheus plugin", "lua": "the hello_world Lua plugin",
              "pyhdr": "response-rewrite setting the same header",
              "chain": "the 5-plugin chain"}  # fmt: skip
    if inproc:
        plain = inproc["plain"]
        out += [
            "",
            "### Python per request, in-process (`bench/hotpath_bench.py`)",
            "",
            "The request's own Python work with fake transports (no kernel, no event loop), "
            "best of 5 runs of 30,000 requests (as timeit: slower runs measure the neighbours), "
            f"{len(plain)} interleaved rounds, the garbage collector tuned as in a worker; a "
            "plugin's added CPU is its variant's figure minus the plain one's in the same round, "
            "median over the rounds (range in brackets):",
            "",
            f"- plain proxy: **{statistics.median(plain):.2f} µs** "
            f"({min(plain):.2f}–{max(plain):.2f})",
        ]
        for name, _ in INPROCESS_VARIANTS[1:]:
            added = [v - p for v, p in zip(inproc[name], plain, strict=True)]
            line = (
                f"- {labels[name]} adds **{statistics.median(added):.2f} µs** "
                f"({min(added):.2f}–{max(added):.2f})"
            )
            if name in goals:
                verdict = "meets" if statistics.median(added) < goals[name] else "misses"
                line += f" ({verdict} the < {goals[name]:.0f} µs target)"
            out.append(line)
    if counts:
        plain_n = counts["plain"]
        # the fastest plain round: the code's own speed (a slower round measured neighbours too)
        us_per = min(inproc["plain"]) / plain_n if inproc else None
        out += [
            "",
            "### Instructions per request (`bench/instructions.py`, callgrind)",
            "",
            "The in-process request above, counted by valgrind: the same to within 0.1% from run "
            "to run, so it resolves what the timings on this machine cannot. "
            + (
                "In µs at the plain request's in-process rate (its fastest round's µs over its "
                "instructions): an estimate, as instructions are not cycles."
                if us_per
                else ""
            ),
            "",
            f"- plain proxy: **{plain_n:,}**",
        ]
        for name, _ in INPROCESS_VARIANTS[1:]:
            added = counts[name] - plain_n
            line = f"- {labels[name]}: {counts[name]:,}, **+{added:,}**"
            if us_per:
                est = added * us_per
                line += f" (≈ {est:.2f} µs"
                if name in goals:
                    line += f"; {'meets' if est < goals[name] else 'misses'} the < "
                    line += f"{goals[name]:.0f} µs target"
                line += ")"
            out.append(line)
    out += [
        "",
        "### Memory (RSS)",
        "",
        "| target | worker idle | worker after load (max) | all idle | all after load (max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in targets:
        if t.runs:
            out.append(
                f"| `{t.key}` | {_kb(t.rss_idle_kb)} | {_kb(max(r.rss_end_kb for r in t.runs))} "
                f"| {_kb(t.rss_idle_total_kb)} | {_kb(max(r.rss_end_total_kb for r in t.runs))} |"
            )
    out += [
        "",
        "### Every run",
        "",
        "| target | round | req/s | requests | p50 | p99 | CPU µs/req | socket errors "
        "| CPU busy (proxy/load) | other CPU | other load generators |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        for r in t.runs:
            w = r.wrk
            out.append(
                f"| `{t.key}` | {r.round} | {w.rps:,.0f} | {w.requests:,} | {w.p50_ms:.2f} ms "
                f"| {w.p99_ms:.2f} ms | {r.cpu_us_per_req:.1f} | {w.socket_errors} "
                f"| {_busy(r)} | {r.other_cpu_pct:.0f}% | {r.other_load_generators} |"
            )
    problems = [f"- `{t.key}` skipped: {t.skipped}" for t in targets if t.skipped]
    problems += [f"- `{t.key}` FAILED: {t.error}" for t in targets if t.error]
    if problems or notes:
        out += ["", "### Notes", ""]
        for line in [f"- {n}" for n in notes] + problems:
            first, *rest = line.splitlines()
            out.append(first)
            if rest:
                out += ["", "  ```", *("  " + r for r in rest[:15]), "  ```"]
    out += [
        "",
        "### Commands",
        "",
        f"`{shlex.join(['python', 'bench/proxy_bench.py', *sys.argv[1:]])}`; temp dir shown as "
        "`$TMP`, ports as picked for this run.",
        "",
    ]
    for what, text in commands:
        out += [f"{what}:", "", "```", text, "```", ""]
    return "\n".join(out).rstrip()


def write_report(path: Path, section: str) -> None:
    block = f"{START}\n{section}\n{END}"
    old = path.read_text() if path.exists() else ""
    if START in old and END in old and old.index(START) < old.index(END):
        new = old[: old.index(START)] + block + old[old.index(END) + len(END) :]
    elif old:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    else:
        new = (
            "# Ando benchmarks\n\n"
            "Notes written by hand go outside the generated section; `make bench` keeps them.\n\n"
            + block
            + "\n"
        )
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
