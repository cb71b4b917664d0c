"""Reading finished cells into tidy rows and per-query values (`collect`), derived
datasets, arms and their statistics, and the data files of a study page (CSV,
per-query values, report.json)."""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from optical_jax import fileio, paths, report, stats
from optical_jax.errors import InputError
from optical_jax.study.spec import CSV_COLUMNS_AFTER, CSV_COLUMNS_BEFORE, DONE, REFERENCE, Cell, axes, cell_key, grid
from optical_jax.study.cells import cell_status, plan_cell


@dataclasses.dataclass
class Collected:
  """Finished cells' metrics: tidy rows and per-query values by (cell, dataset, system)."""

  columns: List[str]
  rows: List[Dict[str, Any]]
  per_query: Dict[Tuple[str, str, str], Dict[str, Dict[str, float]]]
  cells: List[Cell]
  finished: List[str]
  datasets: List[str]
  references: Dict[Tuple[str, str, str], Dict[str, float]]   # (ref cell, dataset, system) -> aggregate


def collect(config, workdir: str) -> Collected:
  """Reads every finished cell's metrics into tidy rows (grid, dataset, metric order).

  A finished cell whose configs differ from what `config` gives it now stops with an
  InputError naming the differences (results of another study are never mixed in). One
  whose metrics no longer verify, or that ran with other exported models than the ones
  at its configs' paths now, is left out with a warning (`cell_status`): the next run
  redoes it.
  """
  workdir = paths.resolve(workdir)
  ax = axes(config)
  cells = grid(config)
  columns = list(CSV_COLUMNS_BEFORE) + list(ax) + list(CSV_COLUMNS_AFTER)
  rows, per_query, finished, datasets, refs = [], {}, [], [], {}
  for cell in cells:
    directory = paths.join(workdir, "cells", cell.key)
    done = fileio.read_json(paths.join(directory, DONE))
    # cell_status stops if it finished with other configs, reruns it if damaged.
    if not done or cell_status(plan_cell(config, cell, workdir)) != "done":
      continue
    finished.append(cell.key)
    results = {}
    for dataset, systems in done["datasets"].items():
      for system, rel in systems.items():
        res = fileio.read_json(paths.join(directory, rel))
        if res is None:
          raise InputError(f"study cell {cell.key}: cannot read its metrics", paths.join(directory, rel))
        results[(dataset, system)] = res
    results.update(_derived(config, results))
    for (dataset, system), res in results.items():
      if dataset not in datasets:
        datasets.append(dataset)
      per_query[(cell.key, dataset, system)] = res["per_query"]
      if cell.reference:
        refs[(cell.key, dataset, system)] = res["aggregate"]
      for metric, value in res["aggregate"].items():
        row = {"study": config.name, "cell": cell.key,
               "kind": REFERENCE if cell.reference else "trained"}
        row.update({a: cell.values.get(a, "") for a in ax})
        row.update(system=system, dataset=dataset, metric=metric, value=float(value),
                   num_queries=int(res.get("num_queries", 0)))
        rows.append(row)
  return Collected(columns, rows, per_query, cells, finished, datasets, refs)


def _derived(config, results: Mapping[Tuple[str, str], Mapping[str, Any]]
             ) -> Dict[Tuple[str, str], Dict[str, Any]]:
  """The `config.derived` datasets of one cell: per-query A - B for every system and
  measure that both A and B have, over their shared queries."""
  out = {}
  for name, a, b in config.derived:
    for (dataset, system), ra in results.items():
      rb = results.get((b, system))
      if dataset != a or rb is None:
        continue
      pq, agg, n = {}, {}, 0
      for measure, va in ra["per_query"].items():
        vb = rb["per_query"].get(measure)
        if vb is None:
          continue
        shared = [q for q in va if q in vb]
        if not shared:
          continue
        pq[measure] = {q: float(va[q]) - float(vb[q]) for q in shared}
        agg[measure] = float(np.mean(list(pq[measure].values())))
        n = max(n, len(shared))
      if agg:
        out[(name, system)] = {"per_query": pq, "aggregate": agg, "num_queries": n}
  return out


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
  buf = _io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
  return buf.getvalue()


@dataclasses.dataclass
class Arm:
  """The trained cells that share every axis value but the seed."""

  values: Dict[str, Any]   # non-seed axes
  cells: List[Cell]


def arms(config, col: Collected) -> List[Arm]:
  """Finished trained cells grouped over seeds, in grid order."""
  seed_axis = config.seed_axis
  out: Dict[str, Arm] = {}
  done = set(col.finished)
  for cell in col.cells:
    if cell.reference or cell.key not in done:
      continue
    values = {k: v for k, v in cell.values.items() if k != seed_axis}
    key = cell_key(values)
    out.setdefault(key, Arm(values, []))
    out[key].cells.append(cell)
  return list(out.values())


def _arm_stats(config, col: Collected, arm: Arm, dataset: str, measure: str):
  vals = []
  for cell in arm.cells:
    pq = col.per_query.get((cell.key, dataset, config.system))
    if pq is not None and measure in pq:
      vals.append(float(np.mean(list(pq[measure].values()))))
  return stats.mean_ci(vals, float(config.confidence)), len(vals)


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def report_meta(config, col: Collected) -> Dict[str, Any]:
  """report.json: what `optical_jax.report` needs besides the data to render the page."""
  return {"name": config.name,
          "axes": {a: [str(v) for v in vs] for a, vs in axes(config).items()},
          "seed_axis": config.seed_axis, "system": config.system,
          "compare": [list(p) for p in config.compare], "pool_axes": list(config.pool_axes),
          "measures": list(config.measures), "primary_measure": config.primary_measure,
          "confidence": float(config.confidence), "alpha": float(config.alpha),
          "correction": config.correction, "n_permutations": int(config.n_permutations),
          "permutation_seed": int(config.permutation_seed),
          "finished": len(col.finished), "cells": len(col.cells)}


def _per_query_bytes(config, col: Collected) -> bytes:
  """per_query.csv.gz: the trained system's per-query values of the summary measures,
  in grid, dataset and measure order (queries sorted)."""
  rows = []
  for cell in col.cells:
    if cell.reference:
      continue
    for dataset in col.datasets:
      pq = col.per_query.get((cell.key, dataset, config.system))
      if pq is None:
        continue
      for measure in config.measures:
        for q in sorted(pq.get(measure, {})):
          rows.append((cell.key, dataset, config.system, measure, q, pq[measure][q]))
  return report.per_query_bytes(rows)
