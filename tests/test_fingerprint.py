"""Tests for optical_jax.fingerprint: stable, boundary-aware hashes of texts, rows, files, configs, params, models."""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import pytest

from optical_jax import fingerprint, models


def test_texts_is_stable_and_boundary_and_order_sensitive():
  # Pinned: token caches and data-iterator states in checkpoints are keyed by this value.
  # The byte stream: the count, then each string's UTF-8 length (8 bytes LE) and bytes.
  one = (1).to_bytes(8, "little")
  assert fingerprint.texts(["a", "b"], n=None) == hashlib.sha256(b"2" + one + b"a" + one + b"b").hexdigest()
  assert fingerprint.texts(["a", "b"]) == fingerprint.texts(["a", "b"], n=None)[:16]
  assert fingerprint.texts(["ab", "c"]) != fingerprint.texts(["a", "bc"])
  assert fingerprint.texts(["a", "b"]) != fingerprint.texts(["b", "a"])
  assert fingerprint.texts([]) != fingerprint.texts([""])
  assert fingerprint.texts(["x\ud800"])  # a lone surrogate is hashed, not an error
  assert len(fingerprint.texts(["a"], n=None)) == 64 and len(fingerprint.texts(["a"], n=24)) == 24


def test_rows_keeps_field_and_row_boundaries():
  assert fingerprint.rows([("a", "b")]) == hashlib.sha256(b"a\x1fb\x1f\x1e").hexdigest()[:16]
  assert fingerprint.rows([("ab", "c")]) != fingerprint.rows([("a", "bc")])
  assert fingerprint.rows([("a",), ("b",)]) != fingerprint.rows([("a", "b")])
  assert fingerprint.rows(iter([("a", "b")])) == fingerprint.rows([["a", "b"]])


def test_file_hash_follows_content(tmp_path):
  p = tmp_path / "w.bin"
  p.write_bytes(b"hello")
  assert fingerprint.file(p, n=None) == hashlib.sha256(b"hello").hexdigest()
  assert fingerprint.file(str(p)) == hashlib.sha256(b"hello").hexdigest()[:16]
  big = tmp_path / "big.bin"
  data = bytes(range(256)) * 10000  # several read blocks
  big.write_bytes(data)
  assert fingerprint.file(big, n=None) == hashlib.sha256(data).hexdigest()
  p.write_bytes(b"hellO")
  assert fingerprint.file(p, n=None) == hashlib.sha256(b"hellO").hexdigest()


def test_digest_is_canonical_json():
  assert fingerprint.digest({"a": 1, "b": [1, 2]}) == hashlib.sha256(
      b'{"a": 1, "b": [1, 2]}').hexdigest()[:16]
  assert fingerprint.digest({"b": (1, 2), "a": 1}) == fingerprint.digest({"a": 1, "b": [1, 2]})
  assert fingerprint.digest({"x": np.int64(3), "y": np.float32(0.5)}) == fingerprint.digest({"x": 3, "y": 0.5})
  assert fingerprint.digest({"s": {3, 1, 2}}) == fingerprint.digest({"s": [1, 2, 3]})
  assert fingerprint.digest({"p": pathlib.Path("/a/b")}) == fingerprint.digest({"p": "/a/b"})
  assert fingerprint.digest({"a": np.arange(3)}) == fingerprint.digest({"a": [0, 1, 2]})
  assert fingerprint.digest({"a": 1}) != fingerprint.digest({"a": 2})
  assert len(fingerprint.digest({}, n=24)) == 24 and len(fingerprint.digest({}, n=None)) == 64
  assert fingerprint.canonical_json({"é": (1,)}) == '{"\\u00e9": [1]}'
  with pytest.raises(ValueError, match="object is not JSON-serialisable"):
    fingerprint.digest({"f": object()})


def test_params_changes_with_values_shapes_and_paths():
  tree = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.ones(4, np.float32)}}
  same = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.ones(4, np.float32)}}
  assert fingerprint.params(tree) == fingerprint.params(same)
  changed = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.array([1, 1, 1, 2], np.float32)}}
  assert fingerprint.params(changed) != fingerprint.params(tree)
  reshaped = {"a": np.zeros((3, 2), np.float32), "b": {"c": np.ones(4, np.float32)}}
  assert fingerprint.params(reshaped) != fingerprint.params(tree)
  renamed = {"a": np.zeros((2, 3), np.float32), "b": {"d": np.ones(4, np.float32)}}
  assert fingerprint.params(renamed) != fingerprint.params(tree)
  assert fingerprint.params({"a": np.zeros(2, np.float32)}) != fingerprint.params({"a": np.zeros(2, np.float64)})


def _model_dir(tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  (d / "model.safetensors").write_bytes(b"weights")
  (d / "config.json").write_text("{}", encoding="utf-8")
  (d / "notes.md").write_text("ignored", encoding="utf-8")
  tok = tmp_path / "tok" / "tokenizer.json"
  tok.parent.mkdir()
  tok.write_text("{}", encoding="utf-8")
  return d, tok


def _spec(d, tok, **over):
  spec = {"weights": "hf", "path": str(d), "tokenizer": str(tok), "query_prefix": "q: ",
          "doc_prefix": "p: ", "query_max_len": 32, "doc_max_len": 128, "pooling": "mean"}
  spec.update(over)
  return spec


def test_files_stat_names_size_and_mtime_ns(tmp_path):
  d, tok = _model_dir(tmp_path)
  os.utime(d / "model.safetensors", ns=(1, 1_500_000_123))
  os.utime(d / "config.json", ns=(1, 7))
  assert fingerprint.files_stat(d) == ["config.json:2:7", "model.safetensors:7:1500000123"]
  assert fingerprint.files_stat(tok) == [f"tokenizer.json:2:{os.stat(tok).st_mtime_ns}"]
  assert fingerprint.files_stat(d, (".json",)) == ["config.json:2:7"]
  assert fingerprint.files_stat("") == [] and fingerprint.files_stat(tmp_path / "nope") == []


def test_model_fingerprint_follows_files_and_sub_second_mtime(tmp_path):
  d, tok = _model_dir(tmp_path)
  w = d / "model.safetensors"
  os.utime(w, ns=(1, 1_000_000_000))
  base = {side: models.model_fingerprint(_spec(d, tok), side) for side in (None, "query", "doc")}
  assert len(set(base.values())) == 3
  os.utime(w, ns=(1, 1_000_000_500))  # the same second: only mtime_ns sees it
  touched = {side: models.model_fingerprint(_spec(d, tok), side) for side in (None, "query", "doc")}
  assert all(touched[s] != base[s] for s in base)
  w.write_bytes(b"weightz")  # same size, new content and mtime
  assert models.model_fingerprint(_spec(d, tok)) not in (base[None], touched[None])
  before = models.model_fingerprint(_spec(d, tok), "doc")
  (d / "notes.md").write_text("other", encoding="utf-8")  # not a model file
  assert models.model_fingerprint(_spec(d, tok), "doc") == before
  tok.write_text('{"v": 2}', encoding="utf-8")  # the tokenizer counts too
  assert models.model_fingerprint(_spec(d, tok), "doc") != before


def test_side_fingerprints_ignore_the_other_side(tmp_path):
  d, tok = _model_dir(tmp_path)
  spec = _spec(d, tok)
  q, doc, whole = (models.model_fingerprint(spec, s) for s in ("query", "doc", None))
  other_doc = _spec(d, tok, doc_prefix="passage: ", doc_max_len=256)
  assert models.model_fingerprint(other_doc, "query") == q
  assert models.model_fingerprint(other_doc, "doc") != doc and models.model_fingerprint(other_doc) != whole
  other_query = _spec(d, tok, query_prefix="query: ", query_max_len=64)
  assert models.model_fingerprint(other_query, "doc") == doc
  assert models.model_fingerprint(other_query, "query") != q and models.model_fingerprint(other_query) != whole
  shared = _spec(d, tok, pooling="cls")  # a field both sides depend on
  assert models.model_fingerprint(shared, "query") != q and models.model_fingerprint(shared, "doc") != doc
  with pytest.raises(ValueError, match="side must be one of"):
    models.model_fingerprint(spec, "passage")


def test_model_fingerprint_of_a_config_dict(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  d, tok = _model_dir(tmp_path)
  spec = _spec(d, tok, arch={"dtype": "float32"})
  cd = ml_collections.ConfigDict(spec)
  assert models.model_fingerprint(cd, "doc") == models.model_fingerprint(spec, "doc")
