#!/usr/bin/env bash
# Build the aarch64 single-file binary, dist/ando-VERSION-linux-aarch64, on an x86_64 Debian host,
# under user-mode emulation (qemu-user-static + binfmt_misc), then smoke-test it the same way.
# `make binary-arm64` runs it. Takes minutes the first time (an arm64 Debian root is made with
# debootstrap); later runs reuse the root and the wheels. Not part of `make test`. See docs/arm64.md.
#
#   edge/build-arm64.sh            build + smoke test (version, validate good/bad, run + 1 request)
#   edge/build-arm64.sh --e2e      also run tests/e2e against the binary (through binfmt + qemu)
#   edge/build-arm64.sh --no-smoke build only
#
# How the emulation works: the kernel's binfmt_misc hands every aarch64 ELF it is asked to exec to
# qemu-aarch64-static (registered by binfmt-support with the F flag, so the interpreter is opened
# at registration and works inside a chroot too). That makes `chroot ROOT ...` run the arm64
# Debian's own python3, pip and PyInstaller as if on an arm64 machine, child processes included
# (PyInstaller spawns its own isolated interpreters; dpkg spawns maintainer scripts), which
# calling `qemu-aarch64-static -L ROOT prog` by hand cannot do: qemu-user does not follow execve.
# binfmt_misc must therefore be mounted and qemu-aarch64 enabled; the script does both and stops
# with a clear message if the kernel or the sandbox refuses.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

WORK=$(realpath -m "${ANDO_ARM64_WORK:-$REPO/build/tmp/arm64}")  # git-ignored; `make clean`
ROOT=$WORK/root                                    # the arm64 Debian bookworm root
WHEELS=$WORK/wheels                                # aarch64 wheels, downloaded on the host
MIRROR=${ANDO_ARM64_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm                                     # its python3 is 3.11, as the wheels' tag says
HOST_PY=${HOST_PY:-$REPO/.venv/bin/python}         # the project venv (make's $(STAMP) rule)
# python3-venv: a venv in the root for the wheels; libpython3.11: PyInstaller bundles the shared
# libpython (Debian's python3 binary is linked statically); binutils: `strip` (the spec strips).
ROOT_PACKAGES=python3,python3-venv,libpython3.11,binutils
VENV_IN_ROOT=/opt/ando-build                       # inside the root

E2E=0
SMOKE=1
for arg in "$@"; do
    case $arg in
        --e2e) E2E=1 ;;
        --no-smoke) SMOKE=0 ;;
        *) echo "usage: $0 [--e2e] [--no-smoke]" >&2; exit 2 ;;
    esac
done

step_start=0
step() { step_start=$(date +%s); echo "== arm64: $*"; }
done_step() { echo "   ($(($(date +%s) - step_start)) s)"; }
die() { echo "arm64: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "this script builds on an x86_64 host (this is $(uname -m))"
if [ "$(id -u)" -ne 0 ]; then
    # debootstrap, chroot and binfmt_misc need root.
    command -v sudo >/dev/null || die "run as root: debootstrap, chroot and binfmt_misc need it"
    exec sudo --preserve-env=ANDO_ARM64_WORK,ANDO_ARM64_MIRROR,HOST_PY "$0" "$@"
fi
[ -x "$HOST_PY" ] || die "$HOST_PY is missing: run through \`make binary-arm64\` (it makes the venv)"

# ---------------------------------------------------------------------------------------------
step "host packages (qemu-user-static, binfmt-support, debootstrap)"
build/ensure-apt.sh qemu-user-static binfmt-support debootstrap
done_step

# ---------------------------------------------------------------------------------------------
step "binfmt_misc: aarch64 executables run through qemu-aarch64-static"
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without that privilege?): see docs/arm64.md"
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    update-binfmts --enable qemu-aarch64 || true
fi
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered in binfmt_misc (update-binfmts --enable qemu-aarch64)"
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || echo "   note: no F flag; copying qemu-aarch64-static into the root covers chroot use"
done_step

# Mounts made for the chroot: /proc only (Python and qemu read /proc/self). Never /dev or any
# bind mount, so an interrupted run cannot leave a path under build/tmp that `rm -rf` would follow
# onto the host. Always unmounted on exit.
unmount_root() {
    # Every mount below the root, deepest first: ours (/proc), and whatever a killed debootstrap
    # second stage left (/proc, /sys, /dev/pts, a bind-mounted /dev in a container).
    local m
    for m in $(awk -v r="$ROOT/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" || true
    done
}
trap unmount_root EXIT
in_root() {
    # in_root SECONDS COMMAND...: COMMAND in the root, bounded. A clean environment: nothing of
    # the host's venv, pyenv or locale leaks into the arm64 side.
    local secs=$1
    shift
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    timeout "$secs" chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONDONTWRITEBYTECODE=1 "$@"
}

# ---------------------------------------------------------------------------------------------
# The root: debootstrap --foreign unpacks the arm64 packages with host tools, then the second
# stage configures them inside the root, every arm64 program in it running under qemu. The
# stamp records what the root was made with; a different package list makes a new root.
ROOT_STAMP="$ROOT/.ando-root"
root_id="$SUITE $ROOT_PACKAGES"
if [ "$(cat "$ROOT_STAMP" 2>/dev/null)" != "$root_id" ]; then
    step "arm64 Debian $SUITE root in $ROOT (debootstrap, two stages)"
    unmount_root
    # --one-file-system: never descend into anything still mounted below it.
    rm -rf --one-file-system "$ROOT"
    mkdir -p "$WORK"
    timeout 900 debootstrap --arch=arm64 --foreign --variant=minbase \
        --include="$ROOT_PACKAGES" "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap (first stage) failed"; }
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
    timeout 1800 chroot "$ROOT" /debootstrap/debootstrap --second-stage >> "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap --second-stage failed (under qemu)"; }
    echo "$root_id" > "$ROOT_STAMP"
    done_step
else
    echo "== arm64: reusing the root in $ROOT"
fi
[ "$(in_root 120 /usr/bin/python3 -c 'import platform; print(platform.machine())')" = aarch64 ] \
    || die "the root's python3 does not run as aarch64"

# ---------------------------------------------------------------------------------------------
# Wheels: Ando's runtime dependencies (pyproject [project.dependencies]) and PyInstaller (the
# `build` extra), for CPython 3.11 on aarch64 glibc, binary wheels only (nothing compiles under
# emulation). Versions are held to those of the host venv when it has them, so the aarch64 binary
# carries what the x86_64 one does.
"$HOST_PY" - > "$WORK/requirements.txt" <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = list(project["dependencies"])
wanted += [d for d in project["optional-dependencies"]["build"] if d.lower().startswith("pyinstaller")]
print("\n".join(wanted))
EOF
"$HOST_PY" -m pip freeze --exclude-editable > "$WORK/constraints.txt"
wheels_id=$( (echo closure-2; cat "$WORK/requirements.txt" "$WORK/constraints.txt") | sha256sum | cut -c1-16)
# pip download evaluates environment markers with the host's interpreter, not the target's:
# redis needs async-timeout on `python_full_version < "3.11.3"` (Debian's is 3.11.2) and the host's
# 3.11.7 would skip it. So the root's python3 states its own marker environment, and the wheels'
# Requires-Dist are closed over against it (a few rounds at most), fetching what is missing.
pip_download() {
    timeout 600 "$HOST_PY" -m pip download -q --disable-pip-version-check --dest "$WHEELS" \
        --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
        --platform manylinux_2_34_aarch64 -c "$WORK/constraints.txt" "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if [ "$(cat "$WHEELS/.ando-wheels" 2>/dev/null)" != "$wheels_id" ]; then
    step "aarch64 wheels into $WHEELS (pip download --platform, on the host)"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    pip_download -r "$WORK/requirements.txt"
    in_root 120 /usr/bin/python3 -c '
import json, os, platform, sys
print(json.dumps({
    "implementation_name": sys.implementation.name, "implementation_version": platform.python_version(),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": "",
    "platform_system": platform.system(), "platform_version": "", "platform_python_implementation":
    platform.python_implementation(), "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform}))
' > "$WORK/markers.json"
    cp "$WORK/requirements.txt" "$WHEELS/requirements.txt"
    for _round in 1 2 3 4 5; do
        missing=$("$HOST_PY" - "$WHEELS" "$WORK/markers.json" <<'EOF'
import json, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # a venv without packaging: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
wheels, env = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
missing = set()
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                    if canonicalize_name(req.name) not in have:
                        missing.add(str(req).split(";")[0].strip())
print("\n".join(sorted(missing)))
EOF
)
        [ -z "$missing" ] && break
        echo "   for the target's markers: $(echo $missing)"
        echo "$missing" >> "$WHEELS/requirements.txt"
        # shellcheck disable=SC2086
        pip_download $missing
    done
    echo "$wheels_id" > "$WHEELS/.ando-wheels"
    done_step
else
    echo "== arm64: reusing the wheels in $WHEELS"
fi

# ---------------------------------------------------------------------------------------------
VENV_STAMP="$ROOT$VENV_IN_ROOT/.ando-wheels"
if [ "$(cat "$VENV_STAMP" 2>/dev/null)" != "$wheels_id" ]; then
    step "venv in the root ($VENV_IN_ROOT), wheels installed offline under qemu"
    rm -rf "$ROOT/wheels" "$ROOT$VENV_IN_ROOT"
    cp -a "$WHEELS" "$ROOT/wheels"
    in_root 600 /usr/bin/python3 -m venv "$VENV_IN_ROOT"
    in_root 1800 "$VENV_IN_ROOT/bin/pip" install -q --disable-pip-version-check \
        --no-index --find-links /wheels -r /wheels/requirements.txt
    echo "$wheels_id" > "$VENV_STAMP"
    done_step
else
    echo "== arm64: reusing the venv in the root"
fi

# ---------------------------------------------------------------------------------------------
# PyInstaller runs in the root on a fresh copy of the sources the spec needs (it takes `ando`
# from the source tree: pathex in edge/ando.spec), so the build sees exactly this checkout.
[ -f edge/ando.spec ] || die "edge/ando.spec is missing (the PyInstaller spec \`make binary\` uses)"
step "PyInstaller in the root (edge/ando.spec, aarch64)"
rm -rf "$ROOT/src"
mkdir -p "$ROOT/src"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -cf - ando schemas lua edge pyproject.toml \
    | tar -C "$ROOT/src" -xf -
in_root 3600 /bin/sh -c "cd /src && $VENV_IN_ROOT/bin/pyinstaller --noconfirm --clean \
    --log-level WARN --distpath /src/dist --workpath /src/build edge/ando.spec" \
    > "$WORK/pyinstaller.log" 2>&1 || { tail -30 "$WORK/pyinstaller.log"; die "PyInstaller failed"; }
built=$(find "$ROOT/src/dist" -maxdepth 1 -type f -name 'ando-*-linux-aarch64' | head -1)
[ -n "$built" ] || die "PyInstaller made no dist/ando-*-linux-aarch64 (see $WORK/pyinstaller.log)"
mkdir -p dist
cp "$built" dist/
BINARY=$REPO/dist/$(basename "$built")
done_step

# ---------------------------------------------------------------------------------------------
# Running the binary from the host: binfmt_misc starts it under qemu; QEMU_LD_PREFIX makes qemu
# find the arm64 loader and libc (/lib/ld-linux-aarch64.so.1 ...) in the root. The wrapper is what
# ANDO_BINARY names for tests/e2e. The bootloader re-executes itself after unpacking: that exec
# goes through binfmt again and inherits QEMU_LD_PREFIX.
WRAPPER=$WORK/ando-aarch64
cat > "$WRAPPER" <<EOF
#!/bin/sh
# Runs $BINARY under qemu-user (binfmt_misc), with the arm64 libc from $ROOT.
QEMU_LD_PREFIX=$ROOT exec $BINARY "\$@"
EOF
chmod +x "$WRAPPER"

if [ "$SMOKE" = 1 ]; then
    step "smoke test under emulation"
    timeout 600 "$HOST_PY" - "$WRAPPER" <<'EOF'
"""Smoke test of the aarch64 binary: version, validate (good and broken file), run + 1 request."""
import json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ando = sys.argv[1]
tmp = Path(tempfile.mkdtemp(prefix="ando-arm64-smoke-"))
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
def run(*args, timeout=120):
    p = subprocess.run([ando, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp)
    return p.returncode, p.stdout + p.stderr
def check(what, ok, detail=""):
    print(f"   {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail.strip()[:300]}" if not ok else ""))
    if not ok:
        sys.exit(1)

t = time.monotonic(); rc, out = run("version")
check(f"ando version -> {out.strip()} ({time.monotonic() - t:.1f} s)", rc == 0 and out.strip(), out)
rc, out = run("validate", str(Path("config/ando.yaml").resolve()))
check("ando validate config/ando.yaml -> exit 0", rc == 0, out)
bad = tmp / "bad.yaml"
bad.write_text("routes:\n  - id: r1\n    uri: /x\n    upstream:\n      type: roundrobin\n"
               "      nodes: {'127.0.0.1:1980': 1}\n    plugins:\n      key-auth: {nope: 1}\n")
rc, out = run("validate", str(bad))
check("ando validate broken file -> exit 1 with bad.yaml:LINE:COL", rc == 1 and "bad.yaml:8:" in out, out)

port, status = free_port(), free_port()
cfg = tmp / "ando.yaml"
cfg.write_text(json.dumps({
    "ando": {"listen": [f"127.0.0.1:{port}"], "workers": 1,
             "observability": {"status": {"listen": f"127.0.0.1:{status}"}}},
    "routes": [{"id": "hello", "uri": "/hello", "plugins": {"mocking": {
        "response_status": 200, "content_type": "application/json",
        "response_example": '{"message": "hello from aarch64"}', "with_mock_header": False}}}],
}))
t0 = time.monotonic()
proc = subprocess.Popen([ando, "run", "-c", str(cfg)], cwd=tmp, stdout=subprocess.DEVNULL,
                        stderr=open(tmp / "run.err", "wb"), start_new_session=True)
body, deadline = None, time.monotonic() + 180
try:
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as r:
                body = r.status, json.loads(r.read())
                break
        except OSError:
            time.sleep(0.2)
    first = time.monotonic() - t0
    check(f"ando run served GET /hello -> {body} (first response after {first:.1f} s)",
          body == (200, {"message": "hello from aarch64"}), (tmp / "run.err").read_text())
finally:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(10)
check(f"SIGTERM -> exit {rc}", rc == 0, (tmp / "run.err").read_text())
EOF
    done_step
fi

if [ "$E2E" = 1 ]; then
    step "tests/e2e against the aarch64 binary (ANDO_BINARY=$WRAPPER)"
    # ANDO_BINARY_MACHINE: the machine `ando version` must name (the binary's, not this host's).
    ANDO_BINARY=$WRAPPER ANDO_BINARY_MACHINE=aarch64 timeout 1800 "$HOST_PY" -m pytest -q -p no:cacheprovider tests/e2e
    done_step
fi

echo "== arm64: built $BINARY ($(du -h "$BINARY" | cut -f1))"
echo "   run it here with: $WRAPPER version   (qemu via binfmt_misc, arm64 libc from the root)"
