"""Train a teacher (English retrieval) or distil a student query encoder with OPTICAL.

    python train.py --config configs/tiny.py --workdir /tmp/tiny
    python train.py --config configs/swa_minilm.py --workdir runs/minilm --config.train.steps=2000

The workdir gets the resolved `config.json`, `checkpoints/` (Orbax), `metrics.jsonl`,
`tensorboard/` event files and, at the end, the exported model (`student/` in distill
mode, `teacher/` in teacher mode) that `eval.py` loads. Rerunning the same command
resumes from the latest complete checkpoint. Bad input prints one line and exits 2.
"""

import sys

from absl import flags
from ml_collections import config_flags

from optical_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (ml_collections).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the export.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from optical_jax import trainer  # pylint: disable=g-import-not-at-top
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  try:
    result = trainer.run(_CONFIG.value, _WORKDIR.value)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except trainer.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  print(f"done: step {result.step}; model exported to {result.export_dir}")
  return 0


if __name__ == "__main__":
  cli.run(main)
