"""CPU instructions per proxied request, counted by valgrind: the same from run to run.

`python bench/instructions.py [--chain | --lua | --pyhdr | --prometheus | --access-log]` runs
bench/hotpath_bench.py under `valgrind --tool=callgrind` twice, with SMALL and LARGE requests,
and divides the difference in instructions by LARGE - SMALL, so start-up and warm-up cancel out.
On this noisy 2-core machine timings of the same build swing by 30%; this count moves by under
0.1%, so it can tell a 1% change apart. It counts instructions, not cycles (cache misses are
free here): confirm a large change under load with `make bench`. Bytecode counts
(`hotpath_bench.py --opcodes`) show where the steps are but not what a C call costs; decide
with this. Needs valgrind (`apt-get install valgrind`); takes about a minute per variant.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 1000, 4000


def instructions(requests: int, flags: list[str]) -> int:
    """Total instructions of one hotpath_bench run of `requests` requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE / "hotpath_bench.py"),
                str(requests),
                "--runs",
                "1",
                *flags,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
        )
        found = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
        if found is None:
            raise SystemExit(f"no totals line in {out}")
        return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    variant = parser.add_mutually_exclusive_group()
    for flag in ("--chain", "--lua", "--pyhdr", "--prometheus", "--access-log"):
        variant.add_argument(flag, action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    names = ("chain", "lua", "pyhdr", "prometheus", "access_log")
    flags = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name)]
    per_request = (instructions(LARGE, flags) - instructions(SMALL, flags)) / (LARGE - SMALL)
    print(f"instructions per proxied request{' ' + flags[0] if flags else ''}: {per_request:,.0f}")


if __name__ == "__main__":
    main()
