"""User-facing input errors: one line naming the file, the line and the problem."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


class InputError(Exception):
  """Bad input from the user (file, config or data), reported as one line.

  The command-line programs catch it, print `str(err)` and exit with status 2,
  so a user sees `path:line: problem` rather than a traceback.
  """

  def __init__(self, problem: str, path: Optional[PathLike] = None,
               line: Optional[int] = None):
    self.problem = problem
    self.path = None if path is None else os.fspath(path)
    self.line = line
    super().__init__(self.format())

  def format(self) -> str:
    where = ""
    if self.path is not None:
      where = self.path if self.line is None else f"{self.path}:{self.line}"
      where += ": "
    return f"{where}{self.problem}"


class StorageError(Exception):
  """The machine refused to store something: a full disk, a read-only directory, a quota.
  The programs print it as one line and exit 4; what was saved before stays valid (a
  checkpoint is written to a temporary name and renamed only when complete)."""


class Interrupted(Exception):
  """Work stopped by a signal after saving what it could (a checkpoint): the programs
  print the message as one line and exit 128 + the signal number (143 for SIGTERM, 130
  for SIGINT), so `train.py && eval.py` never carries on as if it had finished."""

  def __init__(self, signum: int, message: str):
    self.signum = int(signum)
    super().__init__(message)


# --- config values: range checks of config dataclasses, in one format ----------------------


def value_problem(name: str, value: Any, kind: str, *, choices: Sequence[Any] = (),
                  low: Optional[float] = None, high: Optional[float] = None,
                  open_low: bool = False, note: str = "") -> Optional[str]:
  """What is wrong with one config value, or None.

  `kind`: 'choice' (one of `choices`), 'bool', 'int' or 'number' (finite; not bool) with
  optional bounds `low` (exclusive with `open_low`) and `high` (inclusive), or 'ids' (a
  list of integers). The text reads `<name> must be <what><note>, got <value>`.
  """
  if kind == "choice":
    ok, want = value in tuple(choices), f"one of {tuple(choices)}"
  elif kind == "bool":
    ok, want = isinstance(value, bool), "true or false"
  elif kind in ("int", "number"):
    types = (int,) if kind == "int" else (int, float)
    ok = (not isinstance(value, bool) and isinstance(value, types)
          and (kind == "int" or math.isfinite(value))
          and (low is None or (value > low if open_low else value >= low))
          and (high is None or value <= high))
    want = "an integer" if kind == "int" else "a finite number"
    if low is not None and high is not None:
      want += f" in {'(' if open_low else '['}{low}, {high}]"
    elif low is not None:
      want += f" {'>' if open_low else '>='} {low}"
    elif high is not None:
      want += f" <= {high}"
  elif kind == "ids":
    ok = (isinstance(value, (tuple, list))
          and all(isinstance(i, int) and not isinstance(i, bool) for i in value))
    want = "a list of integers"
  else:
    raise ValueError(f"unknown kind {kind!r}")
  return None if ok else f"{name} must be {want}{note}, got {value!r}"


def field_problems(obj: Any, rules: Sequence[Tuple[Union[str, Sequence[str]], str, Dict[str, Any]]]
                   ) -> List[str]:
  """`value_problem` of each field a rule names: rules are (field or fields, kind, options)."""
  out = []
  for names, kind, options in rules:
    for name in ((names,) if isinstance(names, str) else names):
      problem = value_problem(name, getattr(obj, name), kind, **options)
      if problem:
        out.append(problem)
  return out


# --- config mappings: checks for config values that arrive as plain mappings ----------------


def check_int(value: Any, what: str, minimum: Optional[int] = 0) -> int:
  """`value` if it is an integer (not a bool) and >= `minimum` (None: any); else an InputError."""
  if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
    kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    raise InputError(f"{what} must be {kind}, got {value!r}")
  return value


def check_mapping(value: Any, what: str) -> Mapping[str, Any]:
  """`value` if it is a mapping; else the InputError `<what> must be a mapping, got <type>`."""
  if not isinstance(value, Mapping):
    raise InputError(f"{what} must be a mapping, got {type(value).__name__}")
  return value


def check_keys(d: Mapping[str, Any], allowed: Collection[str], what: str,
               required: Sequence[str] = ()) -> None:
  """InputError `what: unknown keys [...]; allowed: [...]` or `what: missing [...]`."""
  unknown = set(d) - set(allowed)
  if unknown:
    raise InputError(f"{what}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
  missing = [k for k in required if k not in d]
  if missing:
    raise InputError(f"{what}: missing {missing}")


def build(cls: Type[T], config: Union[T, Mapping[str, Any]], what: str) -> T:
  """A frozen config dataclass from a mapping (parsed JSON, `ConfigDict.to_dict()`).

  `config` itself if it already is a `cls`. The dataclass checks its own values
  (`__post_init__`); this reports unknown or missing keys as one InputError naming them
  and the known keys, and builds nested config dataclasses (a field whose default is a
  dataclass instance) from nested mappings.
  """
  if isinstance(config, cls):
    return config
  check_mapping(config, what)
  fields = dataclasses.fields(cls)
  names = [f.name for f in fields]
  required = [f.name for f in fields
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  check_keys(config, names, what, required)
  kwargs = dict(config)
  for f in fields:
    if f.name in kwargs and dataclasses.is_dataclass(f.default) and isinstance(kwargs[f.name], Mapping):
      kwargs[f.name] = build(type(f.default), kwargs[f.name], f"{what} {f.name}")
  return cls(**kwargs)
