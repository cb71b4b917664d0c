"""Every shipped config builds, names only known fields and valid model specs."""

import importlib.util
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
