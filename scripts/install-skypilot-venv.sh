#!/usr/bin/env bash
# Installs the gateway with its SkyPilot extra into .venv-sky, as a user would:
#
#   pip install -e '.[skypilot,test]'
#
# A venv of its own because SkyPilot pins uvicorn<0.36 and click<8.2, older than
# what .venv resolves to. The tests that run SkyPilot's SDK and its local API
# server, and the gateway with discovery on, run this venv's python; nothing in
# .venv imports `sky`. The test extra brings coverage, whose .pth file lets the
# tests measure the processes started here too.
#
# Idempotent: skipped while the stamp holds the hash of the current pyproject.toml.
# PYTHON picks the interpreter (the Makefile's, python3 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-sky
STAMP="$VENV/.installed-sky"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  exit 0
fi

started=$SECONDS
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# No pins of ours: pip resolves the extra as it would for a user.
"$VENV/bin/pip" install -q -e '.[skypilot,test]'
"$VENV/bin/pip" check
echo "$wanted" >"$STAMP"
echo "$VENV: installed in $((SECONDS - started)) s" \
  "(uvicorn $("$VENV/bin/python" -c 'import uvicorn; print(uvicorn.__version__)'))"
