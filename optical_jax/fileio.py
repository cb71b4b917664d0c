"""Atomic file output: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs) -> Iterator[Any]:
  """Opens a temporary file next to `path`; renames it onto `path` on success.

  If the body raises, the temporary file is removed and `path` is untouched, so a
  crash never leaves a half-written output.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                             dir=directory)
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates 0600 files; give the output the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path, text: str) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path, obj: Any, indent: int = 2) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent, sort_keys=False, ensure_ascii=False)
    f.write("\n")


def save_npy(path, array: np.ndarray) -> None:
  with atomic_open(path, "wb") as f:
    np.save(f, array, allow_pickle=False)
