"""Retrieval evaluation with trec_eval semantics, paired significance tests between systems,
comparison tables and bar charts. The tests themselves (and confidence intervals,
multiplicity corrections, run-level tests) live in `optical_jax.stats`."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from optical_jax.data.beir import ranked
from optical_jax.errors import InputError
from optical_jax.fileio import atomic_open
from optical_jax.stats import (DEFAULT_PERMUTATIONS, DEFAULT_SEED, paired_t_test,
                               permutation_test)

DEFAULT_MEASURES = ("AP", "nDCG@10", "P@5", "R@10", "R@100", "RR@10")
MARKERS = ("†", "‡", "§", "¶", "#")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
Results = Dict[str, Any]


def parse_measures(measures: Sequence[str]) -> List[Tuple[str, Any]]:
  """(name, ir_measures measure) for names such as "nDCG@10", "AP", "RR@10", "R@100"."""
  import ir_measures  # pylint: disable=g-import-not-at-top
  out = []
  for name in measures:
    try:
      out.append((name, ir_measures.parse_measure(name)))
    except (ValueError, NameError, SyntaxError, TypeError) as e:
      raise InputError(f"unknown measure {name!r} (ir_measures syntax, e.g. nDCG@10, AP, "
                       f"RR@10, R@100, P@5)") from e
  return out


def canonical_run(run: Run) -> Dict[str, Dict[str, float]]:
  """The run with each query's scores replaced by n, n-1, ..., 1 in trec_eval order.

  trec_eval orders a query's documents by score descending and breaks ties by doc_id
  descending, whatever the rank column says. pytrec_eval does the same, but some
  ir_measures providers do not (RR@k comes from the MS MARCO provider, which breaks ties
  by doc_id ascending). Rewriting tied scores as distinct rank-based values makes every
  provider see the trec_eval ranking; rank-based measures are otherwise unchanged.
  Queries with no documents are left out.
  """
  out = {}
  for qid, docs in run.items():
    items = ranked(docs)
    if items:
      n = len(items)
      out[qid] = {doc_id: float(n - r) for r, (doc_id, _) in enumerate(items)}
  return out


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES) -> Results:
  """Scores a run against qrels with ir_measures (pytrec_eval, i.e. trec_eval, semantics).

  Conventions (checked against pytrec_eval in tests/test_metrics.py):
    * ranking: score descending, ties broken by doc_id descending (trec_eval's order),
      for every measure including RR@k (see `canonical_run`);
    * unjudged documents count as non-relevant; relevance >= 1 is relevant;
    * the evaluated queries are exactly the queries in `qrels`: a judged query with no
      results scores 0 on every measure (trec_eval -c), and run queries without
      judgements are ignored; a query whose judgements are all non-relevant is kept
      (it scores 0), as trec_eval does;
    * aggregate = arithmetic mean over the evaluated queries. It equals the mean of
      pytrec_eval's per-query values whenever the run answers every judged query
      (pytrec_eval itself silently skips unanswered queries).

  Returns:
    {"aggregate": {measure: value}, "per_query": {measure: {qid: value}},
     "num_queries": judged queries, "num_missing": judged queries without results}.
  """
  import ir_measures  # pylint: disable=g-import-not-at-top
  if not qrels:
    raise ValueError("evaluate: qrels are empty")
  parsed = parse_measures(measures)
  names = {m: name for name, m in parsed}
  qids = list(qrels)
  canon = canonical_run(run)
  judged_run = {q: canon[q] for q in qids if q in canon}
  qrels_plain = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
  per_query: Dict[str, Dict[str, float]] = {name: {} for name, _ in parsed}
  if judged_run:
    for metric in ir_measures.iter_calc([m for _, m in parsed], qrels_plain, judged_run):
      if metric.query_id in qrels_plain:
        per_query[names[metric.measure]][metric.query_id] = float(metric.value)
  per_query = {name: {q: values.get(q, 0.0) for q in qids} for name, values in per_query.items()}
  aggregate = {name: float(np.mean(list(values.values()))) for name, values in per_query.items()}
  return {"aggregate": aggregate, "per_query": per_query, "num_queries": len(qids),
          "num_missing": sum(1 for q in qids if q not in judged_run)}


# ---------------------------------------------------------------------------
# Significance.


def _paired(system: Results, baseline: Results, measure: str) -> Tuple[np.ndarray, np.ndarray]:
  a, b = system["per_query"][measure], baseline["per_query"][measure]
  if set(a) != set(b):
    raise ValueError(f"{measure}: the systems were evaluated on different query sets "
                     f"({len(a)} vs {len(b)} queries); evaluate them with the same qrels")
  qids = sorted(a)
  return (np.array([a[q] for q in qids], np.float64), np.array([b[q] for q in qids], np.float64))


def significance(system: Results, baseline: Results, measures: Sequence[str], *,
                 n_permutations: int = DEFAULT_PERMUTATIONS,
                 seed: int = DEFAULT_SEED) -> Dict[str, Dict[str, float]]:
  """Paired tests of `system` vs `baseline` (both `evaluate` outputs) over the judged queries.

  Returns {measure: {"mean_diff", "t_test_p", "permutation_p", "n"}}.
  """
  out = {}
  for m in measures:
    a, b = _paired(system, baseline, m)
    out[m] = {"mean_diff": float(a.mean() - b.mean()) if a.size else float("nan"),
              "t_test_p": paired_t_test(a, b),
              "permutation_p": permutation_test(a, b, n_permutations=n_permutations, seed=seed),
              "n": int(a.size)}
  return out


# ---------------------------------------------------------------------------
# Tables and charts.


def _common_measures(results: Mapping[str, Results]) -> List[str]:
  systems = list(results.values())
  first = list(systems[0]["aggregate"])
  return [m for m in first if all(m in s["aggregate"] for s in systems)]


def comparison_table(results: Mapping[str, Results], baseline: Union[str, Sequence[str]],
                     measures: Optional[Sequence[str]] = None, *, test: str = "t-test",
                     alpha: float = 0.05, digits: int = 3, correction: str = "holm",
                     n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = DEFAULT_SEED
                     ) -> Tuple[str, Dict[str, Any]]:
  """A markdown table of systems x measures with significance markers, and the same as a dict.

  A value gets the i-th marker (†, ‡, §, ¶, #) when it differs significantly from the
  i-th baseline: the two-sided `test` ("t-test" or "permutation") over queries, its
  p-value adjusted over every test of the table (`correction`: 'holm', 'bh' or 'none'),
  below alpha; the direction is visible from the values. The best value of each column
  is bold. A legend line follows the table (`comparison_markdown` renders it from the
  dict alone).

  Returns:
    (markdown, data) where data is JSON-able: {"measures", "baselines", "test", "alpha",
    "correction", "tests", "n_permutations", "seed", "legend", "digits", "systems": {name:
    {"values": {m: v}, "num_queries": n, "vs": {baseline: {m: {"mean_diff", "t_test_p",
    "permutation_p", "p_adjusted", "n", "significant"}}}, "markers": {m: str}}}}.
  """
  from optical_jax import stats  # pylint: disable=g-import-not-at-top
  if not results:
    raise ValueError("comparison_table: no systems")
  baselines = [baseline] if isinstance(baseline, str) else list(baseline)
  if len(baselines) > len(MARKERS):
    raise ValueError(f"at most {len(MARKERS)} baselines, got {len(baselines)}")
  for b in baselines:
    if b not in results:
      raise ValueError(f"baseline {b!r} is not among the systems {list(results)}")
  if test not in ("t-test", "permutation"):
    raise ValueError(f"test must be 't-test' or 'permutation', got {test!r}")
  if correction not in ("none",) + tuple(stats.CORRECTIONS):
    raise ValueError(f"correction must be none, {', '.join(stats.CORRECTIONS)}, got {correction!r}")
  measures = list(measures) if measures is not None else _common_measures(results)
  for name, res in results.items():
    missing = [m for m in measures if m not in res["aggregate"]]
    if missing:
      raise ValueError(f"system {name!r} has no values for {missing}")
  key = "t_test_p" if test == "t-test" else "permutation_p"
  systems: Dict[str, Any] = {}
  family = []
  for name, res in results.items():
    entry = {"values": {m: res["aggregate"][m] for m in measures},
             "num_queries": res.get("num_queries", len(next(iter(res["per_query"].values())))),
             "vs": {}, "markers": {m: "" for m in measures}}
    for b in baselines:
      if b == name:
        continue
      tests = significance(res, results[b], measures, n_permutations=n_permutations, seed=seed)
      family += list(tests.values())
      entry["vs"][b] = tests
    systems[name] = entry
  raw = [t[key] for t in family]
  adjusted = raw if correction == "none" else stats.adjust(raw, correction)
  for t, p in zip(family, adjusted):
    t["p_adjusted"] = float(p)
    t["significant"] = bool(not math.isnan(p) and p < alpha)
  for entry in systems.values():
    for i, b in enumerate(baselines):
      for m, t in entry["vs"].get(b, {}).items():
        if t["significant"]:
          entry["markers"][m] += MARKERS[i]
  test_name = "paired t-test" if test == "t-test" else (
      f"paired randomisation test, {n_permutations} permutations, seed {seed}")
  adjust_text = ("" if correction == "none" else
                 f"; p-values {stats.CORRECTION_NAMES[correction]}-adjusted over the "
                 f"table's {len(family)} tests")
  legend = (" ".join(f"{MARKERS[i]} differs from {b}" for i, b in enumerate(baselines)) +
            f" ({test_name} over queries, two-sided{adjust_text}, p < {alpha:g}). "
            "Best per column in bold.")
  data = {"measures": measures, "baselines": baselines, "test": test, "alpha": alpha,
          "correction": correction, "tests": len(family),
          "n_permutations": n_permutations, "seed": seed, "legend": legend, "digits": digits,
          "systems": systems}
  return comparison_markdown(data), data


def comparison_markdown(data: Mapping[str, Any]) -> str:
  """The markdown table of a `comparison_table` dict (values, markers, legend)."""
  measures, systems = data["measures"], data["systems"]
  digits = int(data.get("digits", 3))
  best = {m: max(s["values"][m] for s in systems.values()) for m in measures}
  lines = ["| System | " + " | ".join(measures) + " |",
           "|---|" + "---:|" * len(measures)]
  for name, s in systems.items():
    cells = []
    for m in measures:
      v = s["values"][m]
      text = f"{v:.{digits}f}"
      if v == best[m]:
        text = f"**{text}**"
      cells.append(text + s["markers"][m])
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n" + data["legend"] + "\n"


def bar_chart(results: Mapping[str, Results], measures: Optional[Sequence[str]],
              path, *, title: Optional[str] = None, dpi: int = 150) -> None:
  """Grouped bars (one group per measure, one bar per system) written atomically as PNG.

  Uses the Agg canvas directly, so it never touches the global pyplot backend.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if not results:
    raise ValueError("bar_chart: no systems")
  measures = list(measures) if measures is not None else _common_measures(results)
  names = list(results)
  fig = Figure(figsize=(max(4.0, 1.2 * len(measures) * max(1, len(names)) / 2 + 2), 3.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(measures))
  width = 0.8 / max(1, len(names))
  for i, name in enumerate(names):
    values = [results[name]["aggregate"][m] for m in measures]
    bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1)
  ax.set_xticks(x)
  ax.set_xticklabels(measures)
  ax.set_ylabel("score")
  ax.set_ylim(0, max(1e-9, max(results[n]["aggregate"][m] for n in names for m in measures)) * 1.15)
  if title:
    ax.set_title(title)
  ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
