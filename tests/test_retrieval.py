"""Tests for bucketed encoding, the embedding cache, exact chunked search and reranking."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optical_jax import array_cache, retrieval
from optical_jax.data.beir import DataWarning
from optical_jax.retrieval import TokenEmbeddings


def _np_dense(q, d):
  return q.astype(np.float64) @ d.astype(np.float64).T


def _np_maxsim(q, qm, d, dm):
  sim = np.einsum("qid,njd->qnij", q.astype(np.float64), d.astype(np.float64))
  sim = np.where(dm[None, :, None, :] > 0, sim, -np.inf)
  best = sim.max(-1)
  best = np.where((qm[:, None, :] > 0) & np.isfinite(best), best, 0.0)
  return best.sum(-1)


def _np_topk(scores, k):
  """Brute force: score descending, ties by lower index."""
  n = scores.shape[1]
  idx = np.stack([np.lexsort((np.arange(n), -row))[:k] for row in scores])
  return np.take_along_axis(scores, idx, 1), idx


def _masks(rng, n, length):
  lengths = rng.integers(1, length + 1, size=n)
  return (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)


# --- exact search -------------------------------------------------------------


def test_exact_search_dense_matches_brute_force():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(37, 16)).astype(np.float32)
  d = rng.normal(size=(1003, 16)).astype(np.float32)
  scores, idx = retrieval.exact_search(q, d, 10, query_chunk=8, doc_chunk=97)
  ref_s, ref_i = _np_topk(_np_dense(q, d), 10)
  assert idx.shape == (37, 10) and idx.dtype == np.int64 and scores.dtype == np.float32
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
  # Automatic chunking and float16 storage give the same ranking.
  _, idx_auto = retrieval.exact_search(q, d, 10)
  np.testing.assert_array_equal(idx_auto, ref_i)
  _, idx16 = retrieval.exact_search(q, d.astype(np.float16), 10, doc_chunk=300)
  assert (idx16[:, 0] == ref_i[:, 0]).mean() > 0.9


def test_exact_search_maxsim_matches_brute_force():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(11, 6, 8)).astype(np.float32)
  d = rng.normal(size=(203, 9, 8)).astype(np.float32)
  qm, dm = _masks(rng, 11, 6), _masks(rng, 203, 9)
  scores, idx = retrieval.exact_search(q, d, 10, scoring="maxsim", q_mask=qm, d_mask=dm,
                                       query_chunk=4, doc_chunk=37)
  ref_s, ref_i = _np_topk(_np_maxsim(q, qm, d, dm), 10)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)


def test_exact_search_ties_go_to_lower_index_across_chunks():
  d = np.ones((25, 4), np.float32)
  d[[3, 17]] = 2.0  # two tied best documents in different chunks
  q = np.ones((3, 4), np.float32)
  scores, idx = retrieval.exact_search(q, d, 10, query_chunk=2, doc_chunk=7)
  np.testing.assert_array_equal(idx, np.tile([3, 17, 0, 1, 2, 4, 5, 6, 7, 8], (3, 1)))
  # top_k larger than the collection is capped at N.
  s_all, i_all = retrieval.exact_search(q[:1], d[:5], 50, doc_chunk=2)
  assert i_all.tolist() == [[3, 0, 1, 2, 4]] and s_all.shape == (1, 5)


def test_exact_search_rejects_bad_shapes():
  with pytest.raises(ValueError, match="dense scoring needs 2-d"):
    retrieval.exact_search(np.zeros((2, 3, 4)), np.zeros((5, 4)), 3)
  with pytest.raises(ValueError, match="embedding sizes differ"):
    retrieval.exact_search(np.zeros((2, 4)), np.zeros((5, 3)), 3)
  with pytest.raises(ValueError, match="scoring must be one of"):
    retrieval.exact_search(np.zeros((2, 4)), np.zeros((5, 4)), 3, scoring="cosine")


def test_search_and_to_run():
  d = np.eye(4, dtype=np.float32)
  q = np.array([[0, 0, 1, 0.5]], np.float32)
  run = retrieval.search(["q1"], q, ["a", "b", "c", "d"], d, 2)
  assert run == {"q1": {"c": 1.0, "d": 0.5}}
  assert retrieval.to_run(["q"], ["a"], np.array([[1.0, -np.inf]]), np.array([[0, -1]])) == {
      "q": {"a": 1.0}}


# --- encoding -----------------------------------------------------------------


VOCAB, DIM = 50, 5
TABLE = np.random.default_rng(2).normal(size=(VOCAB, DIM)).astype(np.float32)


def _tokenize(texts, max_len=12):
  return [[ord(c) % (VOCAB - 1) + 1 for c in t][:max_len] for t in texts]


def test_encode_texts_dense_restores_order_and_uses_static_shapes():
  texts = ["a", "hello there", "xyz", "", "a much longer sentence than the others", "mid text"] * 3
  shapes = []
  traces = []

  @jax.jit
  def embed(ids, mask):
    traces.append(ids.shape)  # runs once per compilation
    e = jnp.asarray(TABLE)[ids] * mask[..., None]
    return e.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)

  def recording(ids, mask):
    shapes.append(ids.shape)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    return embed(ids, mask)

  out = retrieval.encode_texts(texts, _tokenize, recording, batch_size=4,
                               length_buckets=[4, 8, 12], progress=False)
  expected = []
  for ids in _tokenize(texts):
    expected.append(TABLE[ids].mean(0) if ids else np.zeros(DIM, np.float32))
  np.testing.assert_allclose(out, np.stack(expected), rtol=1e-6, atol=1e-6)
  assert out.dtype == np.float32 and out.shape == (18, DIM)
  assert all(b == 4 and length in (4, 8, 12) for b, length in shapes)
  assert len(traces) == len(set(shapes)) <= 3


def test_batch_rows_follow_the_token_budget():
  assert retrieval.batch_rows(256, 32) == 32                       # no budget: batch_size
  assert retrieval.batch_rows(64, 32, max_tokens=2048) == 32       # capped at batch_size
  assert retrieval.batch_rows(256, 32, max_tokens=2048) == 8
  assert retrieval.batch_rows(96, 32, max_tokens=2048) == 21
  assert retrieval.batch_rows(96, 32, max_tokens=2048, row_multiple=8) == 16
  assert retrieval.batch_rows(512, 32, max_tokens=2048, row_multiple=8) == 8  # at least one multiple


def test_encode_texts_token_budget_same_embeddings_smaller_long_batches():
  texts = ["a", "hello there", "xyz", "", "a much longer sentence than the others", "mid text"] * 3
  shapes = []

  def embed(ids, mask):
    shapes.append(ids.shape)
    e = TABLE[ids] * mask[..., None]
    return e.sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)

  plain = retrieval.encode_texts(texts, _tokenize, embed, batch_size=4,
                                 length_buckets=[4, 8, 12], progress=False)
  assert all(rows == 4 for rows, _ in shapes)
  shapes.clear()
  budget = retrieval.encode_texts(texts, _tokenize, embed, batch_size=4, length_buckets=[4, 8, 12],
                                  progress=False, max_tokens=24, row_multiple=2)
  np.testing.assert_allclose(budget, plain, rtol=1e-6, atol=1e-6)
  assert {length: rows for rows, length in shapes} == {12: 2, 8: 2, 4: 4}
  with pytest.raises(ValueError, match="row_multiple 3 does not divide batch_size 4"):
    retrieval.encode_texts(texts, _tokenize, embed, batch_size=4, length_buckets=[12],
                           progress=False, max_tokens=24, row_multiple=3)


def test_encode_texts_token_level_is_compact():
  texts = ["ab", "abcdef", "abc"]

  def embed(ids, mask):
    return TABLE[ids] + 1.0  # garbage at padding positions must not leak out

  out = retrieval.encode_texts(texts, _tokenize, embed, batch_size=2, length_buckets=[8],
                               progress=False)
  assert isinstance(out, TokenEmbeddings)
  assert out.emb.shape == (3, 6, DIM) and out.emb.dtype == np.float16
  assert out.mask.tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]]
  for i, ids in enumerate(_tokenize(texts)):
    np.testing.assert_allclose(out.emb[i, :len(ids)], (TABLE[ids] + 1).astype(np.float16))
    assert not out.emb[i, len(ids):].any()


def test_encode_texts_errors():
  with pytest.raises(ValueError, match="more than the largest length bucket 4"):
    retrieval.encode_texts(["abcdefgh"], _tokenize, lambda i, m: i, batch_size=2,
                           length_buckets=[2, 4], progress=False)
  with pytest.raises(ValueError, match="expected \\[B, D\\] or \\[B, L, D\\]"):
    retrieval.encode_texts(["ab"], _tokenize, lambda i, m: i[0], batch_size=2,
                           length_buckets=[4], progress=False)


# --- cache --------------------------------------------------------------------


def test_cached_reuses_and_keys_on_all_parts(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.arange(6, dtype=np.float32).reshape(2, 3)

  key = {"model": "m1", "collection": "c1", "max_len": 32}
  a = retrieval.cached(tmp_path, key, compute)
  b = retrieval.cached(tmp_path, dict(reversed(list(key.items()))), compute)
  assert len(calls) == 1 and np.array_equal(a, b)
  retrieval.cached(tmp_path, {**key, "max_len": 64}, compute)
  assert len(calls) == 2
  entries = sorted(os.listdir(tmp_path))
  assert len(entries) == 2 and all(e.startswith("emb-") for e in entries)
  assert retrieval.cached(None, key, compute) is not None and len(calls) == 3


def test_cached_token_embeddings_and_corrupt_entry(tmp_path):
  value = TokenEmbeddings(np.ones((2, 3, 4), np.float16), np.ones((2, 3), np.int8))
  calls = []

  def compute():
    calls.append(1)
    return value

  retrieval.cached(tmp_path, {"k": 1}, compute)
  again = retrieval.cached(tmp_path, {"k": 1}, compute, mmap=True)
  assert isinstance(again, TokenEmbeddings) and len(calls) == 1
  assert again.emb.dtype == np.float16 and np.array_equal(again.mask, value.mask)
  entry = os.path.join(tmp_path, "emb-" + retrieval.cache_key({"k": 1}))
  os.remove(os.path.join(entry, "1.npy"))
  with pytest.warns(array_cache.CacheWarning, match="1.npy is missing"):
    retrieval.cached(tmp_path, {"k": 1}, compute)
  assert len(calls) == 2 and os.path.exists(os.path.join(entry, "1.npy"))


def test_cached_embeddings_overwritten_with_same_shape_values_are_recomputed(tmp_path):
  """Issue 27's silent case: finite garbage of the same shape in an embedding entry turned
  a zero-shot nDCG@10 of 0.249 into 0.000; a shorter array made passages unreachable.
  Both now fail the entry's check and are recomputed."""
  value = np.arange(12, dtype=np.float32).reshape(4, 3)
  calls = []

  def compute():
    calls.append(1)
    return value

  retrieval.cached(tmp_path, {"k": 2}, compute)
  npy = os.path.join(tmp_path, "emb-" + retrieval.cache_key({"k": 2}), "0.npy")
  for bad in (np.zeros_like(value), value[:3]):
    np.save(npy, bad)
    with pytest.warns(array_cache.CacheWarning):
      again = retrieval.cached(tmp_path, {"k": 2}, compute)
    np.testing.assert_array_equal(again, value)
  assert len(calls) == 3


# --- rerank -------------------------------------------------------------------


def test_rerank_dense_only_rescores_input_documents():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(3, 8)).astype(np.float32)
  d = rng.normal(size=(20, 8)).astype(np.float32)
  doc_ids = [f"d{i}" for i in range(20)]
  run = {"q0": {"d1": 9.0, "d5": 8.0, "ghost": 7.0}, "q2": {"d7": 1.0, "d19": 0.5},
         "qX": {"d1": 1.0}}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = retrieval.rerank(run, ["q0", "q1", "q2"], q, doc_ids, d, batch_size=4)
  messages = [str(w.message) for w in caught]
  assert any("1 run queries without embeddings (e.g. qX)" in m for m in messages)
  assert any("1 run entries of 1 documents not in the corpus (e.g. ghost)" in m
             for m in messages)
  assert set(out) == {"q0", "q2"}
  assert set(out["q0"]) == {"d1", "d5"} and set(out["q2"]) == {"d7", "d19"}
  for qid, row in (("q0", 0), ("q2", 2)):
    for doc, s in out[qid].items():
      assert s == pytest.approx(float(q[row] @ d[int(doc[1:])]), rel=1e-5)
  with pytest.warns(DataWarning):  # qX again; "ghost" is below depth 1 now
    top1 = retrieval.rerank(run, ["q0", "q1", "q2"], q, doc_ids, d, depth=1)
  assert set(top1["q0"]) == {"d1"} and set(top1["q2"]) == {"d7"}


def test_rerank_maxsim_matches_numpy():
  rng = np.random.default_rng(4)
  q = rng.normal(size=(2, 5, 4)).astype(np.float32)
  d = rng.normal(size=(9, 6, 4)).astype(np.float32)
  qm, dm = _masks(rng, 2, 5), _masks(rng, 9, 6)
  run = {"a": {"x0": 0.0, "x3": 0.0, "x8": 0.0}, "b": {"x2": 1.0}}
  out = retrieval.rerank(run, {"a": 0, "b": 1}, q, [f"x{i}" for i in range(9)], d,
                         scoring="maxsim", q_mask=qm, d_mask=dm)
  ref = _np_maxsim(q, qm, d, dm)
  assert out["a"] == pytest.approx({"x0": ref[0, 0], "x3": ref[0, 3], "x8": ref[0, 8]},
                                   rel=1e-5)
  assert out["b"] == pytest.approx({"x2": ref[1, 2]}, rel=1e-5)


DOCS = [f"d{i}" for i in range(12)]
_RERANK_Q = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
_RERANK_D = np.random.default_rng(6).normal(size=(12, 3)).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(["q0", "q1", "q2", "q3", "qq"]),
                       st.dictionaries(st.sampled_from(DOCS + ["u1", "u2"]),
                                       st.floats(-5, 5), max_size=8), max_size=5))
def test_rerank_never_adds_documents(run):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DataWarning)
    out = retrieval.rerank(run, ["q0", "q1", "q2", "q3"], _RERANK_Q, DOCS, _RERANK_D,
                           batch_size=3)
  for qid, docs in out.items():
    assert qid in run
    assert set(docs) == {d for d in run[qid] if d in DOCS}
