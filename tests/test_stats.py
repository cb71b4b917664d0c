"""optical_jax.stats against independent computations: the t distribution from scipy with
the statistic computed here, scipy's exact permutation test, hand-built cases, and
step-down / step-up procedures written out as their textbooks state them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from optical_jax import stats


def _t_p(d):
  d = np.asarray(d, float)
  t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
  return 2 * sp.t.sf(abs(t), d.size - 1)


@pytest.mark.parametrize("d", [[0.03, 0.01, 0.05, -0.02, 0.04, 0.02, 0.0, 0.06],
                               [0.1, -0.2, 0.05], [1e-3, 2e-3]])
def test_one_sample_t_test_is_the_t_statistic_in_its_distribution(d):
  assert stats.one_sample_t_test(d) == pytest.approx(_t_p(d), rel=1e-10)
  assert stats.run_level_test(d)["t_test_p"] == pytest.approx(_t_p(d), rel=1e-10)
  assert stats.run_level_test(d)["mean_diff"] == pytest.approx(np.mean(d))


def test_t_test_edge_cases():
  assert math.isnan(stats.one_sample_t_test([0.2]))
  assert stats.one_sample_t_test([0.0, 0.0, 0.0]) == 1.0
  assert stats.one_sample_t_test([0.1, 0.1]) == 0.0          # query level: constant shift
  run = stats.run_level_test([0.1, 0.1])                      # run level: no t-test
  assert math.isnan(run["t_test_p"]) and run["sign_flip_p"] == 0.5 and run["runs"] == 2


def test_exact_sign_flip_hand_cases():
  assert stats.sign_flip_test([1.0, 2.0, 3.0]) == (0.25, True)   # only +++ and ---
  assert stats.sign_flip_test([1.0, -1.0]) == (1.0, True)        # every pattern ties or beats 0
  assert stats.sign_flip_test([0.5] * 8) == (2 / 256, True)
  # 3, 2, -1 (sum 4): the 8 patterns' |sums| are 4, 6, 0, 2, each twice -> 4 of 8 >= 4.
  assert stats.sign_flip_test([3.0, 2.0, -1.0]) == (0.5, True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_sign_flip_matches_scipy_exact_permutation_test(seed):
  d = np.random.default_rng(seed).normal(0.01, 0.03, size=9)
  want = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                             alternative="two-sided").pvalue
  p, exact = stats.sign_flip_test(d)
  assert exact and p == pytest.approx(want, rel=1e-12)


def test_random_sign_flips_beyond_the_exact_limit():
  d = np.random.default_rng(4).normal(0.02, 0.05, size=40)
  p, exact = stats.sign_flip_test(d, n_permutations=20_000, seed=1)
  want = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=20_000,
                             alternative="two-sided", random_state=2).pvalue
  assert not exact and p == pytest.approx(want, abs=0.01) and p > 0


def test_seed_averaged_counts_each_query_once():
  a = [{"swa": {"q1": 1.0, "q2": 0.0}}, {"swa": {"q1": 0.0, "q2": 0.0}}]
  b = [{"swa": {"q1": 0.0, "q2": 1.0}}, {"swa": {"q1": 0.0, "q2": 0.5}}]
  np.testing.assert_allclose(stats.seed_averaged(a, b), [0.5, -0.75])
  two = stats.seed_averaged(a + [{"hau": {"q1": 1.0}}] * 2, b + [{"hau": {"q1": 0.0}}] * 2)
  np.testing.assert_allclose(two, [1.0, 0.5, -0.75])     # hau q1 is another query
  with pytest.raises(ValueError, match="every query needs every seed"):
    stats.seed_averaged(a + [{"hau": {"q1": 1.0}}], b + [{"hau": {"q1": 0.0}}])
  with pytest.raises(ValueError, match="pair them by seed"):
    stats.seed_averaged(a, b[:1])
  with pytest.raises(ValueError, match="different query sets"):
    stats.seed_averaged(a, [{"swa": {"q1": 0.0}}, b[1]])
  res = stats.query_level_test([0.5, -0.75, 0.25])
  assert res["queries"] == 3 and res["t_test_p"] == pytest.approx(_t_p([0.5, -0.75, 0.25]))


def _holm_by_definition(p, alpha):
  """Holm's step-down rejections: walk the sorted p-values, reject while
  p_(i) <= alpha / (m - i + 1), stop at the first that is not."""
  order = np.argsort(p, kind="stable")
  reject = np.zeros(len(p), bool)
  for i, j in enumerate(order):
    if p[j] > alpha / (len(p) - i):
      break
    reject[j] = True
  return reject


def _bh_by_definition(p, alpha):
  """Benjamini-Hochberg: reject the k smallest, k the largest i with p_(i) <= i alpha / m."""
  order = np.argsort(p, kind="stable")
  m = len(p)
  k = max([i + 1 for i in range(m) if p[order[i]] <= (i + 1) * alpha / m], default=0)
  reject = np.zeros(m, bool)
  reject[order[:k]] = True
  return reject


def test_holm_hand_case_and_nan():
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  got = stats.holm([0.01, float("nan"), 0.04])
  assert math.isnan(got[1]) and got[0] == pytest.approx(0.02) and got[2] == pytest.approx(0.04)
  assert stats.holm([]).size == 0


@pytest.mark.parametrize("seed", range(5))
def test_holm_and_bh_reject_what_their_definitions_reject(seed):
  p = np.random.default_rng(seed).uniform(0, 0.08, size=12) ** 1.5
  for alpha in (0.01, 0.05, 0.1):
    assert np.array_equal(stats.holm(p) <= alpha, _holm_by_definition(p, alpha))
    assert np.array_equal(stats.benjamini_hochberg(p) <= alpha, _bh_by_definition(p, alpha))
  np.testing.assert_allclose(stats.benjamini_hochberg(p),
                             sp.false_discovery_control(p, method="bh"), rtol=1e-12)
  np.testing.assert_allclose(stats.adjust(p, "bh"), stats.benjamini_hochberg(p))
  with pytest.raises(ValueError, match="correction"):
    stats.adjust(p, "bonferroni-ish")


def test_format_p_prints_bounds_never_zero():
  assert stats.format_p(0.0) == "< 1e-4"
  assert stats.format_p(3e-7) == "< 1e-4"
  assert stats.format_p(0.0123) == "0.012"
  assert stats.format_p(0.00042) == "4.2e-04"
  assert stats.format_p(float("nan")) == "—"
  assert all(stats.format_p(p) != "0" for p in (0.0, 1e-300))


def test_mean_ci_matches_scipy_interval():
  v = [0.41, 0.43, 0.40]
  lo, hi = sp.t.interval(0.95, 2, loc=np.mean(v), scale=sp.sem(v))
  assert stats.mean_ci(v)[1:] == pytest.approx((lo, hi), rel=1e-12)


def test_permutation_test_over_queries_is_unchanged():
  """eval.py's randomisation test: the same draws as before the move to stats.py."""
  rng = np.random.default_rng(0)
  a, b = rng.random(50), rng.random(50)
  diff = a - b
  gen = np.random.default_rng(7)
  signs = gen.integers(0, 2, size=(1000, 50), dtype=np.int8) * 2 - 1
  hits = int(np.count_nonzero(np.abs(signs @ diff) / 50 >= abs(diff.mean()) - 1e-12))
  assert stats.permutation_test(a, b, n_permutations=1000, seed=7) == (1 + hits) / 1001
