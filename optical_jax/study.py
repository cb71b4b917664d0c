"""Studies: a grid of cells (train a student, evaluate it), run through the library and aggregated.

`run(config, workdir, shard=(i, n))` is what `study.py` calls; `aggregate(config,
workdir)` what `study.py --aggregate` calls. A study config (`default_config`, filled
by `configs/studies/*.py`) declares:

* `axes`: an ordered mapping axis -> tuple of values (e.g. lang, loss, amount, seed);
  the grid is their Cartesian product, in that order. `seed_axis` names the axis that
  confidence intervals are taken over.
* `train(values) -> trainer config` and `evals(values) -> {dataset: evaluator config}`:
  the cell template. The runner adds the trained student (`system`, its passages
  through the teacher it was trained against) to each eval config.
* `references(values) -> {name: evaluator.system}` (optional): systems without training
  (zero-shot, oracle translation), evaluated once per distinct value of
  `reference_axes`, on `evals` of those values.
* `compare`: pairs of arms, e.g. `("loss=ot", "loss=sentence")`, tested against each
  other with per-query values paired by seed and pooled over seeds.
* `measures` (summary and plots), `plot.x` (the axis on the x axis) and `plot.by`
  ('' = one figure per dataset; 'dataset' = one figure per measure, a curve per dataset).

Layout of the workdir:

    study.json                 the grid: cell keys and axis values
    cells/<key>/cell.json      the cell's resolved train and eval configs, its fingerprint
    cells/<key>/train/         the trainer's workdir (checkpoints, export in student/)
    cells/<key>/eval/<dataset>/  the evaluator's out directory (runs, metrics with per-query values)
    cells/<key>/done.json      written last: the cell is finished
    results.csv, summary.md, plots/*.png   from `aggregate`

Everything goes through `optical_jax.trainer.run` and `optical_jax.evaluator.run` in
this process (no subprocesses). Cells share the token cache (tokenised bitext) and the
embedding cache (passages of a teacher are encoded once for all cells), under
`cache_dir` when set. A finished cell (its `done.json` records the fingerprint of its
configs) is skipped, so a killed study restarts where it stopped: a half-trained cell
resumes from its last checkpoint, a half-evaluated one reuses its finished runs. Each
cell is held by one process at a time (`fileio.hold_directory`). `--shard=i/n` runs
cells i, i+n, i+2n, ... of the grid (reference cells first), so n processes (a SLURM
array, GNU parallel) cover it exactly once; `--aggregate` then merges.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import itertools
import json
import math
import os
import re
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from optical_jax import cell_archive, fileio, fingerprint, metrics, monitor, plain, report, stats
from optical_jax.errors import InputError
from optical_jax.fileio import write_json, write_text

Log = Callable[[str], None]
_VALUE_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
DONE = cell_archive.DONE
REFERENCE = "reference"
CSV_COLUMNS_BEFORE = ("study", "cell", "kind")
CSV_COLUMNS_AFTER = ("system", "dataset", "metric", "value", "num_queries")




# ---------------------------------------------------------------------------
# Config schema.


def default_config() -> ml_collections.ConfigDict:
  """The study config with documented defaults; `configs/studies/*.py` fill it.

  Fields:
    name: the study's name (CSV column, titles).
    axes: ordered axis -> tuple of values (str, int or float; letters, digits, . _ + -).
    seed_axis: the axis confidence intervals and pooled tests are taken over.
    train: callable(values: dict) -> trainer config of a cell.
    evals: callable(values: dict) -> {dataset name: evaluator config}; the runner adds
      the trained system. Called with only `reference_axes` for reference cells.
    references: None or callable(values) -> {system name: evaluator.system(...)}.
    reference_axes: axes the references depend on (e.g. ('lang',)).
    system: the name of the trained system in each cell's evaluation.
    compare: pairs ("axis=value[,axis=value]", "axis=value...") of arms to test.
    pool_axes: axes whose cells are pooled in those tests like seeds (e.g. ('lang',):
      one test over the queries of every language and seed, beside the per-language
      tests); () = a test per value of every non-seed axis.
    measures: ir_measures names shown in the summary and plots (the CSV holds every
      measure the evaluations computed).
    derived: (name, dataset A, dataset B) triples: a dataset `name` whose per-query
      values are A's minus B's over the queries both have (e.g. a transfer gap: the
      English questions' score minus the same questions' in language X); it joins the
      CSV, the summary, the comparisons and the plots like an evaluated dataset.
    plot.x: the axis along the x axis of the curves ('' = the first non-seed axis with
      more than one value); plot.by: '' (a figure per dataset, a panel per measure) or
      'dataset' (a figure per measure, a curve per dataset).
    cache_dir: '' = the library's caches (shared with every run); else DIR/tokens and
      DIR/embeddings for all cells.
    confidence: of the intervals over seeds (Student t); alpha: significance level;
    n_permutations, permutation_seed: the randomisation tests.
    primary_measure: the measure of the primary family of tests ('' = nDCG@10 when among
      `measures`, else the first); correction: 'holm' or 'bh' (Benjamini-Hochberg), the
      multiplicity adjustment within each family (`optical_jax.report`).
    progress: progress bars inside cells (training, encoding).
    select: the selection stage (off while `select.axis` is ''). The values of axis
      `select.axis` (e.g. 'loss') are candidates: each is trained with `select.train`
      (default `train`; e.g. dev questions held out of the bitext) and evaluated on
      `select.evals(values)` (selection data: dev qrels, held-out validation), over the
      grid of `axes` with `select.axes` overriding some axes' values (e.g. lang=('hau',
      'zul'), seed=(0,)). The candidate with the highest mean `select.measure` over the
      selection cells and datasets is chosen (ties: the first in axis order); the test
      stage then runs only the chosen value and the values in `select.keep` (reference
      arms). Test metrics never enter the choice: the selection stage refuses eval
      configs that read the test stage's query or qrels files, or training bitext that
      holds its own selection queries.
  """
  c = ml_collections.ConfigDict()
  c.name = "study"
  c.axes = ml_collections.ConfigDict()
  c.seed_axis = "seed"
  c.train = None
  c.evals = None
  c.references = None
  c.reference_axes = ()
  c.system = "student"
  c.compare = ()
  c.pool_axes = ()
  c.measures = ("P@5", "R@10", "nDCG@10")
  c.derived = ()
  c.plot = ml_collections.ConfigDict(dict(x="", by=""))
  c.cache_dir = ""
  c.confidence = 0.95
  c.alpha = 0.05
  c.n_permutations = stats.DEFAULT_PERMUTATIONS
  c.permutation_seed = stats.DEFAULT_SEED
  c.primary_measure = ""
  c.correction = "holm"
  c.progress = False
  # The selection stage (`select.axis` set): the axis's values are candidates, compared
  # on selection data only; the test stage then runs the chosen value and `select.keep`.
  c.select = ml_collections.ConfigDict(dict(
      axis="", measure="nDCG@10", keep=(), axes=ml_collections.ConfigDict(),
      train=None, evals=None))
  return c


def axes(config) -> Dict[str, Tuple[Any, ...]]:
  """The study's axes in order, checked (non-empty, values usable in names, no repeats)."""
  out = {}
  for name in plain.keys_in_order(config.axes):
    values = config.axes[name]
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
      values = (values,)
    values = tuple(values)
    if not _VALUE_RE.match(name):
      raise InputError(f"study axis name {name!r}: use letters, digits and . _ + -")
    if not values:
      raise InputError(f"study axis {name!r} has no values")
    for v in values:
      if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not _VALUE_RE.match(str(v)):
        raise InputError(f"study axis {name!r}: value {v!r} must be a string or number made "
                         "of letters, digits and . _ + -")
    if len({str(v) for v in values}) != len(values):
      raise InputError(f"study axis {name!r} repeats a value: {values}")
    out[name] = values
  if not out:
    raise InputError("config.axes is empty: a study needs at least one axis")
  return out


def _check_config(config) -> Dict[str, Tuple[Any, ...]]:
  ax = axes(config)
  for field in ("train", "evals"):
    if not callable(config[field]):
      raise InputError(f"config.{field} must be a function of the cell's axis values")
  if config.references is not None and not callable(config.references):
    raise InputError("config.references must be None or a function of axis values")
  for a in config.reference_axes:
    if a not in ax:
      raise InputError(f"config.reference_axes: {a!r} is not an axis ({', '.join(ax)})")
  if config.seed_axis and config.seed_axis not in ax:
    raise InputError(f"config.seed_axis {config.seed_axis!r} is not an axis ({', '.join(ax)})")
  if not 0 < float(config.confidence) < 1:
    raise InputError(f"config.confidence must lie in (0, 1), got {config.confidence}")
  metrics.parse_measures(list(config.measures))
  if config.primary_measure and config.primary_measure not in tuple(config.measures):
    raise InputError(f"config.primary_measure {config.primary_measure!r} is not among "
                     f"config.measures ({', '.join(config.measures)})")
  if config.correction not in stats.CORRECTIONS:
    raise InputError(f"config.correction must be one of {', '.join(stats.CORRECTIONS)}, "
                     f"got {config.correction!r}")
  for pair in config.compare:
    if len(pair) != 2:
      raise InputError(f"config.compare entries are pairs of arms, got {pair!r}")
    for arm in pair:
      _parse_arm(arm, ax)
  for a in config.pool_axes:
    if a not in ax or a == config.seed_axis:
      raise InputError(f"config.pool_axes: {a!r} is not a non-seed axis ({', '.join(ax)})")
  for triple in config.derived:
    if len(triple) != 3 or not all(isinstance(t, str) and _VALUE_RE.match(t) for t in triple):
      raise InputError("config.derived entries are (name, dataset A, dataset B) triples of "
                       f"names made of letters, digits and . _ + -, got {triple!r}")
  if config.plot.x and config.plot.x not in ax:
    raise InputError(f"config.plot.x {config.plot.x!r} is not an axis ({', '.join(ax)})")
  if config.plot.by not in ("", "dataset"):
    raise InputError(f"config.plot.by must be '' or 'dataset', got {config.plot.by!r}")
  return ax


def _parse_arm(arm: str, ax: Mapping[str, Sequence[Any]]) -> Dict[str, str]:
  out = {}
  for item in str(arm).split(","):
    key, eq, value = item.strip().partition("=")
    if not eq or key not in ax:
      raise InputError(f"config.compare: arm {arm!r} must be 'axis=value[,axis=value]' over "
                       f"the axes ({', '.join(ax)})")
    if value not in {str(v) for v in ax[key]}:
      raise InputError(f"config.compare: arm {arm!r}: {value!r} is not a value of axis {key!r}")
    out[key] = value
  return out


# ---------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the grid (or a reference cell: no training, baseline systems)."""

  key: str
  values: Dict[str, Any]
  reference: bool = False


def cell_key(values: Mapping[str, Any], reference: bool = False) -> str:
  """`axis=value,axis=value` (reference cells: `reference[,axis=value...]`); names its directory."""
  parts = [f"{k}={v}" for k, v in values.items()]
  return ",".join(([REFERENCE] if reference else []) + parts)


def grid(config) -> List[Cell]:
  """Every cell in order: reference cells (one per combination of `reference_axes`
  values, if `references` is set), then the Cartesian product of the axes with the seed
  axis outermost (keys and values keep the declared axis order)."""
  ax = _check_config(config)
  cells = []
  if config.references is not None:
    ref_axes = [a for a in ax if a in tuple(config.reference_axes)]
    for combo in itertools.product(*(ax[a] for a in ref_axes)):
      values = dict(zip(ref_axes, combo))
      cells.append(Cell(cell_key(values, True), values, True))
  # Seed-major order: every arm's first seed before any second seed, so a study stopped
  # part way (or a shard) holds whole replicates of the design.
  order = sorted(ax, key=lambda a: a != config.seed_axis)
  for combo in itertools.product(*(ax[a] for a in order)):
    got = dict(zip(order, combo))
    values = {a: got[a] for a in ax}
    cells.append(Cell(cell_key(values), values))
  return cells


def parse_shard(text: str) -> Tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
  if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
    raise InputError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
  return int(m.group(1)), int(m.group(2))


def shard_cells(cells: Sequence[Cell], shard: Tuple[int, int]) -> List[Cell]:
  """Cells i, i+n, i+2n, ... (round robin balances cheap and costly cells)."""
  i, n = shard
  return list(cells[i::n])


# ---------------------------------------------------------------------------
# Running cells.


@dataclasses.dataclass
class CellPlan:
  """A cell's configs, resolved (before training: the trained system is added later)."""

  cell: Cell
  directory: str
  train: Optional[ml_collections.ConfigDict]
  evals: Dict[str, ml_collections.ConfigDict]
  references: Dict[str, Any]

  def resolved(self) -> Dict[str, Any]:
    return {"key": self.cell.key, "values": self.cell.values, "reference": self.cell.reference,
            "train": None if self.train is None else plain.plain(self.train),
            "evals": {k: plain.plain(v) for k, v in self.evals.items()},
            "references": {k: plain.plain(v) for k, v in self.references.items()}}

  def fingerprint(self) -> str:
    return fingerprint.digest(self.resolved(), n=24)


def plan_cell(config, cell: Cell, workdir: str) -> CellPlan:
  """The cell's train and eval configs from the study's template functions."""
  directory = os.path.join(workdir, "cells", cell.key)
  values = dict(cell.values)
  try:
    train = None if cell.reference else config.train(values)
    evals = config.evals(values)
    refs = config.references(values) if cell.reference else {}
  except InputError:
    raise
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"study cell {cell.key}: the config's template failed: {e}") from e
  if not isinstance(evals, Mapping) or not evals:
    raise InputError(f"study cell {cell.key}: config.evals returned no datasets")
  evals = dict(evals)
  for name in evals:
    if not _VALUE_RE.match(name):
      raise InputError(f"study cell {cell.key}: dataset name {name!r}: use letters, digits "
                       "and . _ + -")
  if config.cache_dir:
    root = os.path.abspath(os.path.expanduser(config.cache_dir))
    if train is not None:
      train.data.cache_dir = os.path.join(root, "tokens")
    for e in evals.values():
      e.cache_dir = os.path.join(root, "embeddings")
  if train is not None:
    train.train.progress = bool(config.progress)
  for e in evals.values():
    e.progress = bool(config.progress)
  return CellPlan(cell, directory, train, evals, dict(refs or {}))


def cell_status(plan: CellPlan) -> str:
  """'done' (finished with these configs), 'todo', or raises InputError when the cell
  finished with other configs."""
  done = fileio.read_json(os.path.join(plan.directory, DONE))
  if not done:
    return "todo"
  problem = _damaged(plan.directory, done)
  if problem:
    aside = os.path.join(os.path.dirname(plan.directory), ".broken",
                         f"{plan.cell.key}.{time.time_ns()}")
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    os.replace(plan.directory, aside)
    warnings.warn(f"study cell {plan.directory}: {problem}; moved to {aside}, it reruns",
                  CellWarning, stacklevel=2)
    return "todo"
  if done.get("fingerprint") == plan.fingerprint():
    return "done"
  saved = fileio.read_json(os.path.join(plan.directory, cell_archive.CELL)) or {}
  shown = config_changes(saved.get("resolved", {}), plan)
  if not shown:  # only fields added since (at their defaults) or how-not-what fields
    return "done"
  raise InputError(f"study cell {plan.cell.key} finished with another config ({shown}); use a "
                   f"new --workdir, or delete {plan.directory} to rerun it", plan.directory)


class CellWarning(UserWarning):
  """A finished study cell failed its check and was moved aside (it reruns)."""


def _metrics_checksums(directory: str, datasets: Mapping[str, Mapping[str, str]]) -> Dict[str, str]:
  """Content digests (`fingerprint.digest` of the JSON, so a record restored by
  `cell_archive` with other whitespace still matches) of a cell's metrics files."""
  return {rel: fingerprint.digest(fileio.read_json(os.path.join(directory, rel)), n=None)
          for systems in datasets.values() for rel in systems.values()}


def _damaged(directory: str, done: Mapping[str, Any]) -> str:
  """Why a finished cell's metrics cannot be used ('' when they verify; cells finished
  before checksums were recorded are taken as they are)."""
  for rel, digest in (done.get("checksums") or {}).items():
    value = fileio.read_json(os.path.join(directory, rel))
    if value is None:
      return f"{rel} is missing or unreadable"
    if fingerprint.digest(value, n=None) != digest:
      return f"{rel} does not match the checksum in {DONE}"
  return ""


def config_changes(saved_resolved: Mapping[str, Any], plan: CellPlan) -> str:
  """'' when a cell finished with the resolved configs `saved_resolved` is valid for
  `plan` (equal but for fields added since at their defaults and how-not-what fields),
  else the first differences, `field: old -> new; ...`."""
  old = plain.flatten(saved_resolved)
  new = plain.flatten(json.loads(json.dumps(plan.resolved())))
  new = _without_added_defaults(old, new, plan)
  diff = [k for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not _harmless(k, plan)]
  return "; ".join(f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}"
                   for k in diff[:3]) + ("; ..." if len(diff) > 3 else "")


def _harmless(key: str, plan: CellPlan) -> bool:
  """A resolved-config field whose change leaves a finished cell's results valid: the
  trainer's `config.HARMLESS_FIELDS` (logging, checkpointing, devices) under 'train.',
  the evaluator's `HARMLESS_FIELDS` (batching, buckets, caches) under 'evals.<name>.'."""
  from optical_jax import config as config_lib, evaluator  # pylint: disable=g-import-not-at-top
  prefixes = [("train.", config_lib.HARMLESS_FIELDS)]
  prefixes += [(f"evals.{name}.", evaluator.HARMLESS_FIELDS) for name in plan.evals]
  for prefix, fields in prefixes:
    if key.startswith(prefix):
      return config_lib.field_in(key[len(prefix):], fields)
  return False


def _without_added_defaults(old: dict, new: dict, plan: CellPlan) -> dict:
  """The flat resolved configs `new` without fields added since `old` at their defaults
  (train configs against `config.base_config`, eval configs against the evaluator's)."""
  from optical_jax import config as config_lib, evaluator  # pylint: disable=g-import-not-at-top
  flat = lambda c: plain.flatten(json.loads(json.dumps(plain.plain(c))))
  new = config_lib.drop_added_defaults(old, new, flat(config_lib.base_config()), "train.")
  eval_defaults = flat(evaluator.default_config())
  for name in plan.evals:
    new = config_lib.drop_added_defaults(old, new, eval_defaults, f"evals.{name}.")
  return new


def _student_system(train_workdir: str, train_config):
  from optical_jax import evaluator, models  # pylint: disable=g-import-not-at-top
  export = os.path.join(train_workdir, "student" if train_config.mode == "distill" else "teacher")
  if train_config.mode == "distill":
    return evaluator.system(models.export_spec(export), doc_model=train_config.teacher)
  return evaluator.system(models.export_spec(export), query_field="text_en")


def run_cell(config, plan: CellPlan, log: Log = monitor.stderr_line) -> Dict[str, Any]:
  """Trains and evaluates one cell (held by this process); writes its done.json last."""
  from optical_jax import evaluator, trainer  # pylint: disable=g-import-not-at-top
  key = plan.cell.key
  t0 = time.time()
  hold = fileio.hold_directory(plan.directory, "study cell", report=log)
  try:
    if cell_status(plan) == "done":   # another process finished it while this one waited
      log(f"[{key}] finished by another process; not redone")
      return fileio.read_json(os.path.join(plan.directory, DONE))
    write_json(os.path.join(plan.directory, "cell.json"),
               {"fingerprint": plan.fingerprint(), "resolved": plan.resolved()})
    systems: Dict[str, Any] = dict(plan.references)
    train_s = 0.0
    if plan.train is not None:
      workdir = os.path.join(plan.directory, "train")
      t1 = time.time()
      result = trainer.run(plan.train, workdir, log_fn=lambda m: log(f"[{key}] {m}"))
      train_s = time.time() - t1
      trainer.check_complete(result, plan.train)
      systems = {config.system: _student_system(workdir, plan.train)}
    datasets = {}
    for name, ecfg in plan.evals.items():
      ecfg = ecfg.copy_and_resolve_references()
      for sys_name, system in systems.items():
        ecfg.systems[sys_name] = system
      ecfg.baselines = (next(iter(systems)),)
      out = os.path.join(plan.directory, "eval", name)
      evaluator.run(ecfg, out, log=lambda m, n=name: log(f"[{key}] {n}: {m}"))
      datasets[name] = {s: os.path.join("eval", name, "metrics", f"{s}.json") for s in systems}
    done = {"key": key, "values": plan.cell.values, "reference": plan.cell.reference,
            "fingerprint": plan.fingerprint(), "datasets": datasets,
            "checksums": _metrics_checksums(plan.directory, datasets),
            "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}
    write_json(os.path.join(plan.directory, DONE), done)
    return done
  finally:
    hold.release()


@dataclasses.dataclass
class StudyResult:
  """What `run` did: cells run now, cells already finished, the shard's cells, the grid size."""

  ran: List[str]
  skipped: List[str]
  shard_cells: List[str]
  total: int
  aggregated: bool


def write_grid(config, workdir: str, cells: Sequence[Cell]) -> None:
  write_json(os.path.join(workdir, "study.json"),
             {"name": config.name, "axes": {k: list(v) for k, v in axes(config).items()},
              "seed_axis": config.seed_axis,
              "cells": [{"key": c.key, "values": c.values, "reference": c.reference}
                        for c in cells]})


def run(config, workdir: str, *, shard: Tuple[int, int] = (0, 1), log: Log = monitor.stderr_line,
        aggregate_after: Optional[bool] = None, select_only: bool = False,
        archive: str = "") -> StudyResult:
  """Runs this shard's unfinished cells, then (one shard, or `aggregate_after`) aggregates.

  With a selection stage (`config.select.axis`), its cells run first (in
  `WORKDIR/select/`, sharded the same way); once all of them have finished, the choice
  is written to `WORKDIR/selection.json` and `selection.md`, and the test stage runs the
  chosen and kept values (`select_only`: stop after the choice). A shard that finds the
  selection stage unfinished stops after its own selection cells (rerun it when every
  shard has).

  `archive` (a directory, `optical_jax.cell_archive`): this shard's cells missing from
  the workdir are restored from their records there when their configs match, and every
  finished cell's record is written there (a selection stage's under `ARCHIVE/select/`).

  Logs `study NAME: k/n cells done (..%) | time per cell | ETA | last KEY` after each cell. Bad configs stop with
  one InputError line before anything trains.
  """
  workdir = os.path.abspath(workdir)
  stage = selection_stage(config)
  if stage is None:
    return _run_grid(config, workdir, shard, log, aggregate_after, archive)
  sel_dir = os.path.join(workdir, SELECT_DIR)
  sel = _run_grid(stage, sel_dir, shard, log, shard[1] == 1,
                  os.path.join(archive, SELECT_DIR) if archive else "")
  left = len(grid(stage)) - len(_finished_keys(stage, sel_dir))
  if left:
    log(f"study {config.name}: the selection stage has {left} unfinished cell(s) in other "
        "shards; rerun this command when every shard has finished")
    return StudyResult(sel.ran, sel.skipped, sel.shard_cells, sel.total, False)
  chosen = choose(config, workdir, log=log)
  if select_only:
    return StudyResult(sel.ran, sel.skipped, sel.shard_cells, sel.total, sel.aggregated)
  result = _run_grid(test_stage(config, chosen["chosen"]), workdir, shard, log, aggregate_after,
                     archive)
  return StudyResult(sel.ran + result.ran, sel.skipped + result.skipped,
                     sel.shard_cells + result.shard_cells, sel.total + result.total,
                     result.aggregated)


def _run_grid(config, workdir: str, shard: Tuple[int, int], log: Log,
              aggregate_after: Optional[bool], archive: str = "") -> StudyResult:
  """`run` for one grid (no selection stage)."""
  from optical_jax.monitor import format_duration  # pylint: disable=g-import-not-at-top
  cells = grid(config)
  mine = shard_cells(cells, shard)
  plans = [plan_cell(config, c, workdir) for c in mine]
  if archive:
    restore_cells(config, plans, archive, log)
  status = {p.cell.key: cell_status(p) for p in plans}
  os.makedirs(workdir, exist_ok=True)
  write_grid(config, workdir, cells)
  todo = [p for p in plans if status[p.cell.key] == "todo"]
  skipped = [p.cell.key for p in plans if status[p.cell.key] == "done"]
  where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
  log(f"study {config.name}{where}: {len(plans)} of {len(cells)} cells; {len(skipped)} "
      f"finished, {len(todo)} to run")
  ran = []
  t0 = time.time()
  for p in todo:
    log(f"study: cell {p.cell.key}")
    run_cell(config, p, log)
    if archive:
      cell_archive.save(p.directory, archive)
    ran.append(p.cell.key)
    # The rate counts only cells run now (finished ones were skipped in no time).
    per = (time.time() - t0) / len(ran)
    done = len(skipped) + len(ran)
    log(f"study {config.name}: {done}/{len(plans)} cells done ({100 * done // len(plans)}%) | "
        f"{format_duration(per)} per cell | ETA {format_duration(per * (len(todo) - len(ran)))}"
        f" | last {p.cell.key}")
  if archive:  # cells finished before the archive was named
    for p in plans:
      if p.cell.key in skipped:
        cell_archive.save(p.directory, archive)
  if aggregate_after is None:
    aggregate_after = shard[1] == 1
  if aggregate_after:
    aggregate(config, workdir, log=log)
  elif shard[1] > 1:
    log(f"study: shard {shard[0]}/{shard[1]} finished; when every shard has, run "
        "study.py with --aggregate")
  return StudyResult(ran, skipped, [p.cell.key for p in plans], len(cells), aggregate_after)


def restore_cells(config, plans: Sequence[CellPlan], archive: str, log: Log) -> List[str]:
  """Restores the cells of `plans` that the workdir lacks from their verified records in
  `archive` (`optical_jax.cell_archive`) when the record's configs are the cell's (as
  `cell_status` judges them); returns their keys. A record with other configs is
  reported and left: the cell reruns."""
  restored = []
  for plan in plans:
    if fileio.read_json(os.path.join(plan.directory, DONE)):
      continue
    record = cell_archive.load(archive, plan.cell.key, log)
    if record is None:
      continue
    changes = config_changes(record["files"][cell_archive.CELL].get("resolved", {}), plan)
    if changes:
      log(f"study: the archived cell {plan.cell.key} finished with another config "
          f"({changes}); it reruns")
      continue
    cell_archive.restore(record, plan.directory)
    restored.append(plan.cell.key)
  if restored:
    log(f"study {config.name}: {len(restored)} finished cell(s) restored from {archive}")
  return restored


# ---------------------------------------------------------------------------
# The selection stage.

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
          if fileio.read_json(os.path.join(workdir, "cells", c.key, DONE))]


def choose(config, workdir: str, *, log: Log = monitor.stderr_line) -> Dict[str, Any]:
  """The selection stage's choice, from its finished cells alone; writes
  `WORKDIR/selection.json` (candidates, their scores and per-cell evidence, the files
  read, as their folder/name) and `selection.md`. InputError while a selection cell is unfinished."""
  workdir = os.path.abspath(workdir)
  stage = selection_stage(config)
  if stage is None:
    raise InputError("config.select.axis is not set: the study has no selection stage")
  sel = config.select
  sel_dir = os.path.join(workdir, SELECT_DIR)
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
                           os.path.join(sel_dir, "cells", cell.key))
        evidence.setdefault(cell.key, {})[dataset] = float(np.mean(list(pq.values())))
    values = [v for per in evidence.values() for v in per.values()]
    candidates.append({"value": value, "score": float(np.mean(values)), "n": len(values),
                       "cells": evidence})
  best = max(candidates, key=lambda c: c["score"])   # first of equal scores: axis order
  keep = [v for v in axes(config)[sel.axis] if str(v) in {str(k) for k in sel.keep}]
  result = {"study": config.name, "axis": sel.axis, "measure": measure,
            "rule": (f"highest mean {measure} over the selection cells and datasets "
                     "(each (cell, dataset) mean weighted equally; ties: axis order)"),
            "chosen": best["value"], "keep": keep,
            "selection_axes": {a: list(v) for a, v in axes(stage).items()},
            "files": sorted("/".join(f.split(os.sep)[-2:]) for f in files),
            "candidates": candidates}
  write_json(os.path.join(workdir, SELECTION), result)
  write_text(os.path.join(workdir, report.SELECTION_MD), report.selection_markdown(result))
  log(f"study {config.name}: selection on {measure} chose {sel.axis}={best['value']} "
      f"({best['score']:.4f}); test stage: {', '.join(str(v) for v in _test_values(config, best['value']))}")
  return result


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


# ---------------------------------------------------------------------------
# Aggregation.


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
  InputError naming the differences (results of another study are never mixed in).
  """
  workdir = os.path.abspath(workdir)
  ax = axes(config)
  cells = grid(config)
  columns = list(CSV_COLUMNS_BEFORE) + list(ax) + list(CSV_COLUMNS_AFTER)
  rows, per_query, finished, datasets, refs = [], {}, [], [], {}
  for cell in cells:
    directory = os.path.join(workdir, "cells", cell.key)
    done = fileio.read_json(os.path.join(directory, DONE))
    # cell_status stops if it finished with other configs, reruns it if damaged.
    if not done or cell_status(plan_cell(config, cell, workdir)) != "done":
      continue
    finished.append(cell.key)
    results = {}
    for dataset, systems in done["datasets"].items():
      for system, rel in systems.items():
        res = fileio.read_json(os.path.join(directory, rel))
        if res is None:
          raise InputError(f"study cell {cell.key}: cannot read its metrics", os.path.join(directory, rel))
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


def _x_axis(config, ax) -> Optional[str]:
  if config.plot.x:
    return config.plot.x
  for a, values in ax.items():
    if a != config.seed_axis and len(values) > 1:
      return a
  return None


def plot(config, col: Collected, out_dir: str) -> List[str]:
  """Curves over the x axis (categorical positions, in axis order) with CI bands; the
  references as dashed lines. Returns the PNG paths written."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  ax_all = axes(config)
  x_axis = _x_axis(config, ax_all)
  if x_axis is None:
    return []
  xs = list(ax_all[x_axis])
  line_axes = [a for a in ax_all if a not in (x_axis, config.seed_axis) and len(ax_all[a]) > 1]
  all_arms = arms(config, col)
  groups: Dict[str, Dict[str, Arm]] = {}
  for arm in all_arms:
    label = ",".join(f"{a}={arm.values[a]}" for a in line_axes) or config.system
    groups.setdefault(label, {})[str(arm.values[x_axis])] = arm
  measures = list(config.measures)
  os.makedirs(out_dir, exist_ok=True)
  written = []

  def curve(axis, label, dataset, measure, name=None):
    pos, mean, lo, hi = [], [], [], []
    for i, x in enumerate(xs):
      arm = groups[label].get(str(x))
      if arm is None:
        continue
      (m, l, h), n = _arm_stats(config, col, arm, dataset, measure)
      if n == 0:
        continue
      pos.append(i)
      mean.append(m)
      lo.append(l if not math.isnan(l) else m)
      hi.append(h if not math.isnan(h) else m)
    if pos:
      line, = axis.plot(pos, mean, marker="o", label=name or label)
      axis.fill_between(pos, lo, hi, alpha=0.2, color=line.get_color())
      return line.get_color()
    return None

  def refs(axis, dataset, measure):
    # References far off the curves' scale (an oracle at 1.0) are named, not drawn, so
    # the curves stay readable.
    lo, hi = axis.get_ylim()
    span = max(hi - lo, 1e-3)
    off = []
    for (_, ds, system), agg in col.references.items():
      if ds != dataset or measure not in agg:
        continue
      v = agg[measure]
      if lo - span <= v <= hi + span:
        axis.axhline(v, linestyle="--", linewidth=0.8, color="grey")
        axis.annotate(system, (0, v), fontsize=6, color="grey", xytext=(2, 2),
                      textcoords="offset points")
      else:
        off.append(f"{system} {v:.3f}")
    if off:
      axis.annotate("off scale: " + ", ".join(off), (0.01, 0.99), xycoords="axes fraction",
                    fontsize=6, color="grey", va="top")

  def finish(fig, axis_list, title):
    labels = [str(x) for x in xs]
    crowded = sum(len(x) for x in labels) > 24   # e.g. loss names side by side: slant them
    for a in axis_list:
      a.set_xticks(range(len(xs)))
      if crowded:
        a.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
      else:
        a.set_xticklabels(labels)
      a.set_xlabel(x_axis)
      a.grid(alpha=0.3)
    axis_list[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()

  if config.plot.by == "dataset":
    for measure in measures:
      fig = Figure(figsize=(5.5, 3.8))
      FigureCanvasAgg(fig)
      axis = fig.add_subplot(1, 1, 1)
      drawn_refs = False
      for dataset in col.datasets:
        color = None
        for label in groups:
          color = curve(axis, label, dataset, measure,
                        name=dataset if label == config.system else f"{dataset} {label}") or color
        for (_, ds, _), agg in col.references.items():  # dashed, in the dataset's colour
          if ds == dataset and measure in agg and color is not None:
            axis.axhline(agg[measure], linestyle="--", linewidth=0.8, color=color)
            drawn_refs = True
      if drawn_refs:
        names = sorted({system for (_, _, system) in col.references})
        axis.annotate("dashed: " + ", ".join(names), (0.01, 0.01), xycoords="axes fraction",
                      fontsize=6, color="grey", va="bottom")
      axis.set_ylabel(measure)
      finish(fig, [axis], f"{config.name}: {measure} ({100 * float(config.confidence):g}% CI over seeds)")
      path = os.path.join(out_dir, f"{_safe(measure)}.png")
      _save(fig, path)
      written.append(path)
  else:
    for dataset in col.datasets:
      fig = Figure(figsize=(3.4 * len(measures) + 0.6, 3.4))
      FigureCanvasAgg(fig)
      axis_list = []
      for j, measure in enumerate(measures):
        axis = fig.add_subplot(1, len(measures), j + 1)
        for label in groups:
          curve(axis, label, dataset, measure)
        refs(axis, dataset, measure)
        axis.set_ylabel(measure)
        axis_list.append(axis)
      finish(fig, axis_list, f"{config.name}: {dataset} "
             f"({100 * float(config.confidence):g}% CI over seeds)")
      path = os.path.join(out_dir, f"{_safe(dataset)}.png")
      _save(fig, path)
      written.append(path)
  return written


def _save(fig, path: str, dpi: int = 130) -> None:
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)


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


@dataclasses.dataclass
class Aggregate:
  csv_path: str
  summary_path: str
  plots: List[str]
  finished: int
  total: int
  rows: int


def aggregate(config, workdir: str, *, log: Log = monitor.stderr_line, archive: str = "") -> Aggregate:
  """Writes results.csv, summary.md (+ summary.json) and plots/*.png from finished cells.

  Unfinished cells are left out with a warning line (the summary says how many).
  `archive`: cells (and selection cells) the workdir lacks are first restored from their
  records there (`restore_cells`), e.g. a committed study page's `cells/`.
  """
  workdir = os.path.abspath(workdir)
  if archive:
    stage = selection_stage(config)
    if stage is not None:
      sel_dir = os.path.join(workdir, SELECT_DIR)
      restore_cells(stage, [plan_cell(stage, c, sel_dir) for c in grid(stage)],
                    os.path.join(archive, SELECT_DIR), log)
    test = config if stage is None else test_stage(
        config, choose(config, workdir, log=lambda _: None)["chosen"])
    restore_cells(test, [plan_cell(test, c, workdir) for c in grid(test)], archive, log)
  if not os.path.isdir(workdir):
    raise InputError("study workdir not found (run the study first)", workdir)
  if config.select.axis:
    chosen = choose(config, workdir, log=log)
    aggregate(selection_stage(config), os.path.join(workdir, SELECT_DIR), log=log)
    config = test_stage(config, chosen["chosen"])
  col = collect(config, workdir)
  if not col.finished:
    raise InputError(f"study {config.name}: none of its {len(col.cells)} cells has finished; "
                     "nothing to aggregate (run the study first)", workdir)
  missing = len(col.cells) - len(col.finished)
  if missing:
    log(f"warning: {missing} of {len(col.cells)} cells are not finished; aggregating the "
        f"{len(col.finished)} that are")
  csv_path = os.path.join(workdir, report.RESULTS)
  write_text(csv_path, _csv_text(col.columns, col.rows))
  fileio.write_bytes(os.path.join(workdir, report.PER_QUERY), _per_query_bytes(config, col))
  write_json(os.path.join(workdir, report.META), report_meta(config, col))
  markdown = report.write(workdir)
  summary_path = os.path.join(workdir, report.SUMMARY)
  primary = report.section(markdown, "### Primary family")
  if primary:
    log(primary)
  plots = plot(config, col, os.path.join(workdir, "plots")) if col.rows else []
  log(f"study {config.name}: aggregated {len(col.finished)}/{len(col.cells)} cells, "
      f"{len(col.rows)} rows -> {csv_path}, {summary_path}, {len(plots)} plot(s)")
  return Aggregate(csv_path, summary_path, plots, len(col.finished), len(col.cells), len(col.rows))
