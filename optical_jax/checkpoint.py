"""Orbax checkpoints of the train state and data position: save, keep-last-K, resume with fallback.

A checkpoint holds two items: `state` (the `TrainState` pytree: student params,
optimizer state, step, rng, skipped-update count) and `meta` (JSON: the data
iterator's position and anything else the trainer wants back). The teacher is
never saved. Orbax writes each step into a temporary directory and renames it when
complete, so a killed run never leaves a half checkpoint that looks finished; on
start `restore_latest` tries the newest step and falls back to older ones if a
restore fails, reporting each failure and moving the failed step aside
(`checkpoints/STEP.corrupt`) so that the run can write that step again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from optical_jax.errors import InputError

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the items this project saves."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = False):
    self.directory = os.path.abspath(directory)
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
    saved = self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    self.manager.wait_until_finished()
    return saved

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    out = self.manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_latest(self, abstract_state: Any, report: Callable[[str], None] = log.warning
                     ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """The newest checkpoint that restores; None when there is none.

    A step that fails to restore is reported, moved aside to `STEP.corrupt` (or
    `STEP.corrupt.N` when that exists; kept for inspection, never deleted) and the
    previous one is tried. Moving it aside is what lets the run save that step again
    when it gets there: Orbax refuses to overwrite an existing step.
    """
    moved = False
    try:
      for step in reversed(self.all_steps()):
        try:
          state, meta = self.restore(step, abstract_state)
          return step, state, meta
        except Exception as e:  # pylint: disable=broad-except
          where = os.path.join(self.directory, str(step))
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
    src = os.path.join(self.directory, str(step))
    dst = corrupt_name(src)
    if jax.process_index() == 0:
      try:
        os.replace(src, dst)
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


def corrupt_name(path: str) -> str:
  """`PATH.corrupt`, or the first free `PATH.corrupt.N` (N = 1, 2, ...)."""
  dst = f"{path}.corrupt"
  n = 0
  while os.path.exists(dst):
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
    for s, old in self._old.items():
      signal.signal(s, old)
