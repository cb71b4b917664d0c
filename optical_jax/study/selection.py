"""The selection stage: candidates compared on selection data only (dev qrels, held-out
validation), the choice written with its evidence, the test stage cut to the pick and
the reference arms; leak guards refuse test files and leaky bitext."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

import ml_collections
import numpy as np

from optical_jax import fileio, metrics, monitor, paths, plain, report, stats
from optical_jax.errors import InputError
from optical_jax.fileio import write_json, write_text
from optical_jax.study.spec import DONE, Log, _check_config, _parse_arm, axes, default_config, grid
from optical_jax.study.cells import plan_cell
from optical_jax.study.rows import collect


SELECT_DIR = "select"
SELECTION = report.SELECTION
# Evaluator config fields that name the files a dataset's queries and judgements come
# from (a shared passage pool is not selection data: it holds no query or judgement).
_QUERY_FILE_FIELDS = ("queries", "qrels", "path")


def selection_stage(config) -> Optional[ml_collections.ConfigDict]:
  """The study config of `config`'s selection stage (None without one).

  Its grid is `config.axes` with `select.axes` overriding values; its cells train with
  `select.train` (or `train`) and evaluate on `select.evals`; it has no references and
  no comparisons. Raises InputError when a selection cell would read a query or qrels
  file of the test stage, or train on bitext holding its own selection queries.
  """
  sel = config.select
  if not sel.axis:
    return None
  ax = _check_config(config)
  if sel.axis not in ax or sel.axis == config.seed_axis:
    raise InputError(f"config.select.axis {sel.axis!r} is not a non-seed axis ({', '.join(ax)})")
  if not callable(sel.evals):
    raise InputError("config.select.evals must be a function of the cell's axis values "
                     "returning the selection datasets (dev qrels, held-out validation)")
  if sel.train is not None and not callable(sel.train):
    raise InputError("config.select.train must be None or a function of axis values")
  names = {str(v) for v in ax[sel.axis]}
  for k in sel.keep:
    if str(k) not in names:
      raise InputError(f"config.select.keep: {k!r} is not a value of axis {sel.axis!r}")
  metrics.parse_measures([sel.measure])
  stage = ml_collections.ConfigDict()
  for field in plain.keys_in_order(config):
    if field not in ("axes", "select"):
      stage[field] = config[field]
  stage.axes = ml_collections.ConfigDict()
  for a in ax:
    stage.axes[a] = ax[a]
  for a in plain.keys_in_order(sel.axes):
    if a not in ax or a == sel.axis:
      raise InputError(f"config.select.axes: {a!r} is not an axis other than "
                       f"{sel.axis!r} ({', '.join(ax)})")
    values = sel.axes[a]
    stage.axes[a] = tuple(values) if isinstance(values, (tuple, list)) else (values,)
  stage.name = f"{config.name}-select"
  stage.train = sel.train if sel.train is not None else config.train
  stage.evals = sel.evals
  stage.references = None
  stage.reference_axes = ()
  stage.compare = ()
  stage.pool_axes = ()
  stage.derived = ()
  stage.measures = (sel.measure,)
  stage.primary_measure = ""
  stage.plot = ml_collections.ConfigDict(dict(x=sel.axis, by=""))
  stage.select = default_config().select
  _check_selection_data(config, stage)
  return stage


def _query_files(evals: Mapping[str, Any]) -> Dict[str, str]:
  """{file path: dataset} of the query and judgement files the eval configs read."""
  out = {}
  for name, e in evals.items():
    for field in _QUERY_FILE_FIELDS:
      value = e.dataset.get(field, "") if "dataset" in e else ""
      if value:
        out[os.path.normpath(str(value))] = name
  return out


def _check_selection_data(config, stage) -> None:
  """The selection stage reads no test-stage query or qrels file, and trains on no
  bitext that holds its own selection queries (InputError naming the file)."""
  for cell in grid(stage):
    plan = plan_cell(stage, cell, "")
    mine = _query_files(plan.evals)
    try:
      test = _query_files(config.evals(dict(cell.values)))
    except (ValueError, KeyError, TypeError):
      test = {}
    for path, name in mine.items():
      if path in test:
        raise InputError(f"config.select.evals: selection dataset {name} of cell {cell.key} "
                         f"reads the test stage's file (test data never enters a choice)", path)
    if plan.train is None:
      continue
    for path in _strings(plain.plain(plan.train.data.bitext), skip="exclude"):
      if os.path.normpath(path) in mine:
        raise InputError(f"config.select.train: cell {cell.key} trains on bitext that holds "
                         "its selection queries; hold them out (e.g. the `tune` config "
                         "argument)", path)


def _strings(tree, skip: str) -> List[str]:
  """Every non-empty string inside nested dicts and lists, but under keys named `skip`."""
  if isinstance(tree, str):
    return [tree] if tree else []
  if isinstance(tree, dict):
    return [s for k, v in tree.items() if k != skip for s in _strings(v, skip)]
  if isinstance(tree, (list, tuple)):
    return [s for v in tree for s in _strings(v, skip)]
  return []


def _finished_keys(config, workdir: str) -> List[str]:
  return [c.key for c in grid(config)
          if fileio.read_json(paths.join(workdir, "cells", c.key, DONE))]


def choose(config, workdir: str, *, log: Log = monitor.stderr_line) -> Dict[str, Any]:
  """The selection stage's choice, from its finished cells alone; writes
  `WORKDIR/selection.json` (candidates, their scores and per-cell evidence, the files
  read, as their folder/name) and `selection.md`. InputError while a selection cell is unfinished."""
  workdir = paths.resolve(workdir)
  stage = selection_stage(config)
  if stage is None:
    raise InputError("config.select.axis is not set: the study has no selection stage")
  sel = config.select
  sel_dir = paths.join(workdir, SELECT_DIR)
  col = collect(stage, sel_dir)
  cells = grid(stage)
  if len(col.finished) < len(cells):
    raise InputError(f"the selection stage has {len(cells) - len(col.finished)} of "
                     f"{len(cells)} cells unfinished; run the study first", sel_dir)
  measure = sel.measure
  candidates = []
  files = set()
  for value in axes(stage)[sel.axis]:
    evidence = {}
    for cell in cells:
      if str(cell.values[sel.axis]) != str(value):
        continue
      plan = plan_cell(stage, cell, sel_dir)
      files.update(_query_files(plan.evals))
      for dataset in plan.evals:
        pq = col.per_query.get((cell.key, dataset, stage.system), {}).get(measure)
        if not pq:
          raise InputError(f"selection cell {cell.key}: no {measure} on {dataset}",
                           paths.join(sel_dir, "cells", cell.key))
        evidence.setdefault(cell.key, {})[dataset] = float(np.mean(list(pq.values())))
    values = [v for per in evidence.values() for v in per.values()]
    candidates.append({"value": value, "score": float(np.mean(values)), "n": len(values),
                       "cells": evidence})
  best = max(candidates, key=lambda c: c["score"])   # first of equal scores: axis order
  for c in candidates:
    if c is not best:
      c["vs_chosen"] = _margin(stage, col, cells, sel.axis, c["value"], best["value"], measure)
  keep = [v for v in axes(config)[sel.axis] if str(v) in {str(k) for k in sel.keep}]
  result = {"study": config.name, "axis": sel.axis, "measure": measure,
            "rule": (f"highest mean {measure} over the selection cells and datasets "
                     "(each (cell, dataset) mean weighted equally; ties: axis order)"),
            "margin": ("each candidate minus the chosen one, per query averaged over seeds, "
                       "cells paired by their other axis values; a paired t-test over those "
                       "queries, uncorrected: how far apart the candidates are, not part of "
                       "the rule"),
            "chosen": best["value"], "keep": keep,
            "selection_axes": {a: list(v) for a, v in axes(stage).items()},
            "files": sorted("/".join(f.split(os.sep)[-2:]) for f in files),
            "candidates": candidates}
  write_json(paths.join(workdir, SELECTION), result)
  write_text(paths.join(workdir, report.SELECTION_MD), report.selection_markdown(result))
  log(f"study {config.name}: selection on {measure} chose {sel.axis}={best['value']} "
      f"({best['score']:.4f}); test stage: {', '.join(str(v) for v in _test_values(config, best['value']))}")
  return result


def _margin(stage, col, cells, axis: str, value, chosen, measure: str) -> Dict[str, Any]:
  """`value`'s candidate minus `chosen`'s on the selection data: per-query differences
  averaged over seeds (`stats.seed_averaged`; a query's group is its cell's other
  non-seed axis values and the dataset) and their query-level test."""
  seed_axis = stage.seed_axis

  def runs(v):
    by_seed: Dict[str, Dict[str, Dict[str, float]]] = {}
    for cell in cells:
      if str(cell.values[axis]) != str(v):
        continue
      where = ",".join(f"{a}={x}" for a, x in cell.values.items() if a not in (axis, seed_axis))
      run = by_seed.setdefault(str(cell.values.get(seed_axis, "")), {})
      for dataset in col.datasets:
        per = col.per_query.get((cell.key, dataset, stage.system), {})
        if measure in per:
          run[f"{where},{dataset}"] = per[measure]
    return [by_seed[s] for s in sorted(by_seed)]

  diff = stats.seed_averaged(runs(value), runs(chosen))
  return {"mean_diff": float(diff.mean()) if diff.size else float("nan"),
          "queries": int(diff.size), "queries_changed": int(np.count_nonzero(diff)),
          "t_test_p": stats.one_sample_t_test(diff)}


def _test_values(config, chosen) -> List[Any]:
  keep = {str(k) for k in config.select.keep} | {str(chosen)}
  return [v for v in axes(config)[config.select.axis] if str(v) in keep]


def test_stage(config, chosen) -> ml_collections.ConfigDict:
  """`config` with the selected axis cut to the chosen value and `select.keep`, its
  comparisons cut to the pairs whose arms remain, and no selection stage."""
  axis = config.select.axis
  values = tuple(_test_values(config, chosen))
  out = ml_collections.ConfigDict()
  for field in plain.keys_in_order(config):
    if field not in ("axes", "select", "compare"):
      out[field] = config[field]
  out.axes = ml_collections.ConfigDict()
  for a, v in axes(config).items():
    out.axes[a] = values if a == axis else v
  ax = axes(out)

  def present(arm: str) -> bool:
    try:
      _parse_arm(arm, ax)
      return True
    except InputError:
      return False
  out.compare = tuple(p for p in config.compare if present(p[0]) and present(p[1]))
  out.select = default_config().select
  return out
