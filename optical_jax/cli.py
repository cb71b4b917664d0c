"""The command-line front end of train.py, eval.py and study.py (and their console entry points).

One place for what every program does the same way: absl flag parsing with the
ml_collections `--config` file and its `--config.a.b=value` overrides, bad input as one
`error: ...` line and exit status 2 (never a traceback), data warnings as one line,
quiet start-up logging, the persistent XLA compilation cache, and a closing count of the
XLA compilations the run needed.

    python train.py --config configs/tiny.py --workdir /tmp/tiny     # = optical-train ...
    python eval.py --config configs/eval_afriqa.py --out /tmp/eval    # = optical-eval ...
    python study.py --config configs/studies/data_amount.py:smoke --workdir /tmp/study
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Callable, List, Optional, Sequence

from absl import flags

from optical_jax import paths

EXIT_FAILURE = 1     # another failure (an operating-system error that is not storage)
EXIT_INPUT = 2       # bad input: config, flags or data
EXIT_NONFINITE = 3   # training stopped on a NaN/inf loss or gradient
EXIT_STORAGE = 4     # the machine refused a write (disk full, read-only, quota)
EXIT_SIGNAL = 128    # + the signal's number: stopped by SIGTERM (143) or Ctrl-C (130)


def _one_line(e: BaseException) -> str:
  """An exception as one line: the InputError in its cause chain if any, else its last line."""
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  seen: Optional[BaseException] = e
  while seen is not None:
    if isinstance(seen, InputError):
      return str(seen)
    seen = seen.__cause__ or seen.__context__
  cause = e.__cause__ or e
  lines = [part.strip() for part in str(cause).splitlines() if part.strip()]
  text = lines[-1] if lines else type(cause).__name__
  return " ".join(text.split())


def _die(msg: str, status: int = EXIT_INPUT) -> None:
  print(f"error: {msg.splitlines()[0] if msg else 'failed'}", file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv: Optional[Sequence[str]] = None) -> List[str]:
  """Parses absl flags (incl. ml_collections `--config.x=y` overrides) and loads `--config`.

  A bad flag, a config file that fails to load (or refuses its argument), an unknown
  config key or an ill-typed override prints one line and exits 2.
  """
  argv = list(sys.argv if argv is None else argv)
  if os.getcwd() not in sys.path:  # config files import `configs.common` from the checkout
    sys.path.append(os.getcwd())
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Error whilst parsing config file" in text:   # get_config() raised: its last line
      last = [l.strip() for l in text.splitlines() if l.strip()][-1]
      _die("cannot load config: " + re.sub(r"^[\w.]*(Error|Exception): ", "", last))
    _die(f"bad command line: {text}")
  except (AttributeError, KeyError) as e:
    _die(_unknown_key(e, argv))
  except (TypeError, ValueError) as e:
    _die(f"bad config override: {_one_line(e)}")
  except Exception as e:  # pylint: disable=broad-except  (a config file's get_config() failed)
    _die(f"cannot load config: {_one_line(e)}")
  if "config" in flags.FLAGS:
    try:  # ml_collections loads config files lazily: surface a failure as one line
      flags.FLAGS.config.to_dict()
    except Exception as e:  # pylint: disable=broad-except
      _die(f"cannot load config: {_one_line(e)}")
  return rest


def _unknown_key(e: BaseException, argv: Sequence[str]) -> str:
  """One line for an unknown `--config.a.b` key: the key, the flag, ml_collections'
  closest known key (its message is a repr of a repr with the hint on a second line)."""
  text = str(e)
  for _ in range(3):   # undo the nested reprs: \\' -> ', \\n -> newline
    text = text.replace("\\\\", "\\").replace("\\'", "'").replace("\\n", "\n")
  found = re.findall(r"'([^'\s]+)'", text)
  key = found[0] if found else text.strip("\"' ")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  flags_given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
  culprit = next((f for f in flags_given if key in f.split(".")[1:]), "")
  return (f"unknown config key {key!r}" + (f" in {culprit}" if culprit else "")
          + (f"; did you mean {hint.group(1)!r}?" if hint else ""))


def one_line_warnings() -> None:
  """This project's warnings (dropped judgements, missing bitext, ...) as `warning: ...`
  lines; other libraries' warnings keep Python's format."""
  default = warnings.showwarning

  from optical_jax.data.beir import DataWarning  # pylint: disable=g-import-not-at-top

  def show(message, category, filename, lineno, file=None, line=None):
    ours = issubclass(category, DataWarning) or "site-packages" not in str(filename)
    if issubclass(category, UserWarning) and ours:
      print(f"warning: {message}", file=sys.stderr, flush=True)
    else:
      default(message, category, filename, lineno, file, line)
  warnings.showwarning = show


def quiet_closed_event_loops() -> None:
  """Drops the 'Event loop is closed' RuntimeErrors that Orbax's asyncio helpers raise in
  finalizers after a handled checkpoint fallback (thousands of lines, nothing wrong);
  every other unraisable exception is reported as before."""
  default = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
      return
    default(unraisable)
  sys.unraisablehook = hook


def enable_compilation_cache() -> Optional[str]:
  """Turns on JAX's persistent compilation cache (under the asset cache, `xla/`).

  Resumes, preemption restarts, repeated evaluations and study cells then load compiled
  programs from disk (a MiniLM step: 1.3 s instead of 7-8 s per bucket); every program is
  cached, however quickly it compiled. JAX_COMPILATION_CACHE_DIR, when set, wins;
  OPTICAL_JAX_XLA_CACHE=none turns it off. Returns the directory used.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from optical_jax import assets  # pylint: disable=g-import-not-at-top
  if os.environ.get("OPTICAL_JAX_XLA_CACHE", "") == "none":
    return None
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  path = os.environ.get("OPTICAL_JAX_XLA_CACHE") or os.path.join(assets.cache_dir(), "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path


def run(main: Callable[[List[str]], int], argv: Optional[Sequence[str]] = None) -> None:
  """Parses flags, sets up logging, warnings and the compilation cache, runs `main(argv)`
  and exits with its status.

  An `InputError` escaping `main` is printed as one line with status 2. On success the
  number of XLA compilations (and persistent-cache loads) is printed to stderr.
  """
  args = parse_flags(argv)
  if len(args) > 1:
    _die(f"unexpected arguments: {args[1:]}")
  for name in ("absl", "jax", "orbax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  one_line_warnings()
  enable_compilation_cache()
  import signal  # pylint: disable=g-import-not-at-top
  from optical_jax.errors import InputError, Interrupted, StorageError  # pylint: disable=g-import-not-at-top
  from optical_jax.monitor import CompileCounter  # pylint: disable=g-import-not-at-top
  quiet_closed_event_loops()
  counter = CompileCounter().start()
  try:
    status = main(args)
  except InputError as e:
    _die(str(e))
  except StorageError as e:
    _die(str(e), EXIT_STORAGE)
  except OSError as e:   # the operating system said no where nothing else caught it
    from optical_jax.checkpoint import storage_problem  # pylint: disable=g-import-not-at-top
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    _die(f"{where}{e.strerror or e}", EXIT_STORAGE if storage_problem(e) else EXIT_FAILURE)
  except Interrupted as e:
    _die(f"stopped: {e}", EXIT_SIGNAL + e.signum)
  except KeyboardInterrupt:
    _die("interrupted (Ctrl-C); rerun the same command to resume", EXIT_SIGNAL + signal.SIGINT)
  finally:
    counter.stop()
  if status == 0:
    print(f"compilation: {counter.summary()}", file=sys.stderr, flush=True)
  sys.exit(status)


# --------------------------------------------------------------------------------------
# The programs


def _config_flag(help_text: str = "Python config file (ml_collections), `FILE[:ARG]`."):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if "config" in flags.FLAGS:
    return flags.FLAGS["config"]
  return config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def _string_flag(name: str, help_text: str):
  if name in flags.FLAGS:
    return flags.FLAGS[name]
  return flags.DEFINE_string(name, None, help_text)


def train_main(argv: Optional[Sequence[str]] = None) -> None:
  """`train.py` / `optical-train`: train a teacher or distil a student (see train.py)."""
  config = _config_flag()
  workdir = _string_flag("workdir", "Directory for checkpoints, logs and the export.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(_):
    from optical_jax import trainer  # pylint: disable=g-import-not-at-top
    try:
      result = trainer.run(config.value, workdir.value)
    except trainer.NonFiniteError as e:
      print(f"error: {e}", file=sys.stderr)
      return EXIT_NONFINITE
    trainer.check_complete(result, config.value)
    print(f"done: step {result.step}; model exported to {result.export_dir}")
    return 0

  run(main, argv)


def eval_main(argv: Optional[Sequence[str]] = None) -> None:
  """`eval.py` / `optical-eval`: evaluate retrieval systems (see eval.py)."""
  config = _config_flag()
  out = _string_flag("out", "Output directory (runs, metrics, comparison).")
  flags.mark_flags_as_required(["config", "out"])

  def main(_):
    from optical_jax import evaluator  # pylint: disable=g-import-not-at-top
    result = evaluator.run(config.value, out.value)
    print(result.markdown)
    print(f"done: {len(result.computed)} computed, {len(result.reused)} reused; "
          f"outputs in {result.out_dir}")
    return 0

  run(main, argv)


def study_main(argv: Optional[Sequence[str]] = None) -> None:
  """`study.py`: run (a shard of) a study grid, or aggregate it (see study.py)."""
  config = _config_flag("Study config file (ml_collections), `FILE[:ARG]` (configs/studies/).")
  workdir = _string_flag("workdir", "Study directory (cells, results.csv, summary.md, plots/).")
  shard = _string_flag("shard", "Run only cells i, i+n, ... of the grid: `i/n` (default 0/1).")
  if "aggregate" in flags.FLAGS:
    aggregate = flags.FLAGS["aggregate"]
  else:
    aggregate = flags.DEFINE_bool("aggregate", False, "Only aggregate finished cells.")
  if "select_only" in flags.FLAGS:
    select_only = flags.FLAGS["select_only"]
  else:
    select_only = flags.DEFINE_bool("select_only", False, "Run the selection stage and "
                                    "write the choice, not the test stage.")
  archive = _string_flag("archive", "Directory of finished cells' records "
                         "(optical_jax.cell_archive): cells the workdir lacks are restored "
                         "from it, finished cells are written to it.")
  if "drop_trained" in flags.FLAGS:
    drop_trained = flags.FLAGS["drop_trained"]
  else:
    drop_trained = flags.DEFINE_bool("drop_trained", False, "Delete a finished cell's train/ "
                                     "(checkpoints, exported student) once its results are "
                                     "written: a grid's finished cells keep only their numbers.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(_):
    from optical_jax import study  # pylint: disable=g-import-not-at-top
    if aggregate.value:
      if shard.value:
        _die("--aggregate merges every shard: give it without --shard")
      result = study.aggregate(config.value, workdir.value, archive=archive.value or "")
      print(f"done: {result.finished}/{result.total} cells, {result.rows} rows; outputs in "
            f"{paths.resolve(workdir.value)}")
      return 0
    parts = study.parse_shard(shard.value or "0/1")
    result = study.run(config.value, workdir.value, shard=parts, select_only=select_only.value,
                       archive=archive.value or "", drop_trained=drop_trained.value)
    print(f"done: ran {len(result.ran)} cells, {len(result.skipped)} already finished "
          f"({len(result.shard_cells)} in this shard, {result.total} in the grid)")
    return 0

  run(main, argv)
