"""Tests for evaluation (against pytrec_eval on the real AfriQA qrels), significance tests and reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ir_measures
import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp
from scipy import stats

from optical_jax import metrics
from optical_jax import stats as inference
from optical_jax.data import beir
from optical_jax.errors import InputError

# The swa test split ships with the repository (data/README.md): no skip.
AFRIQA = Path(__file__).resolve().parents[1] / "data" / "afriqa-clir"

# Our measure name -> pytrec_eval measure (RR@10 is checked separately).
PYTREC = {"AP": "map", "nDCG@10": "ndcg_cut_10", "P@5": "P_5", "R@10": "recall_10",
          "R@100": "recall_100"}


def _bm25(queries, docs, k1=0.9, b=0.4):
  """BM25 scores [Q, N] computed in numpy/scipy over lower-cased word tokens."""
  tok = lambda s: re.findall(r"\w+", s.lower())
  vocab = {}
  def counts(texts):
    rows, cols = [], []
    for i, t in enumerate(texts):
      for w in tok(t):
        rows.append(i)
        cols.append(vocab.setdefault(w, len(vocab)))
    return rows, cols
  dr, dc = counts(docs)
  qr, qc = counts(queries)
  tf = sp.csr_matrix((np.ones(len(dr)), (dr, dc)), shape=(len(docs), len(vocab)))
  qv = sp.csr_matrix((np.ones(len(qr)), (qr, qc)), shape=(len(queries), len(vocab)))
  dl = np.asarray(tf.sum(1)).ravel()
  df = np.asarray((tf > 0).sum(0)).ravel()
  idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
  tf = tf.tocoo()
  w = tf.data * (k1 + 1) / (tf.data + k1 * (1 - b + b * dl[tf.row] / dl.mean())) * idf[tf.col]
  weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape)
  return np.asarray((qv @ weights.T).todense())


@pytest.fixture(scope="module")
def afriqa():
  corpus = beir.load_corpus(AFRIQA / "corpus.jsonl")
  queries = beir.load_queries(AFRIQA / "queries" / "swa.test.jsonl", field="text_en")
  qrels = beir.load_qrels(AFRIQA / "qrels" / "swa.test.tsv", query_ids=queries.ids,
                          doc_ids=corpus.ids)
  scores = _bm25(queries.texts, corpus.full_texts())
  # Rounding to one decimal creates many ties, so the tie convention matters.
  scores = np.round(scores, 1)
  top = np.argsort(-scores, axis=1, kind="stable")[:, :150]
  bm25_run = {q: {corpus.ids[j]: float(scores[i, j]) for j in top[i]}
              for i, q in enumerate(queries.ids)}
  rng = np.random.default_rng(0)
  random_run = {}
  for q in queries.ids:  # coarse random integer scores: ties everywhere
    docs = set(rng.choice(len(corpus), 400, replace=False).tolist())
    if q in qrels and rng.random() < 0.5:
      docs |= {corpus.index[d] for d in qrels[q]}
    random_run[q] = {corpus.ids[j]: float(rng.integers(0, 20)) for j in sorted(docs)}
  return corpus, queries, qrels, bm25_run, random_run


def _trec_top(run, k):
  return {q: dict(beir.ranked(docs)[:k]) for q, docs in run.items()}


def _check_against_pytrec_eval(run, qrels):
  ours = metrics.evaluate(run, qrels)
  ev = pytrec_eval.RelevanceEvaluator(qrels, set(PYTREC.values()))
  ref = ev.evaluate(run)
  rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(_trec_top(run, 10))
  judged = [q for q in qrels if q in run and run[q]]
  assert ours["num_queries"] == len(qrels)
  for name, pte in PYTREC.items():
    for q in qrels:
      want = ref[q][pte] if q in ref else 0.0
      assert ours["per_query"][name][q] == pytest.approx(want, abs=1e-12), (name, q)
    assert ours["aggregate"][name] == pytest.approx(
        sum(ref[q][pte] for q in judged) / len(qrels), abs=1e-12)
  for q in qrels:
    want = rr[q]["recip_rank"] if q in rr else 0.0
    assert ours["per_query"]["RR@10"][q] == pytest.approx(want, abs=1e-12), q
  return ours, ref


def test_every_metric_equals_pytrec_eval_on_afriqa_bm25(afriqa):
  _, _, qrels, bm25_run, _ = afriqa
  ours, ref = _check_against_pytrec_eval(bm25_run, qrels)
  # Every judged query is answered, so the aggregate is also pytrec_eval's plain mean.
  assert ours["num_missing"] == 0 and len(ref) == len(qrels) == 295
  assert ours["aggregate"]["nDCG@10"] == pytest.approx(
      np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-12)
  assert 0.2 < ours["aggregate"]["R@100"] <= 1.0  # BM25 on English questions is sane
  # The rounded scores tie gold passages with others; ir_measures' RR@10 on the raw run
  # (MS MARCO provider, ties by doc_id ascending) would disagree with trec_eval there.
  rr10 = ir_measures.parse_measure("RR@10")
  raw = {m.query_id: m.value for m in ir_measures.iter_calc([rr10], qrels, bm25_run)}
  assert sum(raw[q] != ours["per_query"]["RR@10"][q] for q in qrels) > 5


def test_every_metric_equals_pytrec_eval_with_heavy_ties_and_missing_queries(afriqa):
  _, queries, qrels, _, random_run = afriqa
  run = {q: docs for i, (q, docs) in enumerate(random_run.items()) if i % 7}  # drop ~1/7
  ours, _ = _check_against_pytrec_eval(run, qrels)
  assert ours["num_missing"] == sum(1 for q in qrels if q not in run) > 30
  # ir_measures' own aggregate agrees (it also counts unanswered judged queries as 0).
  agg = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in PYTREC], qrels, run)
  for name in PYTREC:
    assert ours["aggregate"][name] == pytest.approx(agg[ir_measures.parse_measure(name)])


def test_written_run_evaluates_identically(afriqa, tmp_path):
  _, _, qrels, bm25_run, _ = afriqa
  beir.write_run(tmp_path / "bm25.trec", bm25_run, tag="bm25")
  again = beir.load_run(tmp_path / "bm25.trec")
  assert metrics.evaluate(again, qrels) == metrics.evaluate(bm25_run, qrels)


def test_hand_computed_ties_unjudged_and_missing_queries():
  qrels = {"q1": {"a": 1, "b": 0, "c": 1}, "q2": {"x": 1}, "q3": {"y": 0}}
  # q1: four tied documents. trec_eval breaks ties by doc_id descending: z, c, b, a
  # (z is unjudged = non-relevant). q2 is judged but unanswered; q4 is not judged.
  run = {"q1": {"a": 1.0, "b": 1.0, "c": 1.0, "z": 1.0}, "q3": {"y": 2.0}, "q4": {"k": 1.0}}
  r = metrics.evaluate(run, qrels, ["AP", "P@1", "P@2", "RR@10", "R@10", "nDCG@10"])
  pq = r["per_query"]
  assert pq["AP"] == {"q1": pytest.approx((1 / 2 + 2 / 4) / 2), "q2": 0.0, "q3": 0.0}
  assert pq["P@1"]["q1"] == 0.0 and pq["P@2"]["q1"] == 0.5
  assert pq["RR@10"]["q1"] == 0.5  # ir_measures alone says 1.0 (MS MARCO provider, ties asc)
  assert pq["R@10"]["q1"] == 1.0
  dcg = 1 / np.log2(3) + 1 / np.log2(5)
  assert pq["nDCG@10"]["q1"] == pytest.approx(dcg / (1 + 1 / np.log2(3)))
  assert r["aggregate"]["AP"] == pytest.approx(0.5 / 3)  # q1, q2, q3; q4 ignored
  assert r["num_queries"] == 3 and r["num_missing"] == 1
  # pytrec_eval agrees where it reports (it skips the unanswered q2 entirely).
  ref = pytrec_eval.RelevanceEvaluator(qrels, {"map", "P_1", "recip_rank"}).evaluate(run)
  assert set(ref) == {"q1", "q3"}
  assert ref["q1"]["map"] == pq["AP"]["q1"] and ref["q1"]["P_1"] == 0.0
  assert ref["q1"]["recip_rank"] == 0.5
  # The rank column of a written run follows the same order.
  assert [d for d, _ in beir.ranked(run["q1"])] == ["z", "c", "b", "a"]


def test_unknown_measure_is_input_error():
  with pytest.raises(InputError, match="unknown measure 'nDCG@@10'"):
    metrics.evaluate({"q": {"d": 1.0}}, {"q": {"d": 1}}, ["nDCG@@10"])


# --- significance -------------------------------------------------------------


def _fake_results(values):
  return {"aggregate": {"AP": float(np.mean(values))},
          "per_query": {"AP": {f"q{i}": float(v) for i, v in enumerate(values)}},
          "num_queries": len(values)}


def test_significance_identical_and_clearly_better():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 0.6, size=200)
  assert metrics.paired_t_test(a, a) == 1.0
  assert metrics.permutation_test(a, a) == 1.0
  better = np.clip(a + 0.1 + rng.normal(0, 0.05, size=200), 0, 1)
  assert metrics.paired_t_test(better, a) < 1e-10
  p = metrics.permutation_test(better, a, n_permutations=2000)
  assert p == pytest.approx(1 / 2001)  # the smallest p this test can give
  noisy = a + rng.normal(0, 0.05, size=200)
  assert metrics.paired_t_test(noisy, a) == pytest.approx(stats.ttest_rel(noisy, a).pvalue)
  p1 = metrics.permutation_test(noisy, a, n_permutations=3000, seed=7)
  assert p1 == metrics.permutation_test(noisy, a, n_permutations=3000, seed=7)  # seeded
  assert abs(p1 - stats.ttest_rel(noisy, a).pvalue) < 0.1  # the two tests roughly agree
  assert metrics.paired_t_test(a + 0.1, a) == 0.0 and np.isnan(metrics.paired_t_test([1], [0]))


def test_comparison_table_markers_legend_and_json():
  rng = np.random.default_rng(1)
  base = rng.uniform(0, 0.5, size=100)
  results = {"bm25": _fake_results(base),
             "mdpr": _fake_results(base + rng.normal(0, 0.01, size=100)),
             "optical": _fake_results(base + 0.2)}
  md, data = metrics.comparison_table(results, ["bm25", "mdpr"], ["AP"], n_permutations=500)
  json.dumps(data)  # JSON-able
  rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
  assert "**" in rows["optical"] and "†‡" in rows["optical"]
  assert "†" not in rows["bm25"] and "‡" not in rows["mdpr"]
  assert "† differs from bm25 ‡ differs from mdpr (paired t-test" in md
  opt = data["systems"]["optical"]
  assert opt["vs"]["bm25"]["AP"]["significant"] and opt["markers"]["AP"] == "†‡"
  assert opt["vs"]["bm25"]["AP"]["mean_diff"] == pytest.approx(0.2)
  md_p, data_p = metrics.comparison_table(results, "bm25", test="permutation",
                                          n_permutations=500)
  assert "randomisation test, 500 permutations, seed 0" in md_p
  assert data_p["systems"]["optical"]["vs"]["bm25"]["AP"]["permutation_p"] == pytest.approx(
      1 / 501)
  with pytest.raises(ValueError, match="not among the systems"):
    metrics.comparison_table(results, "bm26")
  other = {"x": _fake_results(base[:50]), "bm25": results["bm25"]}
  with pytest.raises(ValueError, match="different query sets"):
    metrics.comparison_table(other, "bm25")


def test_comparison_markers_use_adjusted_p_values():
  """A difference with raw p just under 0.05 among several tests loses its marker under
  Holm (adjusted p = raw p x tests for the smallest); the markdown renders from the dict."""
  rng = np.random.default_rng(5)
  base = rng.uniform(0.2, 0.8, size=60)
  noise = rng.normal(0, 0.05, size=60)
  results = {"base": _fake_results(base), "other": _fake_results(base + 0.01 * noise)}
  for shift in np.linspace(0.0, 0.05, 400):
    results["weak"] = _fake_results(base + noise + shift)
    raw = metrics.comparison_table(results, "base", ["AP"], correction="none",
                                   n_permutations=10)[1]
    p = raw["systems"]["weak"]["vs"]["base"]["AP"]["t_test_p"]
    if 0.025 < p < 0.05:
      break
  assert raw["systems"]["weak"]["markers"]["AP"] == "†"
  md, data = metrics.comparison_table(results, "base", ["AP"], n_permutations=10)
  weak = data["systems"]["weak"]["vs"]["base"]["AP"]
  other_p = data["systems"]["other"]["vs"]["base"]["AP"]["t_test_p"]
  assert data["tests"] == 2 and data["correction"] == "holm"
  first = min(1.0, 2 * min(p, other_p))          # Holm over two tests, written out
  want = first if p <= other_p else max(first, p)
  assert weak["p_adjusted"] == pytest.approx(want, rel=1e-12)
  assert weak["p_adjusted"] > 0.05 and data["systems"]["weak"]["markers"]["AP"] == ""
  assert "Holm-adjusted over the table's 2 tests" in md
  assert metrics.comparison_markdown(data) == md
  with pytest.raises(ValueError, match="correction"):
    metrics.comparison_table(results, "base", correction="bonferroni")


def test_bar_chart_writes_png(tmp_path):
  results = {"a": _fake_results([0.1, 0.3]), "b": _fake_results([0.4, 0.2])}
  path = tmp_path / "out" / "chart.png"
  metrics.bar_chart(results, ["AP"], path, title="AfriQA swa")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]


# ---------------------------------------------------------------------------
# Confidence intervals (studies).


@pytest.mark.parametrize("values,confidence", [([0.41, 0.43, 0.40], 0.95),
                                               ([0.2, 0.5, 0.3, 0.9, 0.1], 0.95),
                                               ([0.6, 0.61], 0.9)])
def test_mean_ci_matches_scipy_t_interval(values, confidence):
  mean, lo, hi = inference.mean_ci(values, confidence)
  ref_lo, ref_hi = stats.t.interval(confidence, len(values) - 1, loc=np.mean(values),
                                    scale=stats.sem(values))
  assert mean == pytest.approx(np.mean(values))
  assert (lo, hi) == pytest.approx((ref_lo, ref_hi), rel=1e-12)


def test_mean_ci_edge_cases():
  assert all(np.isnan(inference.mean_ci([])))
  mean, lo, hi = inference.mean_ci([0.5])
  assert mean == 0.5 and np.isnan(lo) and np.isnan(hi)
  assert inference.mean_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
