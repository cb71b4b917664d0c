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
