"""Every shipped config builds, names only known fields and valid model specs."""

import importlib.util
import json
import os

import pytest

from optical_jax import models
from optical_jax.config import base_config

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _same_schema(c, base, path=""):
  for key in c.keys():
    if key in ("lang",):
      continue
    assert key in base, f"unknown config field {path}{key}"
    if hasattr(c[key], "keys") and hasattr(base[key], "keys") and key != "arch":
      _same_schema(c[key], base[key], f"{path}{key}.")


@pytest.mark.parametrize("name,arg", [("tiny", None), ("swa_minilm", "swa"), ("swa_minilm", "swa,tune"),
                                      ("swa_e5", "swa"), ("teacher_minilm", None),
                                      ("paper_xlmr_msmarco", "teacher"), ("paper_xlmr_msmarco", "distill")])
def test_training_configs_build(name, arg):
  mod = _load(name)
  c = mod.get_config(arg) if arg is not None else mod.get_config()
  _same_schema(c, base_config())
  for side in ("teacher", "student"):
    models.validate_spec(c[side], side) if c[side].weights != "hf" or c[side].path else None
  if c.mode == "distill":
    assert c.data.bitext.sources
  if arg and "tune" in arg:
    assert c.validation.sources and all("dev" not in str(s["path"]) for s in c.data.bitext.sources
                                        if s["type"] == "jsonl")


def test_swa_bitext_excludes_test_queries():
  c = _load("swa_minilm").get_config("swa")
  for s in c.data.bitext.sources:
    assert any("swa.test.jsonl" in e["path"] for e in s["exclude"])


def test_eval_config_families_and_students(tmp_path):
  mod = _load("eval_afriqa")
  c = mod.get_config("swa,models=minilm")
  assert set(c.systems.keys()) == {"minilm-zeroshot", "minilm-oracle"}
  assert tuple(c.baselines) == ("minilm-zeroshot",)
  with pytest.raises(ValueError):
    mod.get_config("swa,models=bert")


def test_eval_config_teacher_workdir_reads_english_queries(tmp_path):
  """A teacher-mode workdir is scored on `text_en` with its own passage encoder."""
  export = tmp_path / "run" / "teacher"
  export.mkdir(parents=True)
  (export / models.SPEC_FILE).write_text(json.dumps({
      "encoder": {"dtype": "float32"}, "tokenizer": "tokenizer.json",
      "text": {"query_prefix": "", "doc_prefix": "", "query_max_len": 32,
               "doc_max_len": 256, "pooling": "mean", "normalize": True,
               "scoring": "dense"}}))
  c = _load("eval_afriqa").get_config(f"swa,models=minilm,run.tuned={tmp_path / 'run'}")
  tuned = c.systems["tuned"]
  assert tuned.query_field == "text_en" and tuned.doc_model is None
  assert tuned.query_model.path == str(export) and tuned.query_model.query_max_len == 32


@pytest.fixture
def restore_compilation_cache():
  import jax
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_compilation_cache_default_and_switches(tmp_path, monkeypatch, restore_compilation_cache):
  import jax
  from optical_jax import cli
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("OPTICAL_JAX_XLA_CACHE", "none")
  assert cli.enable_compilation_cache() is None
  assert not jax.config.jax_compilation_cache_dir
  monkeypatch.delenv("OPTICAL_JAX_XLA_CACHE")
  monkeypatch.setenv("OPTICAL_JAX_CACHE", str(tmp_path))
  assert cli.enable_compilation_cache() == os.path.join(str(tmp_path), "xla")
  assert jax.config.jax_compilation_cache_dir == os.path.join(str(tmp_path), "xla")
  # An explicit setting (JAX_COMPILATION_CACHE_DIR or the user's own update) wins.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert cli.enable_compilation_cache() == str(tmp_path / "mine")


def test_bitext_for_language_without_ntrex_warns_and_keeps_afriqa():
  from configs.common import bitext_sources
  with pytest.warns(UserWarning, match="no NTREX-128 bitext for 'twi'"):
    sources = bitext_sources("twi")
  assert [s["label"] for s in sources] == ["afriqa-twi"]
  assert [s["label"] for s in bitext_sources("swa")] == ["afriqa-swa", "ntrex-swa"]
