"""User-facing input errors: one line naming the file, the line and the problem."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


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


def config_from_mapping(cls, d, what: str):
  """A frozen config dataclass from a mapping (parsed JSON, `ConfigDict.to_dict()`).

  The dataclass checks its own values (`__post_init__`); this only turns unknown keys
  into one InputError listing the known ones, and builds nested config dataclasses
  (a field whose default is a dataclass instance) from nested mappings.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from collections.abc import Mapping  # pylint: disable=g-import-not-at-top
  if isinstance(d, cls):
    return d
  if not isinstance(d, Mapping):
    raise InputError(f"{what} must be a mapping, got {type(d).__name__}")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields), key=str)
  if unknown:
    raise InputError(f"unknown {what} key(s) {', '.join(map(str, unknown))}; "
                     f"known: {', '.join(fields)}")
  kwargs = dict(d)
  for name, value in kwargs.items():
    default = fields[name].default
    if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
      kwargs[name] = config_from_mapping(type(default), value, f"{what} {name}")
  return cls(**kwargs)
