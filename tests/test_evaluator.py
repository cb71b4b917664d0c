"""Tests for the evaluation orchestration (optical_jax.evaluator) and the eval.py command line."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from optical_jax import evaluator, models, plain, retrieval
from optical_jax.data import beir
from configs import tiny as tiny_config
from optical_jax.data.beir import passage_text
from optical_jax.errors import InputError

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY_ARCH = dict(tiny_config.TINY_ARCH, max_position_embeddings=512)   # passages up to 512
WORDS = ("river lake mountain city village school music football election president "
         "language history river bank market farm rain forest island ocean bridge king "
         "queen army church mosque hospital doctor teacher student book radio").split()


def tiny_spec(**over):
  spec = dict(weights="random", tokenizer="asset:minilm/tokenizer.json", arch=TINY_ARCH,
              query_max_len=16, doc_max_len=32)
  spec.update(over)
  return models.model_spec(**spec)


def write_beir(root):
  """A small BEIR collection: 40 passages, 6 queries (text + text_en), 5 judged."""
  rng = np.random.default_rng(0)
  (root / "qrels").mkdir(parents=True)

  def sentence(n):
    return " ".join(rng.choice(WORDS, size=n))

  with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
    for i in range(40):
      title = "" if i % 7 == 0 else sentence(2).title()
      f.write(json.dumps({"_id": f"d{i}", "title": title,
                          "text": sentence(int(rng.integers(3, 40)))}) + "\n")
  with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
    for i in range(6):
      f.write(json.dumps({"_id": f"q{i}", "text": sentence(int(rng.integers(2, 8))),
                          "text_en": sentence(int(rng.integers(2, 8)))}) + "\n")
  with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for i in range(5):
      f.write(f"q{i}\td{3 * i + 1}\t1\n")
  return root


@pytest.fixture(scope="module")
def shared_tmp(tmp_path_factory, minilm_dir):
  del minilm_dir  # the specs use its tokenizer
  return tmp_path_factory.mktemp("evaluator")


@pytest.fixture(scope="module")
def beir_dir(shared_tmp):
  return write_beir(shared_tmp / "beir")


_LOADED = {}


def _memo_loader(real):
  """load_model that builds random-weight models once per spec for the whole file
  (flax's eager init is slow); other weights load normally."""

  def load(spec, *args, **kwargs):
    if spec.weights != "random":
      return real(spec, *args, **kwargs)
    key = json.dumps(spec.to_dict(), sort_keys=True)
    if key not in _LOADED:
      _LOADED[key] = real(spec, *args, **kwargs)
    return _LOADED[key]
  return load


@pytest.fixture(autouse=True)
def reuse_random_models(monkeypatch):
  monkeypatch.setattr(models, "load_model", _memo_loader(models.load_model))


def make_config(beir_dir, cache_dir, systems, **over):
  c = evaluator.default_config()
  c.dataset.path = str(beir_dir)
  for name, s in systems.items():
    c.systems[name] = s
  c.cache_dir = str(cache_dir)
  c.batch_size = 8          # the 8 fake CPU devices of conftest: exercises the mesh path
  c.length_buckets.query = (16,)
  c.length_buckets.doc = (32,)
  c.top_k = 10
  c.n_permutations = 200
  c.progress = False
  for k, v in over.items():
    setattr(c, k, v)
  return c


def three_systems():
  a = tiny_spec()
  b = tiny_spec(pooling="cls")
  return {"tiny": evaluator.system(a),
          "tiny-en": evaluator.system(a, query_field="text_en"),
          "tiny-cls": evaluator.system(b, doc_model=a)}


class EncodeSpy:
  """Wraps retrieval.encode_texts: counts calls and keeps what each returned."""

  def __init__(self, monkeypatch, calls=None):
    self.calls = [] if calls is None else calls
    real = retrieval.encode_texts

    def spy(texts, *args, **kwargs):
      out = real(texts, *args, **kwargs)
      self.calls.append((kwargs.get("desc", ""), list(texts), out))
      return out
    monkeypatch.setattr(retrieval, "encode_texts", spy)

  def find(self, desc_part):
    hits = [c for c in self.calls if desc_part in c[0]]
    assert len(hits) == 1, [c[0] for c in self.calls]
    return hits[0]


def _read_run_lines(path):
  with open(path, encoding="utf-8") as f:
    return [line.split() for line in f if line.strip()]


@pytest.fixture(scope="module")
def first_run(shared_tmp, beir_dir):
  """Three systems (two query models, one shared doc model), evaluated once for several tests."""
  calls = []
  with pytest.MonkeyPatch.context() as mp:
    EncodeSpy(mp, calls)
    mp.setattr(models, "load_model", _memo_loader(models.load_model))
    config = make_config(beir_dir, shared_tmp / "cache", three_systems(),
                         baselines=("tiny", "tiny-cls"))
    result = evaluator.run(config, str(shared_tmp / "out"), log=lambda m: None)
  return config, result, calls


def test_writes_all_outputs_and_shares_passage_embeddings(first_run, shared_tmp, beir_dir):
  config, result, calls = first_run
  out = shared_tmp / "out"
  names = ["tiny", "tiny-en", "tiny-cls"]
  assert result.computed == names and result.reused == []
  # One passage encoding (all three systems use the same doc model), three query encodings.
  descs = [c[0] for c in calls]
  assert sum(d.startswith("passages") for d in descs) == 1, descs
  assert sum(d.startswith("queries") for d in descs) == 3, descs
  for name in names:
    lines = _read_run_lines(out / "runs" / f"{name}.trec")
    assert {l[0] for l in lines} == {f"q{i}" for i in range(6)}
    assert all(len(l) == 6 and l[1] == "Q0" and l[5] == name for l in lines)
    assert max(int(l[3]) for l in lines) == 10
    m = json.loads((out / "metrics" / f"{name}.json").read_text())
    assert list(m["aggregate"]) == list(config.measures)
    assert set(m["per_query"]["nDCG@10"]) == {f"q{i}" for i in range(5)}
    assert m["num_queries"] == 5
    assert m["aggregate"] == result.results[name]["aggregate"]
  comp = json.loads((out / "comparison.json").read_text())
  assert list(comp["systems"]) == names and comp["baselines"] == ["tiny", "tiny-cls"]
  vs = comp["systems"]["tiny-en"]["vs"]["tiny"]["nDCG@10"]
  assert {"t_test_p", "permutation_p", "mean_diff", "significant"} <= set(vs)
  md = (out / "comparison.md").read_text()
  assert "| tiny-cls |" in md and "nDCG@10" in md
  assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  resolved = json.loads((out / "config.json").read_text())
  assert resolved["systems"]["tiny-cls"]["doc_model"]["pooling"] == "mean"
  assert resolved["systems"]["tiny-cls"]["query_model"]["pooling"] == "cls"
  assert resolved["systems"]["tiny"]["doc_model"] == resolved["systems"]["tiny"]["query_model"]
  assert resolved["systems"]["tiny-en"]["query_field"] == "text_en"
  assert resolved["dataset"]["qrels"] == str(beir_dir / "qrels" / "test.tsv")
  assert json.loads((out / "manifest.json").read_text())["systems"].keys() == set(names)
  leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
  assert not leftovers


def test_full_search_top10_equals_numpy_brute_force(first_run, shared_tmp, beir_dir):
  _, _, calls = first_run
  out = shared_tmp / "out"
  corpus = beir.load_corpus(beir_dir)
  (_, passages, d_emb), = [c for c in calls if c[0].startswith("passages")]
  # Passage text is title + ' ' + text (just the text without a title), as in training.
  assert passages[0] == corpus.texts[0] and passages[1] == f"{corpus.titles[1]} {corpus.texts[1]}"
  for name, field in (("tiny", "text"), ("tiny-en", "text_en"), ("tiny-cls", "text")):
    queries = beir.load_queries(beir_dir / "queries.jsonl", field)
    hits = [c for c in calls if c[0].startswith(f"queries ({field})") and f"'{name}'" in c[0]]
    assert len(hits) == 1
    q_emb = hits[0][2]
    scores = q_emb.astype(np.float64) @ d_emb.astype(np.float64).T
    run = beir.load_run(out / "runs" / f"{name}.trec")
    for qi, qid in enumerate(queries.ids):
      order = np.argsort(-scores[qi], kind="stable")
      want = [corpus.ids[j] for j in order[:10]]
      got = [d for d, _ in beir.ranked(run[qid])]
      best = scores[qi][order[:11]]
      # Each rank holds a document with the rank's brute-force score (float32 vs float64
      # may swap near-ties); the lists are identical wherever the scores are separated.
      np.testing.assert_allclose([scores[qi][corpus.index[d]] for d in got], best[:10],
                                 rtol=0, atol=1e-5)
      np.testing.assert_allclose([run[qid][d] for d in got], best[:10], rtol=0, atol=1e-5)
      if np.min(-np.diff(best)) > 1e-5:
        assert got == want, (name, qid)


def test_rerun_reuses_runs_and_embeddings(first_run, shared_tmp, tmp_path, monkeypatch):
  config, first, _ = first_run
  config = copy.deepcopy(config)   # the first run's config stays as it was
  out = tmp_path / "out"
  shutil.copytree(shared_tmp / "out", out)
  spy = EncodeSpy(monkeypatch)
  loads = []
  real_load = models.load_model
  monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
  mtimes = {p: os.stat(out / "runs" / p).st_mtime_ns for p in os.listdir(out / "runs")}

  second = evaluator.run(config, str(out), log=lambda m: None)
  assert not spy.calls and not loads           # nothing encoded, no model loaded
  assert second.computed == [] and second.reused == ["tiny", "tiny-en", "tiny-cls"]
  assert {p: os.stat(out / "runs" / p).st_mtime_ns for p in mtimes} == mtimes
  for name in second.reused:
    assert second.results[name]["aggregate"] == first.results[name]["aggregate"]

  # A new measure: metrics are recomputed from the stored runs, nothing is encoded.
  config.measures = tuple(config.measures) + ("P@10",)
  third = evaluator.run(config, str(out), log=lambda m: None)
  assert not spy.calls and third.computed == []
  assert "P@10" in json.loads((out / "metrics" / "tiny.json").read_text())["aggregate"]

  # A changed query setting recomputes only the systems that use it; the passage
  # embeddings come from the disk cache even in a fresh out directory.
  config.systems["tiny-cls"].query_model.query_max_len = 12
  fourth = evaluator.run(config, str(out), log=lambda m: None)
  assert fourth.computed == ["tiny-cls"] and len(spy.calls) == 1
  assert spy.calls[-1][0].startswith("queries")
  fifth = evaluator.run(config, str(tmp_path / "out2"), log=lambda m: None)
  assert fifth.computed == ["tiny", "tiny-en", "tiny-cls"] and len(spy.calls) == 1

  # An edited run file is not trusted.
  with open(out / "runs" / "tiny.trec", "a", encoding="utf-8") as f:
    f.write("q0 Q0 d39 11 -5.0 tiny\n")
  sixth = evaluator.run(config, str(out), log=lambda m: None)
  assert sixth.computed == ["tiny"]


def test_float16_embeddings_are_stored_apart_and_score_like_float32(first_run, shared_tmp,
                                                                    tmp_path, monkeypatch):
  """embedding_dtype=float16: dense vectors rounded to float16 (a cache entry and run key
  of their own: the float32 results are not reused), scores within float16 rounding of the
  float32 ones; the float32 entries keep their keys (a float32 rerun encodes nothing)."""
  config, first, _ = first_run
  config = copy.deepcopy(config)
  out = tmp_path / "out"
  shutil.copytree(shared_tmp / "out", out)
  spy = EncodeSpy(monkeypatch)
  monkeypatch.setattr(models, "load_model", _memo_loader(models.load_model))
  config.embedding_dtype = "float16"
  half = evaluator.run(config, str(out), log=lambda m: None)
  assert half.computed == ["tiny", "tiny-en", "tiny-cls"]
  assert sum(c[0].startswith("passages") for c in spy.calls) == 1
  assert all(c[2].dtype == np.float16 for c in spy.calls)
  for name in half.computed:
    a = beir.load_run(str(shared_tmp / "out" / "runs" / f"{name}.trec"))
    b = beir.load_run(str(out / "runs" / f"{name}.trec"))
    for qid, docs in a.items():
      shared = set(docs) & set(b[qid])
      assert len(shared) >= 8
      np.testing.assert_allclose([b[qid][d] for d in shared], [docs[d] for d in shared],
                                 rtol=0, atol=5e-3)
  spy.calls.clear()
  config.embedding_dtype = "float32"
  again = evaluator.run(config, str(tmp_path / "out32"), log=lambda m: None)
  assert not spy.calls and again.computed == ["tiny", "tiny-en", "tiny-cls"]
  for name in again.computed:
    assert again.results[name]["aggregate"] == first.results[name]["aggregate"]
  config.embedding_dtype = "bfloat16"
  with pytest.raises(InputError, match="embedding_dtype must be one of"):
    evaluator.run(config, str(tmp_path / "bad"), log=lambda m: None)
  assert not (tmp_path / "bad").exists()


def test_rerank_never_adds_documents(beir_dir, tmp_path, monkeypatch):
  spy = EncodeSpy(monkeypatch)
  rng = np.random.default_rng(1)
  run_in = {}
  for i in range(6):
    docs = rng.choice(40, size=8, replace=False)
    run_in[f"q{i}"] = {f"d{j}": float(8 - r) for r, j in enumerate(docs)}
  run_in["q0"]["not-a-doc"] = 100.0         # dropped: not in the corpus
  run_in["q-unknown"] = {"d1": 1.0}         # dropped: not a query
  run_path = tmp_path / "bm25.trec"
  beir.write_run(run_path, run_in, tag="bm25")
  out = tmp_path / "out"
  config = make_config(beir_dir, tmp_path / "cache", {"tiny": evaluator.system(tiny_spec())},
                       mode="rerank", rerank_run=str(run_path), depth=6)
  with pytest.warns(beir.DataWarning):
    evaluator.run(config, str(out), log=lambda m: None)
  run_out = beir.load_run(out / "runs" / "tiny.trec")
  assert set(run_out) == {f"q{i}" for i in range(6)}
  for qid, docs in run_out.items():
    top = [d for d, _ in beir.ranked(run_in[qid])[:6]]
    assert set(docs) <= set(top) and len(docs) == len([d for d in top if d != "not-a-doc"])
  # Only the documents of the input run were encoded, and the scores are dot products.
  _, texts, d_emb = spy.find("passages")
  needed = {d for docs in run_in.values() for d, _ in beir.ranked(docs)[:6]} - {"not-a-doc"}
  assert len(texts) == len(needed)
  corpus = beir.load_corpus(beir_dir)
  subset = sorted(corpus.index[d] for d in needed)
  assert texts == [passage_text(corpus.titles[i], corpus.texts[i]) for i in subset]
  q_emb = spy.find("queries")[2]
  for qid, docs in run_out.items():
    for doc, score in docs.items():
      row = subset.index(corpus.index[doc])
      np.testing.assert_allclose(score, q_emb[int(qid[1:])] @ d_emb[row], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.systems["tiny"].query_model.update(pooling="max"), "pooling must be one of"),
    (lambda c: setattr(c, "baselines", ("nope",)), "'nope' is not a system"),
    (lambda c: setattr(c, "mode", "dense"), "config.mode must be one of"),
    (lambda c: setattr(c, "measures", ("nDCG@ten",)), "unknown measure"),
    (lambda c: c.systems["tiny"].update(query_field="no_such_field"), "missing 'no_such_field'"),
    (lambda c: c.systems.__setitem__("bad name", evaluator.system(tiny_spec())),
     "bad system name"),
    (lambda c: setattr(c.systems["tiny"], "doc_model", tiny_spec(scoring="maxsim")),
     "scoring"),
])
def test_config_errors_are_one_line(beir_dir, tmp_path, mutate, message):
  config = make_config(beir_dir, tmp_path / "cache", {"tiny": evaluator.system(tiny_spec())})
  mutate(config)
  with pytest.raises(InputError, match=message) as e:
    evaluator.run(config, str(tmp_path / "out"), log=lambda m: None)
  assert "\n" not in str(e.value)
  assert not (tmp_path / "out" / "runs").exists()


def test_afriqa_config_and_student_system(tmp_path, minilm_dir):
  del minilm_dir
  spec = importlib.util.spec_from_file_location("eval_afriqa",
                                                os.path.join(REPO, "configs", "eval_afriqa.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("swa")
  assert plain.keys_in_order(c.systems) == [
      "minilm-zeroshot", "minilm-oracle", "e5-zeroshot", "e5-oracle"]
  assert c.systems["e5-oracle"].query_field == "text_en"
  assert os.path.exists(c.dataset.queries) and os.path.exists(c.dataset.qrels)
  # A trained student: its export encodes the queries, the MiniLM teacher the passages.
  model = models.load_model(tiny_spec(query_prefix="q: "))
  models.export_model(str(tmp_path / "run" / "student"), model.cfg, model.params, model.spec,
                      model.tokenizer)
  c = mod.get_config(f"swa,run.optical={tmp_path / 'run'}")
  s = c.systems["optical"]
  assert s.query_model.weights == "export" and s.query_model.query_prefix == "q: "
  assert s.doc_model.path == "asset:minilm"
  plans = evaluator._plan_systems(c)  # pylint: disable=protected-access
  assert plans[-1].doc_fp == plans[0].doc_fp      # shares the teacher's passage embeddings


# --- the command line ------------------------------------------------------------------

BAD_CONFIG = """
import os
from optical_jax import evaluator, models

def get_config(arg):
  c = evaluator.default_config()
  c.dataset.path = {beir!r}
  c.cache_dir = {cache!r}
  s = evaluator.system(models.model_spec(weights="random", tokenizer="asset:minilm/tokenizer.json",
                                         arch=dict(vocab_size=30522, hidden_size=32, num_layers=2,
                                                   num_heads=4, intermediate_size=64)))
  if arg == "field":
    s.query_modle = 1
  if arg == "corpus":
    c.dataset.corpus = {bad_corpus!r}
  c.systems["tiny"] = s
  return c
"""


def _cli(args, env_extra=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *args],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_cli_bad_input_is_one_line_exit_2(beir_dir, tmp_path):
  bad_corpus = tmp_path / "bad_corpus.jsonl"
  bad_corpus.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n'
                        '{"_id": "c", "text": oops}\n', encoding="utf-8")
  cfg = tmp_path / "bad.py"
  cfg.write_text(BAD_CONFIG.format(beir=str(beir_dir), cache=str(tmp_path / "cache"),
                                   bad_corpus=str(bad_corpus)), encoding="utf-8")
  cases = [
      ([f"--config={cfg}:field"], "error: systems['tiny']: unknown field 'query_modle'"),
      ([f"--config={cfg}:ok", f"--config.dataset.qrels={tmp_path / 'missing.tsv'}"],
       f"error: {tmp_path / 'missing.tsv'}: file not found"),
      ([f"--config={cfg}:corpus"], f"error: {bad_corpus}:3: not a JSON line"),
  ]
  procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "eval.py"), *args,
                             f"--out={tmp_path / 'out'}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
           for args, _ in cases]
  for proc, (args, want) in zip(procs, cases):
    stdout, stderr = proc.communicate(timeout=120)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, (args, stderr)
    assert len(lines) == 1 and lines[0].startswith(want), (args, stderr)
    assert not stdout.strip()
  assert not (tmp_path / "out" / "runs").exists()


# --- the real models on AfriQA (minutes on CPU) -------------------------------------------

REFERENCE = {  # PyTorch, same public models, exact search, swa test, 295 judged queries
    "minilm-zeroshot": {"nDCG@10": 0.141, "RR@10": 0.117, "R@10": 0.217},
    "minilm-oracle": {"nDCG@10": 0.821, "RR@10": 0.781, "R@10": 0.932},
    "e5-zeroshot": {"nDCG@10": 0.628, "RR@10": 0.582, "R@10": 0.763},
    "e5-oracle": {"nDCG@10": 0.866, "RR@10": 0.832, "R@10": 0.959},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["minilm", "e5"])
def test_afriqa_reproduces_reference(family, tmp_path, minilm_dir, e5_dir):
  del minilm_dir, e5_dir
  spec = importlib.util.spec_from_file_location("eval_afriqa",
                                                os.path.join(REPO, "configs", "eval_afriqa.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("swa")
  for name in list(plain.keys_in_order(c.systems)):
    if not name.startswith(family):
      del c.systems[name]
  c.baselines = (f"{family}-zeroshot",)
  c.progress = False
  result = evaluator.run(c, str(tmp_path / "out"), log=lambda m: None)
  for name, ref in REFERENCE.items():
    if name.startswith(family):
      for m, v in ref.items():
        assert abs(result.results[name]["aggregate"][m] - v) <= 0.01, (name, m)
