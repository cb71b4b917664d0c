"""Orbax checkpoints of the train state and data position: save, keep-last-K, resume with fallback.

A checkpoint holds two items: `state` (the `TrainState` pytree: student params,
optimizer state, step, rng, skipped-update count) and `meta` (JSON: the data
iterator's position and anything else the trainer wants back). The teacher is
never saved. Orbax writes each step into a temporary directory and renames it when
complete, so a killed run never leaves a half checkpoint that looks finished; on
start `restore_latest` tries the newest step and falls back to older ones if a
restore fails, reporting each failure.
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

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the items this project saves."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
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

    A step that fails to restore is reported and the previous one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        return step, state, meta
      except Exception as e:  # pylint: disable=broad-except
        report(f"checkpoint {os.path.join(self.directory, str(step))} failed to restore "
               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); trying the previous one")
    return None

  def close(self):
    self.manager.close()


def abstract_like(tree: Any, sharding: Optional[jax.sharding.Sharding] = None) -> Any:
  """ShapeDtypeStructs (with a sharding, for restoring straight onto devices)."""
  def one(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class PreemptionGuard:
  """Turns SIGTERM (cloud TPU preemption, `kill`) into a flag the train loop polls.

  The loop saves a complete checkpoint and exits cleanly when `should_stop()` is True.
  On several hosts the flag is agreed on with `multihost_utils` so that every process
  stops at the same step.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._old = {}
    for s in signals:
      try:
        self._old[s] = signal.signal(s, self._handler)
      except ValueError:  # not the main thread
        pass

  def _handler(self, signum, frame):
    del frame
    log.warning("received signal %d: saving a checkpoint and stopping", signum)
    self._flag.set()

  def should_stop(self) -> bool:
    local = self._flag.is_set()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      flags = multihost_utils.process_allgather(np.array([local], np.int32))
      return bool(np.asarray(flags).any())
    return local

  def restore(self):
    for s, old in self._old.items():
      signal.signal(s, old)
