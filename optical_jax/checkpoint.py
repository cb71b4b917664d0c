"""Orbax checkpoints of the train state and data position: save, keep-last-K, resume with fallback.

A checkpoint holds two items: `state` (the `TrainState` pytree: student params,
optimizer state, step, rng, skipped-update count) and `meta` (JSON: the data
iterator's position and anything else the trainer wants back). The teacher is
never saved. Orbax writes each step into a temporary directory and renames it when
complete (on an object store, where there is no rename, it writes `commit_success.txt`
last), so a killed run never leaves a half checkpoint that looks finished; on
start `restore_latest` tries the newest step and falls back to older ones if a
restore fails, reporting each failure and moving the failed step aside
(`checkpoints/STEP.corrupt`) so that the run can write that step again.
"""

from __future__ import annotations

import errno
import logging
import re
import signal
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from optical_jax import paths
from optical_jax.errors import InputError, StorageError

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the items this project saves."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = False):
    self.directory = paths.resolve(directory)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options,
                                 item_names=("state", "meta"))

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: Dict[str, Any], force: bool = True) -> bool:
    """Saves `step`; a write the file system refuses (a full disk, a read-only
    directory) raises `StorageError` in one line, the earlier checkpoints intact (Orbax
    writes into a temporary directory, removed on the next start). Orbax's own error
    logs for that failure are kept out of the terminal."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)   # its worker threads log each failed write
    try:
      saved = self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      problem = storage_problem(e)
      if problem is None:
        raise
      raise StorageError(f"{self.directory}: cannot save the checkpoint of step {step}: "
                         f"{problem}; the last complete checkpoint is kept: make room and "
                         "rerun the same command to resume") from None
    finally:
      absl_logger.setLevel(level)
    return saved

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    out = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_latest(self, abstract_state: Any, report: Callable[[str], None] = log.warning,
                     check_meta: Optional[Callable[[int, Dict[str, Any]], None]] = None
                     ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """The newest checkpoint that restores; None when there is none.

    A step that fails to restore (its state, or its meta: `check_meta(step, meta)`
    raising ValueError, e.g. a data position that is not one) is reported, moved aside
    to `STEP.corrupt` (or `STEP.corrupt.N` when that exists; kept for inspection, never
    deleted) and the previous one is tried. Moving it aside is what lets the run save
    that step again when it gets there: Orbax refuses to overwrite an existing step.
    Other errors of `check_meta` (InputError: the run's data changed) propagate.
    """
    moved = False
    try:
      for step in reversed(self.all_steps()):
        try:
          state, meta = self.restore(step, abstract_state)
          if check_meta is not None:
            check_meta(step, meta)
          return step, state, meta
        except InputError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          where = paths.join(self.directory, str(step))
          first = str(e).splitlines()[0] if str(e) else ""
          if len(first) > 300:
            first = first[:300] + "..."
          aside = self._move_aside(step)
          moved = True
          report(f"checkpoint {where} failed to restore ({type(e).__name__}: {first}); "
                 f"moved to {aside}; trying the previous one")
      return None
    finally:
      if moved:
        self._reopen()

  def _move_aside(self, step: int) -> str:
    """Renames a step directory to `STEP.corrupt[.N]` (process 0 only); returns the new path."""
    src = paths.join(self.directory, str(step))
    dst = corrupt_name(src)
    if jax.process_index() == 0:
      try:
        paths.replace(src, dst)
      except OSError as e:
        raise InputError(f"checkpoint failed to restore and cannot be moved aside to {dst}: "
                         f"{e.strerror or e}; move or delete it", src) from e
    return dst

  def _reopen(self) -> None:
    """Re-creates the Orbax manager so that it forgets the steps moved aside."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("optical_jax.checkpoint.move_aside")
    self.manager.close()
    self.manager = self._open()

  def close(self):
    self.manager.close()


_STORAGE_MESSAGES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                     errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


def storage_problem(e: BaseException) -> Optional[str]:
  """What the file system refused, for an error raised while writing (OSError, or
  tensorstore's ValueError carrying `[os_error_code='N']`); None for anything else."""
  seen: Optional[BaseException] = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in _STORAGE_MESSAGES:
      return _STORAGE_MESSAGES[seen.errno]
    code = re.search(r"os_error_code='(\d+)'", str(seen))
    if code and int(code.group(1)) in _STORAGE_MESSAGES:
      return _STORAGE_MESSAGES[int(code.group(1))]
    seen = seen.__cause__ or seen.__context__
  return None


def corrupt_name(path: str) -> str:
  """`PATH.corrupt`, or the first free `PATH.corrupt.N` (N = 1, 2, ...)."""
  dst = f"{path}.corrupt"
  n = 0
  while paths.exists(dst):
    n += 1
    dst = f"{path}.corrupt.{n}"
  return dst


def abstract_like(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs (with a sharding, for restoring straight onto devices)."""
  def one(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class PreemptionGuard:
  """Turns SIGTERM (cloud TPU preemption, `kill`) and, when asked, SIGINT (Ctrl-C) into a
  flag the train loop polls.

  The loop saves a complete checkpoint and stops when `should_stop()` is True;
  `received` is the first signal's number. A second SIGINT raises KeyboardInterrupt at
  once (a user who insists). On several hosts the flag is agreed on with
  `multihost_utils` so that every process stops at the same step.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._old = {}
    self.received: Optional[int] = None
    for s in signals:
      try:
        self._old[s] = signal.signal(s, self._handler)
      except ValueError:  # not the main thread
        pass

  def _handler(self, signum, frame):
    del frame
    if self._flag.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt
    log.warning("received signal %d: saving a checkpoint and stopping", signum)
    if self.received is None:
      self.received = signum
    self._flag.set()

  def signal_name(self) -> str:
    return signal.Signals(self.received).name if self.received else "a signal"

  def should_stop(self) -> bool:
    local = self._flag.is_set()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flags = multihost_utils.process_allgather(np.array([local], np.int32))
      stop = bool(np.asarray(flags).any())
      if stop and self.received is None:   # another host's signal
        self.received = signal.SIGTERM
      return stop
    return local

  def restore(self):
    """Puts the previous handlers back. A signal received that the loop did not act on
    (it came after the last check, e.g. during the final step) is passed on to the
    previous handler when that is a Python one (a study's guard around its cells), so
    that it is not lost; the default handlers are not re-run (the work has finished)."""
    for s, old in self._old.items():
      signal.signal(s, old)
    if self.received is not None and callable(self._old.get(self.received)):
      self._old[self.received](self.received, None)
