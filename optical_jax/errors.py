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
