"""Evaluate retrieval systems on a BEIR dataset: TREC runs, metrics, a comparison table and chart.

    python eval.py --config configs/eval_afriqa.py --out /tmp/eval_afriqa
    python eval.py --config configs/eval_afriqa.py:swa,run.optical=/tmp/run1 --out /tmp/eval_student
    python eval.py --config configs/eval_afriqa.py --out DIR --config.top_k=1000

The out directory gets `runs/<system>.trec`, `metrics/<system>.json`, `comparison.md`,
`comparison.json`, `comparison.png`, the resolved `config.json` and `manifest.json`.
Rerunning the same command reuses every system whose inputs did not change. Bad input
prints one line (`error: path:line: problem`) and exits 2. The program is
`optical_jax.cli.eval_main` (also installed as `optical-eval`).
"""

from optical_jax import cli

if __name__ == "__main__":
  cli.eval_main()
