"""Tests for optical_jax.scoring: the scoring names, the dense/MaxSim dispatch and what each compares."""

from __future__ import annotations

import numpy as np
import pytest

from optical_jax import encoder, scoring
from optical_jax.errors import InputError


def _tokens(seed: int, n: int, length: int, dim: int = 4):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, length, dim)).astype(np.float32)
  mask = np.zeros((n, length), np.int32)
  for i, real in enumerate(rng.integers(1, length + 1, n)):
    mask[i, :real] = 1
  return x, mask


def test_names_and_check():
  assert scoring.SCORINGS == ("dense", "maxsim")
  assert scoring.check("maxsim") == "maxsim"
  with pytest.raises(ValueError, match=r"^scoring must be one of \('dense', 'maxsim'\), got 'cosine'$"):
    scoring.check("cosine")
  with pytest.raises(InputError, match=r"^model.scoring must be one of \('dense', 'maxsim'\), got 'colbert'$"):
    scoring.check("colbert", "model.scoring", InputError)


def test_dense_dispatch_equals_dot_products():
  rng = np.random.default_rng(0)
  q, d = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
  got = np.asarray(scoring.scores(q, None, d, None, "dense"))
  np.testing.assert_allclose(got, q @ d.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got, np.asarray(scoring.dense_scores(q, d)))


def test_maxsim_dispatch_equals_late_interaction():
  q, qm = _tokens(1, 3, 4)
  d, dm = _tokens(2, 5, 6)
  dm[4] = 0  # a document without real tokens scores 0
  want = np.zeros((3, 5), np.float32)
  for i in range(3):
    for j in range(5):
      sims = q[i][qm[i] > 0] @ d[j][dm[j] > 0].T
      want[i, j] = sims.max(axis=1).sum() if sims.size else 0.0
  got = np.asarray(scoring.scores(q, qm, d, dm, "maxsim"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got, np.asarray(scoring.maxsim_scores(q, qm, d, dm)))
  assert got[:, 4].tolist() == [0.0, 0.0, 0.0]


def test_scores_rejects_unknown_names_and_missing_masks():
  q = np.ones((1, 2, 3), np.float32)
  with pytest.raises(ValueError, match=r"one of \('dense', 'maxsim'\), got 'sum'"):
    scoring.scores(q, None, q, None, "sum")
  with pytest.raises(ValueError, match="maxsim scoring needs q_mask and d_mask"):
    scoring.scores(q, None, q, np.ones((1, 2)), "maxsim")


def test_embed_maxsim_keeps_tokens_optionally_normalised():
  x, mask = _tokens(3, 2, 5)
  raw = np.asarray(scoring.embed(x, mask, "maxsim", "mean", False))
  np.testing.assert_array_equal(raw, x)
  unit = np.asarray(scoring.embed(x, mask, "maxsim", "mean", True))
  assert unit.shape == (2, 5, 4)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(unit, x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_embed_dense_pools():
  x, mask = _tokens(4, 3, 5)
  mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(scoring.embed(x, mask, "dense", "mean", False)), mean,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(scoring.embed(x, mask, "dense", "cls", False)), x[:, 0])
  unit = np.asarray(scoring.embed(x, mask, "dense", "mean", True))
  np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(unit, np.asarray(encoder.pool(x, mask, "mean", True)))
  with pytest.raises(ValueError, match="got 'pooled'"):
    scoring.embed(x, mask, "pooled", "mean", True)
