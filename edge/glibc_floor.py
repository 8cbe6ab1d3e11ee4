"""The oldest glibc a PyInstaller single-file `ando` runs on, and what the file holds.

    .venv/bin/python edge/glibc_floor.py dist/ando-VERSION-linux-ARCH [--contents]

The bootloader (the ELF part of the file) and every shared object in its archive (libpython,
extension modules, the libraries PyInstaller copied beside them) each name the glibc symbol
versions they need (`objdump -p`, "Version References"). glibc itself is never bundled, so the
highest of those versions is the floor: an older glibc refuses to load the file, or one of its
modules the first time it is imported. Needs PyInstaller (the build venv) and objdump (binutils).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from PyInstaller.archive.readers import CArchiveReader

_VERSION = re.compile(r"\bGLIBC_(\d+)\.(\d+)(?:\.(\d+))?\b")


def needed_glibc(path: Path) -> tuple[int, ...] | None:
    """The highest GLIBC_x.y version `path` requires, or None when it requires none."""
    out = subprocess.run(
        ["objdump", "-p", str(path)], capture_output=True, text=True, check=True
    ).stdout
    refs = out.partition("Version References:")[2]
    found = [tuple(int(p) for p in m.groups() if p is not None) for m in _VERSION.finditer(refs)]
    return max(found) if found else None


def _name(version: tuple[int, ...] | None) -> str:
    return "GLIBC_" + ".".join(map(str, version)) if version else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", type=Path)
    parser.add_argument("--contents", action="store_true", help="also list sizes by part")
    args = parser.parse_args(argv)
    archive = CArchiveReader(str(args.binary))
    per_file: dict[str, tuple[int, ...] | None] = {"(bootloader)": needed_glibc(args.binary)}
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # part -> [packed, unpacked]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, packed, unpacked, _, kind) in sorted(archive.toc.items()):
            part = name.split("/")[0] if "/" in name else name
            if kind == "z":
                part = "PYZ (Python modules, compiled)"
            elif kind == "b" and "/" not in name:
                part = "shared libraries (top level)"
            sizes[part][0] += packed
            sizes[part][1] += unpacked
            if kind != "b":
                continue
            target = Path(tmp) / "lib"
            target.write_bytes(archive.extract(name))
            per_file[name] = needed_glibc(target)
    floor = max((v for v in per_file.values() if v), default=None)
    print(f"{args.binary}: needs glibc >= {_name(floor).removeprefix('GLIBC_')}")
    for name, version in sorted(per_file.items(), key=lambda kv: kv[1] or (), reverse=True):
        if version == floor:
            print(f"  {_name(version)}  {name}")
    if args.contents:
        print("\ncontents (packed / unpacked bytes):")
        for part, (packed, unpacked) in sorted(sizes.items(), key=lambda kv: -kv[1][0]):
            print(f"  {packed:>10,} {unpacked:>11,}  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
