"""Study pages rendered from a study's data files, and only from them.

One concept, over 600 lines: every page of results this project publishes is rendered
here from committed data (study pages, selection pages, the demo's table, the generated
blocks of the README and docs/results.md, among them the README's answer from the test
stages that `docs/decisive.json` declares), so that no number is typed by hand.

A study's results directory (a study workdir after `study.aggregate`, or its committed
copy under `docs/studies/NAME/`) holds:

    report.json          what the page is about: name, axes, seed axis, trained system,
                         comparisons, pooled axes, measures, primary measure, confidence,
                         alpha, correction, permutation settings, cell counts
    results.csv          one row per cell, dataset, system and metric (cell means)
    per_query.csv.gz     per-query values of the trained cells (summary measures); studies
                         aggregated before issue 24 have none, and their pages say so
    selection.json       the selection stage's choice, when the study had one

`render(directory)` returns summary.md's text (and the same numbers as a dict); `write`
writes summary.md and summary.json; `python -m optical_jax.report [--check] DIR...`
renders (or checks) committed pages; `publish` (`--publish WORKDIR PAGE --command CMD
[--cells ARCHIVE]`) makes a page from a study workdir and its cell records. Nothing here reads a training or evaluation
output: a page is a function of these files, so a test can regenerate every committed
page byte for byte.

Inference (`optical_jax.stats`): each comparison of two arms gets a run-level test (the
(language, seed) cells as units) and, with per-query values, a query-level test
(differences averaged over seeds, each query once). Tests form two families: the
primary family (the primary measure, pooled over `pool_axes` when the study pools,
else every context) and the secondary family (every other test); p-values are adjusted
within each family (`correction`, Holm by default). A star marks a difference whose
adjusted run-level t-test p is below alpha.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from optical_jax import fileio, paths, stats
from optical_jax.errors import InputError

META = "report.json"
RESULTS = "results.csv"
PER_QUERY = "per_query.csv.gz"
SELECTION = "selection.json"
SELECTION_MD = "selection.md"
SUMMARY = "summary.md"
PER_QUERY_COLUMNS = ("cell", "dataset", "system", "measure", "query", "value")
REFERENCE = "reference"


def _join(directory: str, name: str) -> str:
  return directory.rstrip("/") + "/" + name


# ---------------------------------------------------------------------------
# Data files.


def per_query_bytes(rows: Sequence[Tuple[str, str, str, str, str, float]]) -> bytes:
  """per_query.csv.gz's bytes: a gzip (mtime 0, so the same rows give the same bytes) of
  a CSV with `PER_QUERY_COLUMNS`, values as Python's shortest round-trip repr."""
  text = io.StringIO()
  w = csv.writer(text, lineterminator="\n")
  w.writerow(PER_QUERY_COLUMNS)
  for cell, dataset, system, measure, query, value in rows:
    w.writerow((cell, dataset, system, measure, query, repr(float(value))))
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:
    f.write(text.getvalue().encode("utf-8"))
  return buf.getvalue()


RESULTS_COLUMNS = ("cell", "kind", "system", "dataset", "metric", "value")


def _read_csv(path: str) -> List[Dict[str, str]]:
  """results.csv's rows (InputError naming the line when a column or a value is bad)."""
  text = fileio.read_text(path)
  if text is None:
    raise InputError("cannot read the study's results", path)
  reader = csv.DictReader(io.StringIO(text))
  missing = [c for c in RESULTS_COLUMNS if c not in (reader.fieldnames or ())]
  if missing:
    raise InputError(f"results: no column {', '.join(missing)} in the header", path)
  rows = list(reader)
  for line, r in enumerate(rows, start=2):
    try:
      float(r["value"])
    except (TypeError, ValueError):
      raise InputError(f"results line {line}: value {r['value']!r} is not a number",
                       path) from None
  return rows


def _read_per_query(path: str) -> Optional[Dict[Tuple[str, str, str], Dict[str, float]]]:
  """{(cell, dataset, measure): {query: value}} of the trained system, or None."""
  raw = fileio.read_bytes(path)
  if raw is None:
    return None
  out: Dict[Tuple[str, str, str], Dict[str, float]] = {}
  reader = csv.reader(io.StringIO(gzip.decompress(raw).decode("utf-8")))
  header = next(reader, None)
  if tuple(header or ()) != PER_QUERY_COLUMNS:
    raise InputError(f"per-query file: header {header} is not {list(PER_QUERY_COLUMNS)}", path)
  for line, row in enumerate(reader, start=2):
    if len(row) != len(PER_QUERY_COLUMNS):
      raise InputError(f"per-query file line {line}: {len(row)} fields, not "
                       f"{len(PER_QUERY_COLUMNS)}", path)
    cell, dataset, _, measure, query, value = row
    out.setdefault((cell, dataset, measure), {})[query] = float(value)
  return out


class StudyData:
  """A study's data files, read: meta (report.json), tidy rows, per-query values."""

  def __init__(self, meta: Mapping[str, Any], rows: Sequence[Mapping[str, str]],
               per_query: Optional[Mapping[Tuple[str, str, str], Mapping[str, float]]],
               selection: Optional[Mapping[str, Any]] = None):
    self.meta = dict(meta)
    self.rows = list(rows)
    self.per_query = per_query
    self.selection = selection
    self.axes: Dict[str, List[str]] = {a: [str(v) for v in vs] for a, vs in meta["axes"].items()}
    self.seed_axis = meta["seed_axis"]
    self.system = meta["system"]
    self.cells: Dict[str, Dict[str, str]] = {}      # trained cell key -> axis values
    self.value: Dict[Tuple[str, str, str], float] = {}   # (cell, dataset, measure)
    self.datasets: List[str] = []
    self.references: List[Tuple[str, str, str, Dict[str, float]]] = []
    refs: Dict[Tuple[str, str, str], Dict[str, float]] = {}
    for r in self.rows:
      if r["dataset"] not in self.datasets:
        self.datasets.append(r["dataset"])
      if r["kind"] == REFERENCE:
        refs.setdefault((r["cell"], r["dataset"], r["system"]), {})[r["metric"]] = float(r["value"])
        continue
      if r["system"] != self.system:
        continue
      self.cells.setdefault(r["cell"], {a: r[a] for a in self.axes})
      self.value[(r["cell"], r["dataset"], r["metric"])] = float(r["value"])
    self.references = [(c, d, s, v) for (c, d, s), v in refs.items()]


def load(directory: str) -> StudyData:
  """A study's data files (InputError naming the file when one is missing or bad)."""
  meta = fileio.read_json(_join(directory, META))
  if not isinstance(meta, dict):
    raise InputError("report.json is not a JSON object" if paths.exists(_join(directory, META))
                     else "no report.json: aggregate the study (study.py --aggregate) first",
                     _join(directory, META))
  for key in ("name", "axes", "seed_axis", "system", "compare", "pool_axes", "measures"):
    if key not in meta:
      raise InputError(f"report.json has no {key!r}", _join(directory, META))
  return StudyData(meta, _read_csv(_join(directory, RESULTS)),
                   _read_per_query(_join(directory, PER_QUERY)),
                   fileio.read_json(_join(directory, SELECTION)))


# ---------------------------------------------------------------------------
# Comparisons.


def _parse_arm(arm: str) -> Dict[str, str]:
  return dict(item.strip().split("=", 1) for item in str(arm).split(","))


def _generic(dataset: str, values: Mapping[str, str], pooled: Sequence[str]) -> str:
  """The dataset's name with each pooled axis value replaced by '*' (afriqa-swa -> afriqa-*)."""
  for a in pooled:
    dataset = re.sub(rf"(?<![A-Za-z0-9]){re.escape(values[a])}(?![A-Za-z0-9])", "*", dataset)
  return dataset


def comparisons(data: StudyData) -> List[Dict[str, Any]]:
  """Every test of `meta.compare`: per context (the axes not fixed by the arms, the seed
  and the pooled axes), then pooled over `pool_axes` (context '<axis>=pooled'); with
  run-level and (given per-query values) query-level results, families and adjusted
  p-values."""
  meta = data.meta
  out = _tests(data, ())
  if meta["pool_axes"]:
    out += _tests(data, tuple(meta["pool_axes"]))
  primary = primary_measure(meta)
  for t in out:
    pooled = meta["pool_axes"] and all(t["context"].get(a) == "pooled" for a in meta["pool_axes"])
    t["family"] = "primary" if t["measure"] == primary and (pooled or not meta["pool_axes"]) \
        else "secondary"
  method = meta.get("correction", "holm")
  for family in ("primary", "secondary"):
    members = [t for t in out if t["family"] == family]
    for key in ("run_t_p", "query_t_p"):
      adjusted = stats.adjust([t[key] for t in members], method)
      for t, p in zip(members, adjusted):
        t[key + "_adj"] = float(p)
  alpha = float(meta.get("alpha", 0.05))
  for t in out:
    t["significant"] = bool(not math.isnan(t["run_t_p_adj"]) and t["run_t_p_adj"] < alpha)
  return out


def primary_measure(meta: Mapping[str, Any]) -> str:
  measures = list(meta["measures"])
  return meta.get("primary_measure") or ("nDCG@10" if "nDCG@10" in measures else measures[0])


def _tests(data: StudyData, pooled: Tuple[str, ...]) -> List[Dict[str, Any]]:
  meta = data.meta
  seed_axis = data.seed_axis
  run_axes = [seed_axis] + list(pooled)
  n_perm, perm_seed = int(meta.get("n_permutations", stats.DEFAULT_PERMUTATIONS)), \
      int(meta.get("permutation_seed", stats.DEFAULT_SEED))
  out = []
  for a_text, b_text in meta["compare"]:
    a_arm, b_arm = _parse_arm(a_text), _parse_arm(b_text)
    fixed = set(a_arm) | set(b_arm)
    context_axes = [k for k in data.axes if k not in fixed and k not in run_axes]
    contexts: Dict[Tuple[str, ...], Dict[str, str]] = {}
    for values in data.cells.values():
      ctx = {k: values[k] for k in context_axes}
      contexts.setdefault(tuple(ctx.values()), ctx)

    def match(values, arm, ctx):
      return all(values[k] == v for k, v in arm.items()) and \
          all(values[k] == v for k, v in ctx.items())

    for ctx in contexts.values():
      run_of = lambda v: tuple(v[k] for k in run_axes)
      a_cells = {run_of(v): k for k, v in data.cells.items() if match(v, a_arm, ctx)}
      b_cells = {run_of(v): k for k, v in data.cells.items() if match(v, b_arm, ctx)}
      runs = [r for r in a_cells if r in b_cells]
      if not runs:
        continue
      names = list(dict.fromkeys(_generic(d, data.cells[a_cells[r]], pooled)
                                 for r in runs for d in data.datasets
                                 if any((a_cells[r], d, m) in data.value for m in meta["measures"])))
      for name in names:
        for measure in meta["measures"]:
          test = _one_test(data, a_cells, b_cells, runs, name, measure, pooled, n_perm, perm_seed)
          if test is None:
            continue
          context = dict(ctx, **{k: "pooled" for k in pooled})
          out.append({"a": a_text, "b": b_text, "context": context, "dataset": name,
                      "measure": measure, "seeds": len({r[0] for r in runs}), **test})
  return out


def _one_test(data: StudyData, a_cells, b_cells, runs, name, measure, pooled, n_perm,
              perm_seed) -> Optional[Dict[str, Any]]:
  """Run-level and query-level tests of one comparison; None when a run lacks the
  dataset or measure (partial results get no test)."""
  diffs, a_q, b_q = [], [], []
  for r in runs:
    a_key, b_key = a_cells[r], b_cells[r]
    found = [d for d in data.datasets if _generic(d, data.cells[a_key], pooled) == name
             and (a_key, d, measure) in data.value and (b_key, d, measure) in data.value]
    if not found:
      return None
    for d in found:
      diffs.append(data.value[(a_key, d, measure)] - data.value[(b_key, d, measure)])
      if data.per_query is not None:
        pa = data.per_query.get((a_key, d, measure))
        pb = data.per_query.get((b_key, d, measure))
        if pa is not None and pb is not None:
          a_q.append({d: pa})
          b_q.append({d: pb})
  run = stats.run_level_test(diffs, n_permutations=n_perm, seed=perm_seed)
  out = {"mean_diff": run["mean_diff"], "runs": run["runs"], "run_t_p": run["t_test_p"],
         "run_sign_flip_p": run["sign_flip_p"], "run_sign_flip_exact": run["exact"],
         "queries": 0, "query_mean_diff": float("nan"), "query_t_p": float("nan"),
         "query_permutation_p": float("nan")}
  if a_q and len(a_q) == len(diffs):
    q = stats.query_level_test(_merge_seeds(a_q, b_q), n_permutations=n_perm, seed=perm_seed)
    out.update(queries=q["queries"], query_mean_diff=q["mean_diff"], query_t_p=q["t_test_p"],
               query_permutation_p=q["permutation_p"])
  return out


def _merge_seeds(a_q: Sequence[Mapping[str, Mapping[str, float]]],
                 b_q: Sequence[Mapping[str, Mapping[str, float]]]) -> np.ndarray:
  """Seed-averaged per-query differences over runs that may hold different datasets
  (pooled languages): runs are grouped by dataset, averaged within each group."""
  groups: Dict[str, Tuple[list, list]] = {}
  for a, b in zip(a_q, b_q):
    (d, pa), = a.items()
    groups.setdefault(d, ([], []))
    groups[d][0].append({d: pa})
    groups[d][1].append({d: b[d]})
  return np.concatenate([stats.seed_averaged(*groups[d]) for d in groups])


# ---------------------------------------------------------------------------
# The page.


def selection_markdown(result: Mapping[str, Any]) -> str:
  """selection.md (from selection.json): the candidates ranked, the choice, the data it
  was made on."""
  axis, measure = result["axis"], result["measure"]
  ranked = sorted(result["candidates"], key=lambda c: -c["score"])
  lines = [f"# Selection of `{axis}` for study `{result['study']}`", "",
           f"Rule: {result['rule']}. Chosen: **{axis}={result['chosen']}**; the test stage "
           f"also runs {', '.join(f'{axis}={v}' for v in result['keep']) or 'nothing else'}.",
           "", "Selection grid: " + "; ".join(f"{a} = {', '.join(str(x) for x in v)}"
                                              for a, v in result["selection_axes"].items()
                                              if a != axis) + ".", "",
           f"| {axis} | mean {measure} | (cell, dataset) values | each value |",
           "|---|---:|---:|---|"]
  for c in ranked:
    each = []
    for key, per in c["cells"].items():
      where = ",".join(p for p in key.split(",") if not p.startswith(f"{axis}="))
      each += [f"{where} {dataset}: {v:.3f}" for dataset, v in per.items()]
    lines.append(f"| {c['value']} | {c['score']:.4f} | {c['n']} | {'; '.join(each)} |")
  if "margin" in result:   # selections made before the margins were recorded have none
    lines += ["", f"Margins: {result['margin']}.", "",
              f"| {axis} | minus {result['chosen']} | queries | changed | t-test p |",
              "|---|---:|---:|---:|---:|"]
    for c in ranked:
      m = c.get("vs_chosen")
      if m:
        lines.append(f"| {c['value']} | {m['mean_diff']:+.4f} | {m['queries']} | "
                     f"{m['queries_changed']} | {stats.format_p(m['t_test_p'])} |")
  lines += ["", "Files read (queries and judgements; none is a test file):", ""]
  lines += [f"- `{f}`" for f in result["files"]]
  return "\n".join(lines) + "\n"


def _fmt(v: Optional[float], digits: int = 3) -> str:
  return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def render(directory: str) -> Tuple[str, Dict[str, Any]]:
  """summary.md's text from the directory's data files, and the same numbers as a dict."""
  return render_data(load(directory))


def render_data(data: StudyData) -> Tuple[str, Dict[str, Any]]:
  meta = data.meta
  conf = float(meta.get("confidence", 0.95))
  alpha = float(meta.get("alpha", 0.05))
  pct = f"{100 * conf:g}%"
  shown_axes = [a for a in data.axes if a != data.seed_axis]
  measures = list(meta["measures"])
  lines = [f"# Study `{meta['name']}`", "",
           f"{meta['finished']} of {meta['cells']} cells finished. Values: mean over seeds "
           f"(`{data.seed_axis}`) ± half-width of the {pct} confidence interval (Student t; "
           "— with one seed), then the number of seeds. Rendered by `python -m "
           "optical_jax.report` from this directory's data files.", ""]
  out: Dict[str, Any] = {"name": meta["name"], "finished": meta["finished"],
                         "cells": meta["cells"], "confidence": conf, "datasets": {},
                         "comparisons": []}
  if data.selection:
    sel = data.selection
    lines += [f"The test stage's `{sel['axis']}` values were chosen on selection data alone "
              f"(`selection.md`): **{sel['axis']}={sel['chosen']}** by mean "
              f"{sel['measure']}, beside {', '.join(str(v) for v in sel['keep']) or 'no kept value'}.", ""]
    out["selection"] = {"axis": sel["axis"], "chosen": sel["chosen"], "keep": sel["keep"]}
  arms: Dict[Tuple[str, ...], List[str]] = {}
  for key, values in data.cells.items():
    arms.setdefault(tuple(values[a] for a in shown_axes), []).append(key)
  for dataset in data.datasets:
    lines += [f"## {dataset}", "",
              "| " + " | ".join(shown_axes + measures + ["seeds"]) + " |",
              "|" + "---|" * len(shown_axes) + "---:|" * (len(measures) + 1)]
    entry = {"arms": [], "references": {}}
    for arm_values, keys in arms.items():
      cells, seen, arm_stats = [], 0, {}
      for m in measures:
        vals = [data.value[(k, dataset, m)] for k in keys if (k, dataset, m) in data.value]
        seen = max(seen, len(vals))
        mean, lo, hi = stats.mean_ci(vals, conf)
        arm_stats[m] = {"mean": mean, "low": lo, "high": hi, "n": len(vals)}
        half = (hi - lo) / 2 if not math.isnan(lo) else float("nan")
        cells.append(f"{_fmt(mean)} ± {_fmt(half)}" if not math.isnan(half) else _fmt(mean))
      if not seen:
        continue
      lines.append("| " + " | ".join(list(arm_values) + cells + [str(seen)]) + " |")
      entry["arms"].append({"values": dict(zip(shown_axes, arm_values)), "stats": arm_stats})
    refs = [r for r in data.references if r[1] == dataset]
    if refs:
      lines += ["", "References (no training):", "",
                "| system | " + " | ".join(measures) + " |", "|---|" + "---:|" * len(measures)]
      for ref_key, _, system, agg in refs:
        label = system + (f" ({ref_key.split(',', 1)[1]})" if "," in ref_key else "")
        lines.append(f"| {label} | " + " | ".join(_fmt(agg.get(m, float("nan")))
                                                  for m in measures) + " |")
        entry["references"][label] = {m: agg.get(m) for m in measures}
    lines.append("")
    out["datasets"][dataset] = entry
  comps = comparisons(data)
  if comps:
    lines += _comparison_section(data, comps, alpha)
    out["comparisons"] = comps
  return "\n".join(lines), out


def _comparison_section(data: StudyData, comps: Sequence[Mapping[str, Any]],
                        alpha: float) -> List[str]:
  meta = data.meta
  method = stats.CORRECTION_NAMES[meta.get("correction", "holm")]
  n_perm = int(meta.get("n_permutations", stats.DEFAULT_PERMUTATIONS))
  primary = primary_measure(meta)
  pooled = ", ".join(meta["pool_axes"])
  primary_text = (f"{primary} pooled over {pooled}" if meta["pool_axes"]
                  else f"{primary} in every context")
  query_note = ("Query level: per-query differences averaged over seeds, each query once "
                f"(paired t-test; randomisation test, {n_perm} sign flips, seed "
                f"{int(meta.get('permutation_seed', stats.DEFAULT_SEED))})."
                if data.per_query is not None else
                "Query level: not available (this study was aggregated before per-query "
                "values were kept beside its results; its cells are not on this machine).")
  lines = ["## Paired comparisons", "",
           "The unit is the training run: each (context, seed) cell of arm A is paired with "
           "B's, and its difference of means over the cell's queries is one observation "
           "(`mean A − B` is their mean). Run level: one-sample t-test over those "
           "differences (df = runs − 1) and an exact sign-flip test. " + query_note, "",
           f"p-values are {method}-adjusted within two families: **primary** "
           f"({primary_text}) and **secondary** (every other test). * marks a difference "
           f"whose adjusted run-level t-test p is below {alpha:g}; p-values under 1e-4 print "
           "as bounds.", ""]
  for family in ("primary", "secondary"):
    rows = [c for c in comps if c["family"] == family]
    if not rows:
      continue
    lines += [f"### {family.capitalize()} family ({len(rows)} tests)", "",
              "| A | B | dataset | context | measure | mean A − B | runs | run t p | "
              f"run {method} p | sign-flip p | queries | query t p | query {method} p |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in rows:
      star = "*" if c["significant"] else ""
      ctx = ",".join(f"{k}={v}" for k, v in c["context"].items()) or "—"
      f = stats.format_p
      lines.append(f"| {c['a']} | {c['b']} | {c['dataset']} | {ctx} | {c['measure']} | "
                   f"{c['mean_diff']:+.3f}{star} | {c['runs']} | {f(c['run_t_p'])} | "
                   f"{f(c['run_t_p_adj'])} | {f(c['run_sign_flip_p'])} | "
                   f"{c['queries'] or '—'} | {f(c['query_t_p'])} | {f(c['query_t_p_adj'])} |")
    lines.append("")
  return lines


def _strict(tree: Any) -> Any:
  """`tree` with nan floats as None (null), so summary.json is strict JSON."""
  if isinstance(tree, float) and math.isnan(tree):
    return None
  if isinstance(tree, dict):
    return {k: _strict(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_strict(v) for v in tree]
  return tree


def section(markdown: str, heading: str) -> str:
  """The lines of `markdown` from the heading starting with `heading` up to the next
  heading ('' when absent): e.g. the primary family's table, which `study.py` prints."""
  lines = markdown.splitlines()
  start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
  if start is None:
    return ""
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
  return "\n".join(lines[start:end]).strip()


def write(directory: str) -> str:
  """Renders and writes summary.md and summary.json; returns the markdown."""
  markdown, numbers = render(directory)
  _write_rendered(directory, markdown, numbers)
  return markdown


def _write_rendered(directory: str, markdown: str, numbers: Dict[str, Any]) -> None:
  """summary.md, summary.json, and selection.md when there is a selection.json (else
  none)."""
  fileio.write_text(_join(directory, SUMMARY), markdown)
  fileio.write_json(_join(directory, "summary.json"), _strict(numbers))
  selection = fileio.read_json(_join(directory, SELECTION))
  if selection:
    fileio.write_text(_join(directory, SELECTION_MD), selection_markdown(selection))
  else:
    paths.remove(_join(directory, SELECTION_MD))


PLOTS = "plots"


def publish(source: str, page: str, command: str, cells: str = "") -> Tuple[str, str]:
  """Makes `page` a study page from an aggregated study workdir `source`: copies the data
  files a page renders from (report.json with `command`, the command that made the
  study, added; results.csv; per_query.csv.gz and selection.json when the study has
  them; plots/*.png), moves the cell records from the archive `cells` (`study.py
  --archive`) into `page/cells/`, and renders summary.md / selection.md. The page's
  earlier data files and plots are replaced, its earlier cell records kept (a record
  moved in replaces the one of the same cell). Returns (summary markdown, "N of M cells
  finished").

  Everything is read and rendered before the page is touched: InputError, with the page
  unchanged, when `source` is not an aggregated study (or is `page`), its data do not
  render, `command` is empty, or the archive holds a record of a cell the study did not
  aggregate (re-aggregate after the last cell, or give the right archive)."""
  from optical_jax import cell_archive  # pylint: disable=g-import-not-at-top
  if paths.resolve(source).rstrip("/") == paths.resolve(page).rstrip("/"):
    raise InputError("publish a study workdir into another folder, not onto itself", page)
  study = load(source)
  meta = study.meta
  if not command.strip():
    raise InputError("say which command made the study (--command)", _join(source, META))
  markdown, numbers = render_data(study)
  data = {name: fileio.read_bytes(_join(source, name)) for name in (RESULTS, PER_QUERY, SELECTION)}
  plots = _join(source, PLOTS)
  pngs = {n: fileio.read_bytes(_join(plots, n))
          for n in sorted(paths.listdir(plots) if paths.isdir(plots) else []) if n.endswith(".png")}
  records = []
  if cells:
    if not paths.isdir(cells):
      raise InputError("no such cell archive", cells)
    if paths.is_url(cells) != paths.is_url(page):
      raise InputError("the cell archive and the page must both be local or both URLs", cells)
    keys = {r["cell"] for r in study.rows} | {
        f"select/{k}" for c in (study.selection or {}).get("candidates", []) for k in c["cells"]}
    records = [rel for rel in paths.walk_files(cells) if rel.endswith(cell_archive.SUFFIX)]
    stray = [rel for rel in records if rel[:-len(cell_archive.SUFFIX)] not in keys]
    if stray:
      raise InputError(f"{len(stray)} record(s) of cells the study did not aggregate, e.g. "
                       f"{stray[0]}", cells)
  paths.makedirs(page)
  fileio.write_json(_join(page, META), {**meta, "command": command.strip()})
  for name, blob in data.items():
    if blob is not None:
      fileio.write_bytes(_join(page, name), blob)
    else:
      paths.remove(_join(page, name))
  paths.rmtree(_join(page, PLOTS))
  for name, blob in pngs.items():
    paths.makedirs(_join(page, PLOTS))
    fileio.write_bytes(_join(page, f"{PLOTS}/{name}"), blob)
  for rel in records:
    target = _join(page, f"cells/{rel}")
    paths.makedirs(paths.dirname(target))
    paths.replace(_join(cells, rel), target)
  _write_rendered(page, markdown, numbers)
  counts = f"{meta.get('finished', '?')} of {meta.get('cells', '?')} cells finished"
  return markdown, counts


def check(directory: str) -> Optional[str]:
  """None when the committed summary.md (and selection.md, with a selection.json) is
  what its data renders, else the first differing line."""
  pages = [(SUMMARY, render(directory)[0])]
  selection = fileio.read_json(_join(directory, SELECTION))
  if selection:
    pages.append((SELECTION_MD, selection_markdown(selection)))
  for name, want in pages:
    have = fileio.read_text(_join(directory, name)) or ""
    if have == want:
      continue
    for i, (x, y) in enumerate(zip(have.splitlines() + [""], want.splitlines() + [""]), 1):
      if x != y:
        return f"{name} line {i}: committed {x!r}, rendered {y!r}"
    return f"{name}: lengths differ"
  return None


# ---------------------------------------------------------------------------
# The demo's tables and the README's generated blocks.

DEMO_JSON = "demo.json"
# The questions the README's answer block puts to the studies: ((A, B) pairs that ask
# it, what it asks). The ranking term on MaxSim rows (the ColBERT settings'
# `ranking-maxsim` arms) asks the same questions as the pooled one.
QUESTIONS = (
    ((("loss=ot-ranking", "loss=ranking"), ("loss=ot-ranking-maxsim", "loss=ranking-maxsim")),
     "token-level OT added to the ranking term, over the ranking term alone"),
    ((("loss=ot", "loss=sentence"),),
     "the paper's plain OT loss over sentence-level distillation"),
    ((("loss=ranking", "loss=sentence"), ("loss=ranking-maxsim", "loss=sentence")),
     "the ranking term alone over sentence-level distillation"),
    ((("loss=ot-ranking", "loss=sentence"), ("loss=ot-ranking-maxsim", "loss=sentence")),
     "OT + ranking over sentence-level distillation"),
)
USAGE = ("usage: python -m optical_jax.report [--check] DIR... | --readme [--check] PAGE.md..."
         " | --demo OUT --settings 'e5 ...' --lang L --seconds N"
         " | --publish WORKDIR PAGE --command CMD [--cells ARCHIVE]")


def demo_data(out: str, settings: Sequence[str], lang: str, seconds: int) -> Dict[str, Any]:
  """demo.json: each setting's comparison table data (eval-SETTING/comparison.json, less
  this machine's paths) and its shipped loss, the language and the wall time."""
  data: Dict[str, Any] = {"lang": lang, "seconds": int(seconds), "settings": {}}
  for setting in settings:
    comp = fileio.read_json(_join(out, f"eval-{setting}/comparison.json"))
    shipped = (fileio.read_text(_join(out, f"eval-{setting}/shipped_loss.txt")) or "").strip()
    if not comp or not shipped:
      raise InputError(f"no finished evaluation of setting {setting}", _join(out, f"eval-{setting}"))
    comp = dict(comp, dataset={k: str(v).rsplit("/", 1)[-1] for k, v in comp["dataset"].items()})
    data["settings"][setting] = {"shipped_loss": shipped, "comparison": comp}
  return data


def demo_markdown(data: Mapping[str, Any], level: int = 1) -> str:
  """The demo's results page (results.md; the README's demo block one heading level down)."""
  from optical_jax import metrics  # pylint: disable=g-import-not-at-top
  h = "#" * level
  first = next(iter(data["settings"].values()))["comparison"]
  lines = [f"{h} optical-jax demo: AfriQA-CLIR {data['lang']} test, full search over the "
           "English passage pool", "",
           f"{first['num_judged_queries']} judged queries, {first['num_passages']} passages. One "
           "training run (seed 0) per loss, so the markers compare these trained models over "
           "queries; whether one loss beats another over training runs is what the studies "
           f"test. The run took {data['seconds'] // 60} min {data['seconds'] % 60} s on the "
           "machine that made it (set-up included).", ""]
  for setting, entry in data["settings"].items():
    shipped = entry["shipped_loss"]
    row = f"{setting}-{shipped.replace('+', '-')}"
    lines += [f"{h}# {setting}", "",
              f"Shipped loss of `configs/swa_{setting}.py`: `{shipped}` (row `{row}`).", "",
              metrics.comparison_markdown(entry["comparison"]).rstrip("\n"), ""]
  return "\n".join(lines)


def write_demo(out: str, settings: Sequence[str], lang: str, seconds: int) -> str:
  data = demo_data(out, settings, lang, seconds)
  fileio.write_json(_join(out, DEMO_JSON), data)
  text = demo_markdown(data)
  fileio.write_text(_join(out, "results.md"), text)
  return text


Tested = Dict[str, Tuple[StudyData, List[Dict[str, Any]]]]


def _tested(directory: str, memo: Optional[Tested] = None
            ) -> Tuple[StudyData, List[Dict[str, Any]]]:
  """A study page's data and `comparisons`, computed once per `memo` (one render of the
  README's blocks reads each page once)."""
  key = directory.rstrip("/")
  if memo is not None and key in memo:
    return memo[key]
  data = load(key)
  out = (data, comparisons(data))
  if memo is not None:
    memo[key] = out
  return out


def _answers(study_dirs: Sequence[str], names: Sequence[str], memo: Optional[Tested] = None):
  """For each of `QUESTIONS`: the primary tests of every study that asks it, and how many
  the corrected run-level test holds in (rows: (question index, study, context, test))."""
  asks = {pair: i for i, (pairs, _) in enumerate(QUESTIONS) for pair in pairs}
  rows, count = [], [[0, 0, 0] for _ in QUESTIONS]   # above, tested, below
  for directory, name in zip(study_dirs, names):
    for c in _tested(directory, memo)[1]:
      i = asks.get((c["a"], c["b"]))
      if c["family"] != "primary" or i is None:
        continue
      if not math.isnan(c["run_t_p"]):   # one run (or tied runs): nothing to test
        count[i][0] += int(c["significant"] and c["mean_diff"] > 0)
        count[i][1] += 1
        count[i][2] += int(c["significant"] and c["mean_diff"] < 0)
      ctx = ",".join(f"{k}={v}" for k, v in c["context"].items())
      rows.append((i, name, ctx, c))
  rows.sort(key=lambda r: r[0])
  return rows, count


def answer_markdown(study_dirs: Sequence[str], names: Sequence[str],
                    memo: Optional[Tested] = None) -> str:
  """The README's answer block: for each of `QUESTIONS`, how many of the studies' primary
  tests of it the corrected run-level test holds in."""
  rows, count = _answers(study_dirs, names, memo)
  lines = []
  for i, (_, text) in enumerate(QUESTIONS):
    held, total, below = count[i]
    untested = sum(1 for r in rows if r[0] == i) - total
    if total or untested:
      verdict = "holds in" if held else "holds in none of"
      lines.append(f"- **{text[0].upper() + text[1:]}**: the corrected run-level test "
                   f"{verdict} {f'{held} of ' if held else ''}{total} primary test(s)"
                   + (f"; significantly below in {below}" if below else "")
                   + (f"; {untested} more with one run per arm cannot be tested" if untested
                      else "") + ".")
  return "\n".join(lines)


def answer_table_markdown(study_dirs: Sequence[str], names: Sequence[str],
                          link_base: str = "docs/studies", memo: Optional[Tested] = None) -> str:
  """Every primary test behind the answer block, one row each, linking the study pages
  (`link_base`: the studies folder relative to the page holding the table)."""
  rows, _ = _answers(study_dirs, names, memo)
  lines = ["| question | study | dataset | setting | measure | mean A − B | runs | "
           "run t p | run p, adjusted | A above B |", "|---|---|---|---|---|---:|---:|---:|---:|---|"]
  for _, name, ctx, c in rows:
    lines.append(f"| {c['a']} vs {c['b']} | [{name}]({link_base}/{name}/summary.md) | "
                 f"{c['dataset']} | {ctx} | {c['measure']} | {c['mean_diff']:+.3f} | {c['runs']} | "
                 f"{stats.format_p(c['run_t_p'])} | {stats.format_p(c['run_t_p_adj'])} | "
                 f"{_verdict(c)} |")
  return "\n".join(lines)


DECISIVE_JSON = "docs/decisive.json"
DECISIVE_KEYS = ("setting", "label", "page", "seeds", "arms")
_SAYS = {"yes": "OT + ranking significantly above", "below": "OT + ranking significantly below",
         "no": "no significant difference", "—": "not testable (one run per arm, or tied runs)"}
# How the decisive line names a setting's pairs when their verdicts differ, in this order.
_PARTLY = {"yes": "for {} only", "below": "significantly below for {}", "no": "not for {}",
           "—": "not testable for {}"}


def decisive_studies(root: str) -> List[Dict[str, Any]]:
  """`docs/decisive.json`'s studies (InputError naming the file when one is malformed)."""
  path = _join(root, DECISIVE_JSON)
  spec = fileio.read_json(path)
  studies = spec.get("studies") if isinstance(spec, dict) else None
  if not studies:
    raise InputError("no 'studies' list", path)
  for i, s in enumerate(studies):
    missing = [k for k in DECISIVE_KEYS if not isinstance(s, dict) or k not in s]
    if missing:
      raise InputError(f"study {i + 1}: no {', '.join(missing)}", path)
  return studies


def decisive_markdown(root: str, link_base: str = "docs/studies",
                      memo: Optional[Tested] = None) -> str:
  """The README's answer to "does token-level OT add anything over the ranking term?",
  from the test stages `docs/decisive.json` declares: for each, the pooled primary tests
  of the first of `QUESTIONS` on its published page (or why it cannot answer yet), and a
  first line: yes, no, or not answered yet, as the corrected run-level tests give it. A
  setting answers when its page has every cell and a testable pair; Holm corrects within
  each study, and the line says that nothing corrects across the settings. "Yes" needs
  every pair of every setting to hold (a setting can ask with the ranking term on pooled
  vectors and on MaxSim rows); a setting where some pairs hold and others do not (or are
  untestable) is named with each pair's verdict."""
  studies = decisive_studies(root)
  pairs = QUESTIONS[0][0]
  lines, answered, above, full, below, partial = [], 0, 0, 0, 0, []
  for s in studies:
    page = _join(root, f"docs/studies/{s['page']}")
    if not paths.exists(_join(page, META)):
      lines.append(f"- **{s['label']}**, {s['seeds']} seeds: no page yet.")
      continue
    data, tested = _tested(page, memo)
    declared = {"setting": [s["setting"]], "loss": s["arms"].split("+"),
                "seed": [str(i) for i in range(int(s["seeds"]))]}
    differ = [a for a, v in declared.items() if data.axes.get(a) != v]
    if differ:
      raise InputError(f"the page's {', '.join(differ)} axes are not what {DECISIVE_JSON} "
                       f"declares for {s['setting']}", _join(page, META))
    tests = [c for c in tested if c["family"] == "primary"
             and (c["a"], c["b"]) in pairs]
    if not tests:
      raise InputError(f"no primary test of {' or '.join(' vs '.join(p) for p in pairs)}",
                       _join(page, META))
    verdicts = [_verdict(c) for c in tests]
    finished, cells = data.meta.get("finished"), data.meta.get("cells")
    complete = finished == cells
    if complete and any(v != "—" for v in verdicts):
      answered += 1
      above += "yes" in verdicts
      full += all(v == "yes" for v in verdicts)
      if "yes" in verdicts and len(set(verdicts)) > 1:   # named with its pairs, below too
        partial.append(f"in {s['label'].split(' (', 1)[0]} " + ", ".join(
            _PARTLY[v].format(_series([_pair(c) for c, w in zip(tests, verdicts) if w == v]))
            for v in _PARTLY if v in verdicts))
      else:
        below += "below" in verdicts
    said = "; ".join(
        f"{_pair(c)} = {c['mean_diff']:+.3f} "
        f"{c['measure']} over {c['runs']} runs, run-level p {stats.format_p(c['run_t_p'])} "
        f"(Holm {stats.format_p(c['run_t_p_adj'])}): {_SAYS[v]}" for c, v in zip(tests, verdicts))
    lines.append(f"- **{s['label']}** ([{s['page']}]({link_base}/{s['page']}/summary.md)"
                 + ("" if complete else f", only {finished} of {cells} cells") + f"): {said}.")
  total = len(studies)
  lowered = (f"; significantly below it in {below}" if below else "") + "".join(
      f"; {p}" for p in partial)
  caveat = " (Holm within each study; nothing corrects across the settings)"
  every = f"all {total} settings" if total != 1 else "the 1 setting"
  if answered < total:
    first = (f"**Not answered yet**: {answered} of the {total} settings "
             f"{'has' if answered == 1 else 'have'} a finished, "
             "testable test stage" + (f"; the corrected run-level test puts OT + ranking above "
                                      f"the ranking term alone in {above} of them{lowered}"
                                      if answered else "") + ".")
  elif above == 0:
    first = (f"**No**: in none of the {total} settings does the corrected run-level test put "
             f"OT + ranking above the ranking term alone{lowered}{caveat}.")
  elif full == total:
    first = (f"**Yes**: in {every} the corrected run-level test puts OT + ranking "
             f"above the ranking term alone{lowered}{caveat}.")
  elif above < total:
    first = (f"**In {above} of {total} settings only**: there the corrected run-level test "
             f"puts OT + ranking above the ranking term alone, elsewhere not"
             f"{lowered}{caveat}.")
  else:
    first = (f"**In {every}, but not for every ranking term**: the corrected run-level test "
             f"puts OT + ranking above the ranking term alone{lowered}{caveat}.")
  return "\n".join([first, ""] + lines)


def _series(items: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pair(c: Mapping[str, Any]) -> str:
  """'ot-ranking − ranking': a test's two arms, without the axis name."""
  return f"{c['a'].split('=', 1)[1]} − {c['b'].split('=', 1)[1]}"


def _verdict(c: Mapping[str, Any]) -> str:
  """'yes' (A significantly above B), 'below' (significantly below), 'no', '—' (untestable)."""
  if math.isnan(c["run_t_p"]):
    return "—"
  if not c["significant"]:
    return "no"
  return "yes" if c["mean_diff"] > 0 else "below"


def _blocks(root: str, page_dir: str) -> Dict[str, str]:
  """The generated blocks, rendered from the committed data under the repository `root`
  for a page in `page_dir` (links relative to it)."""
  import glob as glob_lib  # pylint: disable=g-import-not-at-top
  dirs = sorted(d.rstrip("/") for d in glob_lib.glob(_join(root, "docs/studies/*/"))
                if paths.exists(_join(d, META)))
  names = [d.rsplit("/", 1)[-1] for d in dirs]
  link_base = os.path.relpath(_join(root, "docs/studies"), page_dir).replace(os.sep, "/")
  memo: Tested = {}
  out = {"answer": answer_markdown(dirs, names, memo),
         "answer-table": answer_table_markdown(dirs, names, link_base, memo),
         "decisive": decisive_markdown(root, link_base, memo)}
  demo = fileio.read_json(_join(root, f"docs/demo/{DEMO_JSON}"))
  out["demo"] = (demo_markdown(demo, level=3) if demo else
                 f"(No demo run is committed: `docs/demo/{DEMO_JSON}` is missing.)")
  return out


_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) \(python -m optical_jax.report --readme [^)\s]+\) -->\n)"
                    r"(.*?)(<!-- end generated: \2 -->)", re.S)


def _repo_root(page_dir: str) -> str:
  """The nearest folder at or above `page_dir` holding `docs/studies` (else `page_dir`)."""
  d = os.path.abspath(page_dir)
  while True:
    if os.path.isdir(os.path.join(d, "docs", "studies")):
      return d
    parent = os.path.dirname(d)
    if parent == d:
      return os.path.abspath(page_dir)
    d = parent


def render_readme(path: str) -> str:
  """The page `path` (the README, or a docs page) with each generated block rendered anew
  from the committed data."""
  text = fileio.read_text(path)
  if text is None:
    raise InputError("cannot read the page", path)
  page_dir = os.path.dirname(os.path.abspath(path))
  blocks = _blocks(_repo_root(page_dir), page_dir)

  def sub(m):
    if m.group(2) not in blocks:
      raise InputError(f"generated block {m.group(2)!r}: no data to render it from", path)
    return m.group(1) + blocks[m.group(2)].rstrip("\n") + "\n" + m.group(4)
  return _BLOCK.sub(sub, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m optical_jax.report [--check] DIR...`: render (or check) study pages;
  `--readme [--check] README.md`: the README's generated blocks; `--demo OUT ...`: the
  demo's results.md and demo.json; `--publish WORKDIR PAGE --command CMD [--cells
  ARCHIVE]`: a study page from a study workdir (`publish`)."""
  args = list(sys.argv[1:] if argv is None else argv)
  try:
    if args[:1] == ["--demo"]:
      opts = dict(zip(args[2::2], args[3::2]))
      print(write_demo(args[1], opts.get("--settings", "e5").split(), opts.get("--lang", "swa"),
                       int(opts.get("--seconds", 0))), end="")
      return 0
    if args[:1] == ["--publish"]:
      opts = dict(zip(args[3::2], args[4::2]))
      unknown = set(opts) - {"--command", "--cells"}
      if len(args) < 3 or len(args) % 2 == 0 or unknown:
        raise ValueError(USAGE)
      _, counts = publish(args[1], args[2], opts.get("--command", ""), opts.get("--cells", ""))
      print(f"{args[2]}: published from {args[1]} ({counts}); check it with "
            f"python -m optical_jax.report --check {args[2]}")
      return 0
    if args[:1] == ["--readme"]:
      paths = [a for a in args[1:] if a != "--check"] or ["README.md"]
      differ = 0
      for path in paths:
        new = render_readme(path)
        if "--check" in args:
          if new != fileio.read_text(path):
            differ += 1
            print(f"{path}: a generated block differs from what the committed data renders "
                  f"(python -m optical_jax.report --readme {path})", file=sys.stderr)
          continue
        fileio.write_text(path, new)
        print(f"{path}: generated blocks rendered")
      return 1 if differ else 0
  except (InputError, IndexError, ValueError, OSError) as e:
    print(f"error: {e}" if not isinstance(e, IndexError) else USAGE, file=sys.stderr)
    return 2
  do_check = "--check" in args
  dirs = [a for a in args if a != "--check"]
  if not dirs:
    print(USAGE, file=sys.stderr)
    return 2
  bad = 0
  for d in dirs:
    try:
      if do_check:
        diff = check(d)
        if diff:
          bad += 1
          print(f"{d}/{SUMMARY}: differs from what its data renders ({diff})", file=sys.stderr)
      else:
        write(d)
        print(f"{d}/{SUMMARY}: rendered")
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
