"""The on-disk array caches' integrity contract (optical_jax.array_cache): atomic entries
with checksummed manifests; a damaged, half-written or foreign entry is named, moved aside
and recomputed; leftovers of killed writers are cleaned."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from optical_jax import array_cache


def _arrays():
  rng = np.random.default_rng(0)
  return {"flat": rng.normal(size=(50, 8)).astype(np.float16),
          "offsets": np.array([0, 20, 50], np.int64)}


def _compute(calls):
  def make():
    calls.append(1)
    return _arrays()
  return make


def _entry(root):
  return array_cache.entry_dir(str(root), "emb", "k1")


def test_store_then_load_verifies_and_reuses(tmp_path):
  calls = []
  first, hit = array_cache.cached(str(tmp_path), "emb", "k1", _compute(calls), meta={"rows": 2})
  assert not hit and calls == [1]
  again, hit = array_cache.cached(str(tmp_path), "emb", "k1", _compute(calls), mmap=True)
  assert hit and calls == [1]
  for name, value in _arrays().items():
    np.testing.assert_array_equal(again[name], value)
  assert isinstance(again["flat"], np.memmap)
  manifest = json.loads(open(os.path.join(_entry(tmp_path), "manifest.json")).read())
  assert manifest["meta"] == {"rows": 2} and manifest["arrays"]["flat"]["shape"] == [50, 8]
  assert len(manifest["arrays"]["flat"]["sha256"]) == 64
  assert array_cache.cached(None, "emb", "k1", _compute(calls))[1] is False and calls == [1, 1]


def _damage(path, how):
  npy = os.path.join(path, "0.npy")
  if how == "same-shape garbage":   # finite values, same shape and dtype: only the checksum sees it
    a = np.load(npy)
    np.save(npy, np.full_like(a, 0.5))
  elif how == "shorter array":
    np.save(npy, np.load(npy)[:30])
  elif how == "truncated file":
    with open(npy, "r+b") as f:
      f.truncate(os.path.getsize(npy) // 2)
  elif how == "missing file":
    os.remove(npy)
  elif how == "half entry":
    os.remove(os.path.join(path, "manifest.json"))
  elif how == "manifest of another entry":
    m = json.loads(open(os.path.join(path, "manifest.json")).read())
    m["key"] = "other"
    with open(os.path.join(path, "manifest.json"), "w") as f:
      json.dump(m, f)


@pytest.mark.parametrize("how,problem", [
    ("same-shape garbage", "checksum mismatch"),
    ("shorter array", "bytes, the manifest says"),
    ("truncated file", "bytes, the manifest says"),
    ("missing file", "is missing"),
    ("half entry", "no readable manifest"),
    ("manifest of another entry", "names another entry"),
])
def test_a_damaged_entry_is_named_moved_aside_and_recomputed(tmp_path, how, problem):
  calls, seen = [], []
  array_cache.cached(str(tmp_path), "emb", "k1", _compute(calls))
  _damage(_entry(tmp_path), how)
  arrays, hit = array_cache.cached(str(tmp_path), "emb", "k1", _compute(calls), report=seen.append)
  assert not hit and calls == [1, 1]
  assert len(seen) == 1 and problem in seen[0] and _entry(tmp_path) in seen[0]
  assert "recomputing" in seen[0] and "\n" not in seen[0]
  np.testing.assert_array_equal(arrays["flat"], _arrays()["flat"])
  assert len(os.listdir(tmp_path / array_cache.BROKEN)) == 1
  # The recomputed entry is whole again and verifies.
  assert array_cache.cached(str(tmp_path), "emb", "k1", _compute(calls))[1] and calls == [1, 1]


def test_a_damaged_entry_without_a_report_is_a_warning(tmp_path):
  array_cache.cached(str(tmp_path), "emb", "k1", _compute([]))
  _damage(_entry(tmp_path), "same-shape garbage")
  with pytest.warns(array_cache.CacheWarning, match="checksum mismatch"):
    array_cache.cached(str(tmp_path), "emb", "k1", _compute([]))


def test_leftovers_of_killed_writers_are_cleaned(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  host = socket.gethostname()
  left = tmp_path / f".emb-k0.tmp.{host}.{dead}.1"
  left.mkdir()
  (left / "0.npy").write_bytes(b"half")
  alive = tmp_path / f".emb-k0.tmp.{host}.{os.getpid()}.2"   # a live writer's: kept
  alive.mkdir()
  array_cache.store(str(tmp_path), "emb", "k1", _arrays())
  assert not left.exists() and alive.exists()
  assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "emb-k1"])


def test_a_writer_that_loses_the_race_keeps_the_published_entry(tmp_path):
  path = array_cache.store(str(tmp_path), "emb", "k1", _arrays())
  before = open(os.path.join(path, "manifest.json")).read()
  assert array_cache.store(str(tmp_path), "emb", "k1", _arrays()) == path
  assert open(os.path.join(path, "manifest.json")).read() == before
  assert sorted(os.listdir(tmp_path)) == ["emb-k1"]
