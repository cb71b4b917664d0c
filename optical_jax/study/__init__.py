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
    cells/<key>/train/         the trainer's workdir (checkpoints, export in student/;
                               deleted once the cell is finished with `drop_trained`)
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

The package, one concept a module:

    spec.py       the config schema (`default_config`), axes, arms, cells, shards
    cells.py      one cell: its plan, status (fingerprint, drift, damage), run, restore
    selection.py  the selection stage, the choice, the test stage, leak guards
    rows.py       finished cells -> tidy rows, per-query values, the page's data files
    plots.py      curves with confidence bands
    runner.py     `run` (a shard of the grid, selection first) and `aggregate`

Everything public is importable from `optical_jax.study` itself; the statistics are
`optical_jax.stats`, the pages `optical_jax.report`, the archive records
`optical_jax.cell_archive`.
"""

from optical_jax.study.spec import (CSV_COLUMNS_AFTER, CSV_COLUMNS_BEFORE, DONE, REFERENCE,
                                    Cell, Log, axes, cell_key, default_config, grid,
                                    parse_shard, shard_cells)
from optical_jax.study.cells import (CellPlan, CellWarning, cell_status, config_changes,
                                     plan_cell, restore_cells, run_cell)
from optical_jax.study.selection import (SELECT_DIR, SELECTION, choose, selection_stage,
                                         test_stage)
from optical_jax.study.rows import Arm, Collected, arms, collect, report_meta
from optical_jax.study.plots import plot
from optical_jax.study.runner import Aggregate, StudyResult, aggregate, run, write_grid

__all__ = ["Aggregate", "Arm", "CSV_COLUMNS_AFTER", "CSV_COLUMNS_BEFORE", "Cell", "CellPlan",
           "CellWarning", "Collected", "DONE", "Log", "REFERENCE", "SELECTION", "SELECT_DIR",
           "StudyResult", "aggregate", "arms", "axes", "cell_key", "cell_status", "choose",
           "collect", "config_changes", "default_config", "grid", "parse_shard", "plan_cell",
           "plot", "report_meta", "restore_cells", "run", "run_cell", "selection_stage",
           "shard_cells", "test_stage", "write_grid"]
