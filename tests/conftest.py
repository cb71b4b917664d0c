"""Test session setup: 8 fake CPU devices (before JAX initialises) and shared fixtures."""

import os

import jax

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
SHARED_DATA = os.environ.get("OPTICAL_JAX_SHARED_DATA", os.path.join(SHARED, "data"))


@pytest.fixture(scope="session")
def shared_data():
  if not os.path.isdir(SHARED_DATA):
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA


def _asset_or_skip(name):
  from optical_jax import assets
  if not assets.is_complete(name):
    pytest.skip(f"asset {name} not fetched (python -m optical_jax.assets fetch)")
  return assets.asset_dir(name)


@pytest.fixture(scope="session")
def minilm_dir():
  return _asset_or_skip("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def e5_dir():
  _asset_or_skip("multilingual-e5-small-tokenizer")
  return _asset_or_skip("multilingual-e5-small")


# --- Skips that mean something (issue 26) ---------------------------------------------
# A skip is allowed only when its reason holds a line of tests/allowed_skips.txt. Under CI
# (CI=true) or OPTICAL_JAX_STRICT_SKIPS=1 any other skip fails the run; elsewhere it is
# listed as a warning at the end.

_ALLOWED_FILE = os.path.join(os.path.dirname(__file__), "allowed_skips.txt")
_SKIPS = []


def _allowed_reasons():
  with open(_ALLOWED_FILE, encoding="utf-8") as f:
    return [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]


def _strict_skips() -> bool:
  return (os.environ.get("CI", "").lower() == "true"
          or os.environ.get("OPTICAL_JAX_STRICT_SKIPS", "") == "1")


def pytest_runtest_logreport(report):
  if report.skipped and not hasattr(report, "wasxfail"):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _unexpected_skips():
  allowed = _allowed_reasons()
  return [(n, r) for n, r in _SKIPS if not any(a in r for a in allowed)]


def pytest_sessionfinish(session, exitstatus):
  if _strict_skips() and _unexpected_skips() and exitstatus == 0:
    session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
  bad = _unexpected_skips()
  for nodeid, reason in _SKIPS:
    if (nodeid, reason) not in bad:
      terminalreporter.write_line(f"allowed skip: {nodeid}: {reason}")
  for nodeid, reason in bad:
    terminalreporter.write_line(
        f"{'error' if _strict_skips() else 'warning'}: skip not in tests/allowed_skips.txt: "
        f"{nodeid}: {reason}")
