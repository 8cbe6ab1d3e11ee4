#!/usr/bin/env bash
# Create the project's virtualenv if it is missing. On a fresh Debian the venv module may be absent
# (python3-venv is a separate package), so install it first when we can.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
[ -x "$venv/bin/python" ] && exit 0
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    build/ensure-apt.sh python3-venv
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
