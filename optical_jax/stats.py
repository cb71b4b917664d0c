"""Statistical inference for comparisons of retrieval systems and of training recipes.

Two units of analysis, because a study's question has two sources of noise:

* **Queries** (`paired_t_test`, `permutation_test`, `query_level_test`): how two trained
  systems differ over a sample of queries. When each arm was trained several times
  (seeds), a query's difference is first averaged over the paired runs, so every query
  counts once (`seed_averaged`): counting (query, seed) pairs as independent
  observations would treat a rerun of training as new queries.
* **Training runs** (`run_level_test`): whether a recipe beats another over training
  runs. The unit is a cell of the study, one (language, seed) run of each arm; its
  value is the arm's mean over the cell's queries, and the test is a one-sample t-test
  on the paired cell differences (`scipy.stats.ttest_1samp`, df = runs - 1), beside an
  exact sign-flip test on the same differences. Languages and seeds are both sampled
  units here: the variance between languages enters the standard error, which is what
  a claim about languages the study did not see (the project's held-back languages)
  needs. It is conservative where every language gains alike, and it has few degrees of
  freedom (8 cells: 4 languages x 2 seeds give df = 7; the smallest exact sign-flip p
  is 2/256). It is the cluster-robust test of a query-level regression on a constant
  with the cells as clusters, weighting clusters equally.

Multiplicity (`holm`, `benjamini_hochberg`): p-values are adjusted within a family of
tests (a study's summary declares its families); an adjusted p-value is compared with
alpha directly. `format_p` prints p-values that underflow as bounds.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

DEFAULT_PERMUTATIONS = 10_000
DEFAULT_SEED = 0
# p-values below this print as "< 1e-4": a t-test's tail under it says nothing a reader
# can use, and a randomisation test cannot resolve it with 10,000 permutations.
P_FLOOR = 1e-4
# Sign-flip tests enumerate every flip up to this many units (2^16 = 65,536 patterns).
EXACT_MAX_UNITS = 16


def _constant(diff: np.ndarray) -> bool:
  return bool(np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())))


def one_sample_t_test(diff: Sequence[float]) -> float:
  """Two-sided p-value of mean(diff) = 0 (Student t, df = n - 1; scipy.stats.ttest_1samp).

  All differences 0 give p = 1; a constant non-zero difference (up to rounding) gives
  p = 0 (scipy gives nan there); fewer than two values give nan.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d = np.asarray(diff, np.float64)
  if d.size < 2:
    return float("nan")
  if _constant(d):
    return 1.0 if np.all(d == 0) else 0.0
  return float(stats.ttest_1samp(d, 0.0).pvalue)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided paired t-test p-value of a vs b (scipy.stats.ttest_rel): the one-sample
  test of a - b (identical systems p = 1, a constant non-zero difference p = 0)."""
  return one_sample_t_test(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def sign_flip_test(diff: Sequence[float], *, n_permutations: int = DEFAULT_PERMUTATIONS,
                   seed: int = DEFAULT_SEED, exact_max: int = EXACT_MAX_UNITS
                   ) -> Tuple[float, bool]:
  """Two-sided randomisation test of mean(diff) = 0 by flipping the signs of the units.

  Up to `exact_max` units every one of the 2^n sign patterns is enumerated and
  p = #{patterns with |mean| >= |observed|} / 2^n (the observed pattern included: the
  exact p, never 0). Beyond, `n_permutations` random patterns from
  numpy.random.default_rng(seed) give p = (1 + hits) / (1 + n_permutations).
  Returns (p, exact). No units give nan.
  """
  d = np.asarray(diff, np.float64)
  n = d.size
  if n == 0:
    return float("nan"), True
  observed = abs(d.mean())
  tol = 1e-12 * max(1.0, observed)
  if n <= exact_max:
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    hits = int(np.count_nonzero(np.abs(signs @ d) / n >= observed - tol))
    return hits / len(signs), True
  rng = np.random.default_rng(seed)
  hits, done = 0, 0
  block = max(1, min(n_permutations, (1 << 22) // n))
  while done < n_permutations:
    m = min(block, n_permutations - done)
    flips = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
    hits += int(np.count_nonzero(np.abs(flips @ d) / n >= observed - tol))
    done += m
  return (1 + hits) / (1 + n_permutations), False


def permutation_test(a: Sequence[float], b: Sequence[float], *,
                     n_permutations: int = DEFAULT_PERMUTATIONS,
                     seed: int = DEFAULT_SEED) -> float:
  """Two-sided paired randomisation test p-value of the mean difference over queries.

  Each permutation flips the sign of every per-query difference with probability 1/2
  (swapping the two systems' values for that query), drawn from
  numpy.random.default_rng(seed). p = (1 + #{|mean perm diff| >= |observed|}) /
  (1 + n_permutations), so p > 0 always and identical systems give p = 1.
  """
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if diff.size == 0:
    return float("nan")
  return sign_flip_test(diff, n_permutations=n_permutations, seed=seed, exact_max=0)[0]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
  """(mean, low, high): the mean and its two-sided Student-t confidence interval.

  The interval is mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n) with the sample standard
  deviation s (ddof=1), as `scipy.stats.t.interval(confidence, n - 1, loc=mean,
  scale=scipy.stats.sem(values))`. One value gives (value, nan, nan); none gives nans;
  identical values give a zero-width interval.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  x = np.asarray(list(values), np.float64)
  if x.size == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(x.mean())
  if x.size == 1:
    return mean, float("nan"), float("nan")
  sem = float(x.std(ddof=1)) / math.sqrt(x.size)
  half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * sem
  return mean, mean - half, mean + half


def seed_averaged(a_runs: Sequence[Mapping[str, Mapping[str, float]]],
                  b_runs: Sequence[Mapping[str, Mapping[str, float]]]) -> np.ndarray:
  """Per-query differences A - B averaged over paired runs: one value per query.

  `a_runs[i]` and `b_runs[i]` are one run each of the two arms (same seed), as
  {group: {query id: value}}; a group keeps queries of different datasets apart (e.g.
  the language: swa query 7 and hau query 7 are different queries). Every run pair must
  cover the same queries. Returns the differences in (group, query id) order.
  """
  if len(a_runs) != len(b_runs) or not a_runs:
    raise ValueError(f"{len(a_runs)} runs of A but {len(b_runs)} of B; pair them by seed")
  sums: Dict[Tuple[str, str], float] = {}
  count: Dict[Tuple[str, str], int] = {}
  for i, (a, b) in enumerate(zip(a_runs, b_runs)):
    if set(a) != set(b) or any(set(a[g]) != set(b[g]) for g in a):
      raise ValueError(f"run pair {i}: the arms were evaluated on different query sets")
    for g in a:
      for q in a[g]:
        k = (str(g), str(q))
        sums[k] = sums.get(k, 0.0) + float(a[g][q]) - float(b[g][q])
        count[k] = count.get(k, 0) + 1
  n_runs = set(count.values())
  if len(n_runs) != 1:
    raise ValueError("the run pairs cover different queries: every query needs every seed")
  return np.array([sums[k] / count[k] for k in sorted(sums)], np.float64)


def query_level_test(diff: Sequence[float], *, n_permutations: int = DEFAULT_PERMUTATIONS,
                     seed: int = DEFAULT_SEED) -> Dict[str, float]:
  """Tests over queries of seed-averaged differences (`seed_averaged`):
  {"mean_diff", "t_test_p", "permutation_p", "queries"}."""
  d = np.asarray(diff, np.float64)
  return {"mean_diff": float(d.mean()) if d.size else float("nan"),
          "t_test_p": one_sample_t_test(d),
          "permutation_p": sign_flip_test(d, n_permutations=n_permutations, seed=seed,
                                          exact_max=0)[0] if d.size else float("nan"),
          "queries": int(d.size)}


def run_level_test(diff: Sequence[float], *, n_permutations: int = DEFAULT_PERMUTATIONS,
                   seed: int = DEFAULT_SEED) -> Dict[str, float]:
  """Tests over training runs (the module docstring argues the design): `diff` holds one
  value per run cell, A's mean over the cell's queries minus B's.

  Returns {"mean_diff" (over runs, each cell weighted equally), "t_test_p" (one-sample
  t, df = runs - 1), "sign_flip_p" (exact up to `EXACT_MAX_UNITS` runs), "exact",
  "runs"}. Runs whose differences are all equal and non-zero give no t-test (nan): the
  t statistic is undefined, and a few runs that agree by chance (R@10 moves in steps of
  1/queries) are no proof; the sign-flip p still applies.
  """
  d = np.asarray(diff, np.float64)
  p, exact = sign_flip_test(d, n_permutations=n_permutations, seed=seed)
  t_p = one_sample_t_test(d)
  if d.size >= 2 and _constant(d) and np.any(d != 0):
    t_p = float("nan")
  return {"mean_diff": float(d.mean()) if d.size else float("nan"),
          "t_test_p": t_p, "sign_flip_p": p, "exact": exact, "runs": int(d.size)}


def _ordered(pvalues: Sequence[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(p as floats, an all-nan output, the indices of the non-nan p in ascending order)."""
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(~np.isnan(p))
  return p, np.full(p.shape, np.nan), ok[np.argsort(p[ok], kind="stable")]


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (family-wise error control), in input order.

  Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j +
  1) p_(j)). nan entries are left nan and do not count in m.
  """
  p, out, order = _ordered(pvalues)
  m = order.size
  if m:
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
  return out


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
  """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order.

  Sorted ascending: adjusted p_(i) = min_{j >= i} min(1, m p_(j) / j). nan entries are
  left nan and do not count in m.
  """
  p, out, order = _ordered(pvalues)
  m = order.size
  if m:
    scaled = np.minimum(1.0, p[order] * m / np.arange(1, m + 1))
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1]
  return out


CORRECTIONS = {"holm": holm, "bh": benjamini_hochberg}
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def adjust(pvalues: Sequence[float], method: str = "holm") -> np.ndarray:
  """`holm` or `bh` (Benjamini-Hochberg) adjusted p-values."""
  if method not in CORRECTIONS:
    raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {method!r}")
  return CORRECTIONS[method](pvalues)


def format_p(p: float) -> str:
  """A p-value for a table: 2 significant digits, '< 1e-4' below `P_FLOOR` (never 0),
  '—' for nan."""
  if p is None or (isinstance(p, float) and math.isnan(p)):
    return "—"
  if p < P_FLOOR:
    return "< 1e-4"
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
