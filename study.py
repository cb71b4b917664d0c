"""Run a study: a grid of train + eval cells, aggregated into a CSV, tables with confidence intervals and curves.

    python study.py --config configs/studies/data_amount.py:smoke --workdir /tmp/study
    python study.py --config configs/studies/data_amount.py:cpu --workdir runs/data_amount
    python study.py --config configs/studies/data_amount.py:cpu --workdir W --shard=0/4   # 4 processes,
    python study.py --config configs/studies/data_amount.py:cpu --workdir W --aggregate   # then merge

Each cell trains through `optical_jax.trainer` and evaluates through
`optical_jax.evaluator` in this process; finished cells are skipped, so rerunning the
same command continues a killed study. The workdir gets `cells/<key>/` (resolved
configs, training workdir, evaluations), `results.csv` (one row per cell, dataset and
metric), `summary.md` (mean and 95% CI over seeds, paired tests between arms) and
`plots/*.png`. Bad input prints one line and exits 2. The program is
`optical_jax.cli.study_main`; the logic lives in the `optical_jax.study` package.
"""

from optical_jax import cli

if __name__ == "__main__":
  cli.study_main()
