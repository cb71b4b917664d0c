"""Evaluate retrieval systems on a BEIR dataset: TREC runs, metrics, a comparison table and chart.

    python eval.py --config configs/eval_afriqa.py --out /tmp/eval_afriqa
    python eval.py --config configs/eval_afriqa.py:swa,optical=/tmp/run1 --out /tmp/eval_student
    python eval.py --config configs/eval_afriqa.py --out DIR --config.top_k=1000

The out directory gets `runs/<system>.trec`, `metrics/<system>.json`, `comparison.md`,
`comparison.json`, `comparison.png`, the resolved `config.json` and `manifest.json`.
Rerunning the same command reuses every system whose inputs did not change. Bad input
prints one line (`error: path:line: problem`) and exits 2.
"""

import logging
import sys
import warnings

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file (ml_collections).",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (runs, metrics, comparison).")
flags.mark_flags_as_required(["config", "out"])


def _one_line_warnings() -> None:
  """Data warnings (dropped judgements, ...) as `warning: ...` lines instead of source dumps."""
  from optical_jax.data.beir import DataWarning  # pylint: disable=g-import-not-at-top
  default = warnings.showwarning

  def show(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DataWarning):
      print(f"warning: {message}", file=sys.stderr, flush=True)
    else:
      default(message, category, filename, lineno, file, line)
  warnings.showwarning = show


def _one_line(e: BaseException) -> str:
  """An exception as one line: its InputError cause if it has one, else its message."""
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  seen = e
  while seen is not None:
    if isinstance(seen, InputError):
      return str(seen)
    seen = seen.__cause__ or seen.__context__
  lines = [part.strip() for part in str(e).splitlines() if part.strip()]
  # ml_collections' "Failed loading config file" message ends with the OS error.
  return f"cannot load --config: {lines[-1] if lines else type(e).__name__}"


def _load_config():
  """The config (ml_collections loads the file lazily); a config that fails to load or an
  override naming an unknown field is one line and exit 2."""
  try:
    config = _CONFIG.value
    config.to_dict()   # a config that failed to load raises only when used
    return config
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _load_config()
  from optical_jax import evaluator  # pylint: disable=g-import-not-at-top
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax").setLevel(logging.WARNING)
  _one_line_warnings()
  try:
    result = evaluator.run(config, _OUT.value)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(result.markdown)
  done = f"{len(result.computed)} computed, {len(result.reused)} reused"
  print(f"done: {done}; outputs in {result.out_dir}")
  return 0


def _parse_flags(argv):
  """absl's parser, with errors (also from loading the config file) as one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, flags.Error):
      message = str(e)
    elif isinstance(e, (AttributeError, KeyError)):   # --config.a.b=... naming no field
      message = f"--config override names an unknown field: {str(e).strip(chr(34))}"
    else:
      message = _one_line(e)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)
