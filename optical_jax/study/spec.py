"""A study's config schema (`default_config`) and its grid: axes, arms, cells (keys and
reference cells), shards."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import ml_collections

from optical_jax import cell_archive, metrics, plain, stats
from optical_jax.errors import InputError

Log = Callable[[str], None]
_VALUE_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
DONE = cell_archive.DONE
REFERENCE = "reference"
CSV_COLUMNS_BEFORE = ("study", "cell", "kind")
CSV_COLUMNS_AFTER = ("system", "dataset", "metric", "value", "num_queries")


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
