"""Time `ando validate` on a generated 10,000-route file (target: under 2 s on the dev machine).

Run with `make bench-validate`. Reports the median and spread of several whole-command runs
(process start, imports, parse, schema, references, Snapshot), since that is what CI pays.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(routes: int) -> str:
    out = ["ando:", "  workers: 2", "upstreams:"]
    for u in range(50):
        out += [
            f"  - id: up{u}",
            "    type: roundrobin",
            "    nodes:",
            f'      "10.0.{u}.1:8080": 1',
            f'      "10.0.{u}.2:8080": 2',
            "    timeout: {connect: 2, send: 10, read: 10}",
        ]
    out.append("routes:")
    for i in range(routes):
        out += [f"  - id: r{i}", f"    uri: /api/v{i % 7}/svc{i}/*", "    methods: [GET, POST]"]
        if i % 3 == 0:
            out += [f"    host: h{i % 100}.example.com"]
        if i % 5 == 0:
            out += [
                "    vars:",
                f'      - ["arg_tenant", "==", "t{i}"]',
                '      - ["http_x_env", "~~", "^(prod|stage)$"]',
            ]
        if i % 2 == 0:
            out += [f"    upstream_id: up{i % 50}"]
        else:
            out += [
                "    upstream:",
                "      type: chash",
                "      hash_on: header",
                "      key: X-User",
                "      nodes:",
                f"        - {{host: 10.1.{i % 250}.{i % 200 + 1}, port: 8080, weight: 1}}",
            ]
    out.append("#END")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routes.yaml"
        path.write_text(generate(args.routes))
        size = path.stat().st_size
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "ando", "validate", str(path)],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - t0)
            if r.returncode != 0:
                print(r.stdout[:2000], r.stderr[:2000], file=sys.stderr)
                return 1
        print(r.stdout.strip())
        print(
            f"ando validate, {args.routes} routes ({size / 1e6:.1f} MB): "
            f"median {statistics.median(times):.2f} s, "
            f"min {min(times):.2f} s, max {max(times):.2f} s over {args.runs} runs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
