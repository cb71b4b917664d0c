"""Train a teacher (English retrieval) or distil a student query encoder with OPTICAL.

    python train.py --config configs/tiny.py --workdir /tmp/tiny
    python train.py --config configs/swa_minilm.py --workdir runs/minilm --config.train.steps=2000

The workdir gets the resolved `config.json`, `checkpoints/` (Orbax), `metrics.jsonl`,
`tensorboard/` event files and, at the end, the exported model (`student/` in distill
mode, `teacher/` in teacher mode) that `eval.py` loads. Rerunning the same command
resumes from the latest complete checkpoint. Bad input prints one line and exits 2.
The program is `optical_jax.cli.train_main` (also installed as `optical-train`).
"""

from optical_jax import cli

if __name__ == "__main__":
  cli.train_main()
