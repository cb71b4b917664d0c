"""Running a study: its shard of the grid (with a selection stage first when declared),
progress lines, and aggregation into the files its page is rendered from."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import signal
import time
from typing import List, Optional, Sequence, Tuple


from optical_jax import cell_archive, checkpoint, fileio, monitor, paths, report
from optical_jax.errors import InputError, Interrupted
from optical_jax.fileio import write_json, write_text
from optical_jax.study.spec import Cell, Log, axes, grid, shard_cells
from optical_jax.study.cells import cell_status, plan_cell, restore_cells, run_cell
from optical_jax.study.selection import SELECT_DIR, choose, selection_stage, test_stage, _finished_keys
from optical_jax.study.rows import _csv_text, _per_query_bytes, collect, report_meta
from optical_jax.study.plots import plot


@dataclasses.dataclass
class StudyResult:
  """What `run` did: cells run now, cells already finished, the shard's cells, the grid size."""

  ran: List[str]
  skipped: List[str]
  shard_cells: List[str]
  total: int
  aggregated: bool


def write_grid(config, workdir: str, cells: Sequence[Cell]) -> None:
  write_json(paths.join(workdir, "study.json"),
             {"name": config.name, "axes": {k: list(v) for k, v in axes(config).items()},
              "seed_axis": config.seed_axis,
              "cells": [{"key": c.key, "values": c.values, "reference": c.reference}
                        for c in cells]})


def _report_progress(config, plans, skipped, ran, todo, t0: float, last, log: Log) -> None:
  from optical_jax.monitor import format_duration  # pylint: disable=g-import-not-at-top
  # The rate counts only cells run now (finished ones were skipped in no time).
  per = (time.time() - t0) / len(ran)
  done = len(skipped) + len(ran)
  log(f"study {config.name}: {done}/{len(plans)} cells done ({100 * done // len(plans)}%) | "
      f"{format_duration(per)} per cell | ETA {format_duration(per * (len(todo) - len(ran)))}"
      f" | last {last.cell.key}")


def run(config, workdir: str, *, shard: Tuple[int, int] = (0, 1), log: Log = monitor.stderr_line,
        aggregate_after: Optional[bool] = None, select_only: bool = False,
        archive: str = "", drop_trained: bool = False) -> StudyResult:
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

  `drop_trained`: a finished cell's `train/` (checkpoints and the exported student, about
  1 GB for an e5 cell) is deleted once its `done.json` (and record) are written; its
  results stay, and a rerun still skips it. For grids that only need the numbers.

  Logs `study NAME: k/n cells done (..%) | time per cell | ETA | last KEY` after each cell. Bad configs stop with
  one InputError line before anything trains.
  """
  workdir = paths.resolve(workdir)
  stage = selection_stage(config)
  if stage is None:
    return _run_grid(config, workdir, shard, log, aggregate_after, archive, drop_trained)
  sel_dir = paths.join(workdir, SELECT_DIR)
  sel = _run_grid(stage, sel_dir, shard, log, shard[1] == 1,
                  paths.join(archive, SELECT_DIR) if archive else "", drop_trained)
  left = len(grid(stage)) - len(_finished_keys(stage, sel_dir))
  if left:
    log(f"study {config.name}: the selection stage has {left} unfinished cell(s) in other "
        "shards; rerun this command when every shard has finished")
    return StudyResult(sel.ran, sel.skipped, sel.shard_cells, sel.total, False)
  chosen = choose(config, workdir, log=log)
  if select_only:
    return StudyResult(sel.ran, sel.skipped, sel.shard_cells, sel.total, sel.aggregated)
  result = _run_grid(test_stage(config, chosen["chosen"]), workdir, shard, log, aggregate_after,
                     archive, drop_trained)
  return StudyResult(sel.ran + result.ran, sel.skipped + result.skipped,
                     sel.shard_cells + result.shard_cells, sel.total + result.total,
                     result.aggregated)


def release_free_memory() -> str:
  """Hands the host allocator's free pages back to the kernel (after a cell: the next one
  has other shapes). With jemalloc set to keep freed pages, as `scripts/decisive.sh` runs
  studies, a long study would otherwise hold the sum of its cells' peaks; with glibc this
  is `malloc_trim(0)`. Returns which one handed pages back ('' when neither is there, or
  jemalloc's purge failed)."""
  gc.collect()   # the finished cell's arrays, before their memory is handed back
  libc = ctypes.CDLL(None)
  mallctl = getattr(libc, "mallctl", None)   # jemalloc, when preloaded
  if mallctl is not None:
    rc = mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0))  # 4096: all arenas
    return "jemalloc" if rc == 0 else ""
  trim = getattr(libc, "malloc_trim", None)
  if trim is not None:
    trim(ctypes.c_size_t(0))
    return "glibc"
  return ""


def _drop_trained(plan, log: Log) -> None:
  """Deletes a finished cell's trainer workdir (checkpoints, exported student)."""
  train = paths.join(plan.directory, "train")
  if paths.isdir(train):
    paths.rmtree(train)
    log(f"study: dropped {train} (the cell is finished; --drop_trained)")


def _run_grid(config, workdir: str, shard: Tuple[int, int], log: Log,
              aggregate_after: Optional[bool], archive: str = "",
              drop_trained: bool = False) -> StudyResult:
  """`run` for one grid (no selection stage)."""
  cells = grid(config)
  mine = shard_cells(cells, shard)
  plans = [plan_cell(config, c, workdir) for c in mine]
  if archive:
    restore_cells(config, plans, archive, log)
  status = {p.cell.key: cell_status(p) for p in plans}
  paths.makedirs(workdir)
  write_grid(config, workdir, cells)
  todo = [p for p in plans if status[p.cell.key] == "todo"]
  skipped = [p.cell.key for p in plans if status[p.cell.key] == "done"]
  where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
  log(f"study {config.name}{where}: {len(plans)} of {len(cells)} cells; {len(skipped)} "
      f"finished, {len(todo)} to run")
  for p in plans:
    if p.cell.key in skipped:
      if archive:  # cells finished before the archive was named: recorded first, so a run
        cell_archive.save(p.directory, archive)  # stopped later still leaves them there
      if drop_trained:
        _drop_trained(p, log)
  ran = []
  t0 = time.time()
  # SIGTERM / Ctrl-C while a cell trains stops its training after a checkpoint (the
  # trainer's own guard: Interrupted); one that arrives while a cell evaluates lets the
  # cell finish and stops the study before the next one.
  guard = checkpoint.PreemptionGuard(signals=(signal.SIGTERM, signal.SIGINT))
  try:
    for p in todo:
      log(f"study: cell {p.cell.key}")
      run_cell(config, p, log)
      if archive:
        cell_archive.save(p.directory, archive)
      if drop_trained:
        _drop_trained(p, log)
      release_free_memory()
      ran.append(p.cell.key)
      _report_progress(config, plans, skipped, ran, todo, t0, p, log)
      if guard.should_stop() and len(ran) < len(todo):
        raise Interrupted(guard.received, f"study stopped by {guard.signal_name()} after cell "
                          f"{p.cell.key} ({len(skipped) + len(ran)} of {len(plans)} cells "
                          "finished); rerun the same command to continue")
  finally:
    guard.restore()
  if aggregate_after is None:
    aggregate_after = shard[1] == 1
  if aggregate_after:
    aggregate(config, workdir, log=log)
  elif shard[1] > 1:
    log(f"study: shard {shard[0]}/{shard[1]} finished; when every shard has, run "
        "study.py with --aggregate")
  return StudyResult(ran, skipped, [p.cell.key for p in plans], len(cells), aggregate_after)


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
  workdir = paths.resolve(workdir)
  if archive:
    stage = selection_stage(config)
    if stage is not None:
      sel_dir = paths.join(workdir, SELECT_DIR)
      restore_cells(stage, [plan_cell(stage, c, sel_dir) for c in grid(stage)],
                    paths.join(archive, SELECT_DIR), log)
    test = config if stage is None else test_stage(
        config, choose(config, workdir, log=lambda _: None)["chosen"])
    restore_cells(test, [plan_cell(test, c, workdir) for c in grid(test)], archive, log)
  if not paths.isdir(workdir):
    raise InputError("study workdir not found (run the study first)", workdir)
  if config.select.axis:
    chosen = choose(config, workdir, log=log)
    aggregate(selection_stage(config), paths.join(workdir, SELECT_DIR), log=log)
    config = test_stage(config, chosen["chosen"])
  col = collect(config, workdir)
  if not col.finished:
    raise InputError(f"study {config.name}: none of its {len(col.cells)} cells has finished; "
                     "nothing to aggregate (run the study first)", workdir)
  missing = len(col.cells) - len(col.finished)
  if missing:
    log(f"warning: {missing} of {len(col.cells)} cells are not finished; aggregating the "
        f"{len(col.finished)} that are")
  csv_path = paths.join(workdir, report.RESULTS)
  write_text(csv_path, _csv_text(col.columns, col.rows))
  fileio.write_bytes(paths.join(workdir, report.PER_QUERY), _per_query_bytes(config, col))
  write_json(paths.join(workdir, report.META), report_meta(config, col))
  markdown = report.write(workdir)
  summary_path = paths.join(workdir, report.SUMMARY)
  primary = report.section(markdown, "### Primary family")
  if primary:
    log(primary)
  plots = plot(config, col, paths.join(workdir, report.PLOTS)) if col.rows else []
  log(f"study {config.name}: aggregated {len(col.finished)}/{len(col.cells)} cells, "
      f"{len(col.rows)} rows -> {csv_path}, {summary_path}, {len(plots)} plot(s)")
  return Aggregate(csv_path, summary_path, plots, len(col.finished), len(col.cells), len(col.rows))
