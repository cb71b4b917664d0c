"""One cell: its resolved configs (`CellPlan`), whether it is finished (`cell_status`:
fingerprints, config drift, damaged metrics), running it (`run_cell`: train, evaluate,
`done.json` last) and restoring it from an archive record (`restore_cells`)."""

from __future__ import annotations

import contextlib

import dataclasses
import json
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections

from optical_jax import cell_archive, fileio, fingerprint, monitor, paths, plain
from optical_jax.errors import InputError
from optical_jax.fileio import write_json
from optical_jax.study.spec import DONE, Cell, Log, _VALUE_RE


@dataclasses.dataclass
class CellPlan:
  """A cell's configs, resolved (before training: the trained system is added later)."""

  cell: Cell
  directory: str
  train: Optional[ml_collections.ConfigDict]
  evals: Dict[str, ml_collections.ConfigDict]
  references: Dict[str, Any]

  def resolved(self) -> Dict[str, Any]:
    return {"key": self.cell.key, "values": self.cell.values, "reference": self.cell.reference,
            "train": None if self.train is None else plain.plain(self.train),
            "evals": {k: plain.plain(v) for k, v in self.evals.items()},
            "references": {k: plain.plain(v) for k, v in self.references.items()}}

  def fingerprint(self) -> str:
    return fingerprint.digest(self.resolved(), n=24)

  def exports(self) -> Dict[str, str]:
    """The exported models its configs load (specs with weights 'export': a teacher
    trained here, say), path -> `models.export_identity` ('' for one absent here). The
    configs name them by path only, so a retrained model at the same path would pass the
    fingerprint; a finished cell records these and is redone when one changes."""
    from optical_jax import models  # pylint: disable=g-import-not-at-top
    found = set()

    def walk(x):
      if isinstance(x, Mapping):
        if x.get("weights") == "export" and x.get("path"):
          found.add(str(x["path"]))
        for v in x.values():
          walk(v)
      elif isinstance(x, (list, tuple)):
        for v in x:
          walk(v)
    walk(self.resolved())
    return {p: models.export_identity(p) for p in sorted(found)}


def plan_cell(config, cell: Cell, workdir: str) -> CellPlan:
  """The cell's train and eval configs from the study's template functions."""
  directory = paths.join(workdir, "cells", cell.key)
  values = dict(cell.values)
  try:
    train = None if cell.reference else config.train(values)
    evals = config.evals(values)
    refs = config.references(values) if cell.reference else {}
  except InputError:
    raise
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"study cell {cell.key}: the config's template failed: {e}") from e
  if not isinstance(evals, Mapping) or not evals:
    raise InputError(f"study cell {cell.key}: config.evals returned no datasets")
  evals = dict(evals)
  for name in evals:
    if not _VALUE_RE.match(name):
      raise InputError(f"study cell {cell.key}: dataset name {name!r}: use letters, digits "
                       "and . _ + -")
  if config.cache_dir:
    root = paths.require_local(config.cache_dir, "study config.cache_dir")
    if train is not None:
      train.data.cache_dir = paths.join(root, "tokens")
    for e in evals.values():
      e.cache_dir = paths.join(root, "embeddings")
  if train is not None:
    train.train.progress = bool(config.progress)
  for e in evals.values():
    e.progress = bool(config.progress)
  return CellPlan(cell, directory, train, evals, dict(refs or {}))


def cell_status(plan: CellPlan) -> str:
  """'done' (finished with these configs), 'todo' (unfinished, or finished with metrics
  that changed since or with other exported models than the ones at its configs' paths
  now (`stale_exports`): a warning, and `run_cell` redoes it under the cell's lock), or
  raises InputError when the cell finished with other configs. Reads only."""
  done = fileio.read_json(paths.join(plan.directory, DONE))
  if not done:
    return "todo"
  problem = _damaged(plan.directory, done)
  if problem:
    warnings.warn(f"study cell {plan.directory}: {problem}; it is redone", CellWarning,
                  stacklevel=2)
    return "todo"
  if done.get("fingerprint") != plan.fingerprint():
    saved = fileio.read_json(paths.join(plan.directory, cell_archive.CELL)) or {}
    shown = config_changes(saved.get("resolved", {}), plan)
    if shown:  # not only fields added since (at their defaults) or how-not-what fields
      raise InputError(f"study cell {plan.cell.key} finished with another config ({shown}); "
                       f"use a new --workdir, or delete {plan.directory} to rerun it",
                       plan.directory)
  stale = stale_exports(done.get("exports"), plan.exports())
  if stale:
    warnings.warn(f"study cell {plan.directory}: {stale}; it is redone", CellWarning,
                  stacklevel=2)
    return "todo"
  return "done"


def stale_exports(recorded: Optional[Mapping[str, str]], now: Mapping[str, str]) -> str:
  """Why a cell run with the exported models `recorded` (its `exports`: path -> identity)
  is not a run with the ones at those paths `now` (`CellPlan.exports`); '' when it is, or
  when a model is absent here (it cannot be checked; training with it would fail). A
  record without identities (cells from before they were recorded) cannot be checked
  against a model that is here, so it does not pass."""
  recorded = recorded or {}
  for path, identity in now.items():
    if not identity:
      continue
    if path not in recorded:
      return f"it records no identity of the exported model {path}"
    if recorded[path] != identity:
      return f"the exported model {path} is not the one it ran with (trained or exported again)"
  return ""


class CellWarning(UserWarning):
  """A finished study cell failed its check and was moved aside (it reruns)."""


def _metrics_checksums(directory: str, datasets: Mapping[str, Mapping[str, str]]) -> Dict[str, str]:
  """Content digests (`fingerprint.digest` of the JSON, so a record restored by
  `cell_archive` with other whitespace still matches) of a cell's metrics files."""
  return {rel: fingerprint.digest(fileio.read_json(paths.join(directory, rel)), n=None)
          for systems in datasets.values() for rel in systems.values()}


def _damaged(directory: str, done: Mapping[str, Any]) -> str:
  """Why a finished cell's metrics cannot be used ('' when they verify; cells finished
  before checksums were recorded are taken as they are)."""
  for rel, digest in (done.get("checksums") or {}).items():
    value = fileio.read_json(paths.join(directory, rel))
    if value is None:
      return f"{rel} is missing or unreadable"
    if fingerprint.digest(value, n=None) != digest:
      return f"{rel} does not match the checksum in {DONE}"
  return ""


def _forget_metrics(directory: str) -> None:
  """Before a cell is (re)run under its lock: a done.json whose metrics no longer verify
  and those metrics files go, so the evaluation recomputes them (from its checked run
  files) instead of reusing them."""
  done = fileio.read_json(paths.join(directory, DONE))
  if not done or not _damaged(directory, done):
    return
  for rel in (done.get("checksums") or {}):
    with contextlib.suppress(FileNotFoundError):
      paths.remove(paths.join(directory, rel))
  with contextlib.suppress(FileNotFoundError):
    paths.remove(paths.join(directory, DONE))


def _forget_other_exports(directory: str, exports: Mapping[str, str], log: Log) -> None:
  """Before a cell is (re)run under its lock: when what it started with (`cell.json`) used
  other exported models than `exports`, its trainer workdir (a checkpoint would resume
  training against the old teacher), evaluations and done.json go."""
  started = fileio.read_json(paths.join(directory, cell_archive.CELL))
  why = stale_exports(started.get("exports"), exports) if isinstance(started, dict) else ""
  if not why:
    return
  for sub in ("train", "eval"):
    if paths.isdir(paths.join(directory, sub)):
      paths.rmtree(paths.join(directory, sub))
  with contextlib.suppress(FileNotFoundError):
    paths.remove(paths.join(directory, DONE))
  log(f"study: {directory}: {why}; its training and evaluation start again")


def config_changes(saved_resolved: Mapping[str, Any], plan: CellPlan) -> str:
  """'' when a cell finished with the resolved configs `saved_resolved` is valid for
  `plan` (equal but for fields added since at their defaults and how-not-what fields),
  else the first differences, `field: old -> new; ...`."""
  from optical_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  old = plain.flatten(saved_resolved)
  new = plain.flatten(json.loads(json.dumps(plan.resolved())))
  new = _without_added_defaults(old, new, plan)
  math, _ = config_lib.drift(old, new, lambda key: _harmless(key, plan))
  return "; ".join(math[:3]) + ("; ..." if len(math) > 3 else "")


def _harmless(key: str, plan: CellPlan) -> bool:
  """A resolved-config field whose change leaves a finished cell's results valid: the
  trainer's `config.HARMLESS_FIELDS` (logging, checkpointing, devices) under 'train.',
  the evaluator's `HARMLESS_FIELDS` (batching, buckets, caches) under 'evals.<name>.'."""
  from optical_jax import config as config_lib, evaluator  # pylint: disable=g-import-not-at-top
  prefixes = [("train.", config_lib.HARMLESS_FIELDS)]
  prefixes += [(f"evals.{name}.", evaluator.HARMLESS_FIELDS) for name in plan.evals]
  for prefix, fields in prefixes:
    if key.startswith(prefix):
      return config_lib.field_in(key[len(prefix):], fields)
  return False


def _without_added_defaults(old: dict, new: dict, plan: CellPlan) -> dict:
  """The flat resolved configs `new` without fields added since `old` at their defaults
  (train configs against `config.base_config`, eval configs against the evaluator's)."""
  from optical_jax import config as config_lib, evaluator  # pylint: disable=g-import-not-at-top
  flat = lambda c: plain.flatten(json.loads(json.dumps(plain.plain(c))))
  new = config_lib.drop_added_defaults(old, new, flat(config_lib.base_config()), "train.")
  eval_defaults = flat(evaluator.default_config())
  for name in plan.evals:
    new = config_lib.drop_added_defaults(old, new, eval_defaults, f"evals.{name}.")
  return new


def _student_system(train_workdir: str, train_config):
  from optical_jax import evaluator, models  # pylint: disable=g-import-not-at-top
  export = paths.join(train_workdir, "student" if train_config.mode == "distill" else "teacher")
  if train_config.mode == "distill":
    return evaluator.system(models.export_spec(export), doc_model=train_config.teacher)
  return evaluator.system(models.export_spec(export), query_field="text_en")


def run_cell(config, plan: CellPlan, log: Log = monitor.stderr_line) -> Dict[str, Any]:
  """Trains and evaluates one cell (held by this process); writes its done.json last."""
  from optical_jax import evaluator, trainer  # pylint: disable=g-import-not-at-top
  key = plan.cell.key
  t0 = time.time()
  hold = fileio.hold_directory(plan.directory, "study cell", report=log)
  try:
    if cell_status(plan) == "done":   # another process finished it while this one waited
      log(f"[{key}] finished by another process; not redone")
      return fileio.read_json(paths.join(plan.directory, DONE))
    exports = plan.exports()
    _forget_metrics(plan.directory)
    _forget_other_exports(plan.directory, exports, log)
    write_json(paths.join(plan.directory, "cell.json"),
               {"fingerprint": plan.fingerprint(), "resolved": plan.resolved(),
                "exports": exports})
    systems: Dict[str, Any] = dict(plan.references)
    train_s = 0.0
    if plan.train is not None:
      workdir = paths.join(plan.directory, "train")
      t1 = time.time()
      result = trainer.run(plan.train, workdir, log_fn=lambda m: log(f"[{key}] {m}"))
      train_s = time.time() - t1
      trainer.check_complete(result, plan.train)
      systems = {config.system: _student_system(workdir, plan.train)}
    datasets = {}
    for name, ecfg in plan.evals.items():
      ecfg = ecfg.copy_and_resolve_references()
      for sys_name, system in systems.items():
        ecfg.systems[sys_name] = system
      ecfg.baselines = (next(iter(systems)),)
      out = paths.join(plan.directory, "eval", name)
      evaluator.run(ecfg, out, log=lambda m, n=name: log(f"[{key}] {n}: {m}"))
      datasets[name] = {s: paths.join("eval", name, "metrics", f"{s}.json") for s in systems}
    done = {"key": key, "values": plan.cell.values, "reference": plan.cell.reference,
            "fingerprint": plan.fingerprint(), "exports": exports, "datasets": datasets,
            "checksums": _metrics_checksums(plan.directory, datasets),
            "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}
    write_json(paths.join(plan.directory, DONE), done)
    return done
  finally:
    hold.release()


def restore_cells(config, plans: Sequence[CellPlan], archive: str, log: Log) -> List[str]:
  """Restores the cells of `plans` that the workdir lacks from their verified records in
  `archive` (`optical_jax.cell_archive`) when the record's configs are the cell's (as
  `cell_status` judges them); returns their keys. A record with other configs is
  reported and left: the cell reruns."""
  restored = []
  for plan in plans:
    done = fileio.read_json(paths.join(plan.directory, DONE))
    if done and not _damaged(plan.directory, done) and not stale_exports(
        done.get("exports"), plan.exports()):
      continue
    record = cell_archive.load(archive, plan.cell.key, log)
    if record is None:
      continue
    changes = config_changes(record["files"][cell_archive.CELL].get("resolved", {}), plan)
    if changes:
      log(f"study: the archived cell {plan.cell.key} finished with another config "
          f"({changes}); it reruns")
      continue
    stale = stale_exports(record["files"][cell_archive.DONE].get("exports"), plan.exports())
    if stale:
      log(f"study: the archived cell {plan.cell.key}: {stale}; it reruns")
      continue
    cell_archive.restore(record, plan.directory)
    restored.append(plan.cell.key)
  if restored:
    log(f"study {config.name}: {len(restored)} finished cell(s) restored from {archive}")
  return restored
