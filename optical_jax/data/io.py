"""Reading input files, with one `path:line: problem` error per kind of problem.

Every reader of the data layer (bitext, BEIR/TREC, retrieval training data) reads
through these functions, so a given mistake is reported the same way wherever it is
made. Files are UTF-8, optionally gzip-compressed (by the `.gz` suffix); lines are
split on '\\n' only (a '\\r' before it and a leading BOM are dropped), so Unicode line
separators inside a line (U+2028, U+0085, ...) do not split it and line numbers
match `wc -l` and editors.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from typing import (Any, Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

from optical_jax import paths
from optical_jax.errors import InputError

PathLike = Union[str, os.PathLike]
EMPTY_POLICIES = ("skip", "error")


# --- files and lines -------------------------------------------------------------------------


def as_paths(p: Union[PathLike, Sequence[PathLike]]) -> List[str]:
  """One path or a list of paths -> a list of path strings."""
  if isinstance(p, (str, os.PathLike)):
    return [os.fspath(p)]
  return [os.fspath(x) for x in p]


def check_file(path: PathLike) -> str:
  """`path` as a string if it names an existing file; else an InputError naming it."""
  path = os.fspath(path)
  if not paths.exists(path):
    raise InputError("file not found", path)
  if paths.isdir(path):
    raise InputError("is a directory, expected a file", path)
  return path


def iter_lines(path: PathLike) -> Iterator[Tuple[int, str]]:
  """(1-based line number, line) for each line of a text file, read as it goes.

  Raises:
    InputError: `path: file not found` / `is a directory` / `cannot read: ...`, and
      `path:line: not valid UTF-8 (...)` for undecodable bytes.
  """
  path = check_file(path)
  try:
    with _open_binary(path) as f:
      for n, raw in enumerate(f, start=1):  # binary files split on b"\n" only
        if raw.endswith(b"\n"):
          raw = raw[:-1]
        if raw.endswith(b"\r"):
          raw = raw[:-1]
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start} of the line: "
                           f"{raw[e.start:e.start + 4]!r})", path, n) from None
        if n == 1 and line.startswith("\ufeff"):
          line = line[1:]
        yield n, line
  except (OSError, EOFError) as e:
    raise InputError(f"cannot read: {getattr(e, 'strerror', None) or e}", path) from None


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator[Any]:
  """A binary reader of a local file or an object (`paths.open`), gunzipped for `.gz`."""
  with paths.open(path, "rb") as raw:
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=raw, mode="rb") as f:
        yield f
    else:
      yield raw


def read_text_lines(path: PathLike) -> List[str]:
  """All lines of a text file (see `iter_lines`)."""
  return [line for _, line in iter_lines(path)]


def iter_json_objects(path: PathLike) -> Iterator[Tuple[int, Dict[str, Any]]]:
  """(line number, object) for each non-blank line of a JSON Lines file.

  Raises:
    InputError: `path:line: not a JSON line (malformed JSON: <reason>, column <c>)`, or
      `expected a JSON object, found <type>` for another JSON value.
  """
  path = os.fspath(path)
  for n, line in iter_lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(f"not a JSON line (malformed JSON: {e.msg}, column {e.colno})", path, n) from None
    if not isinstance(obj, dict):
      raise InputError(f"expected a JSON object, found {type(obj).__name__}", path, n)
    yield n, obj


def iter_tsv(path: PathLike, columns: Union[None, int, Collection[int]] = None, *,
             layout: str = "", keep_blank: bool = False,
             header: bool = False) -> Iterator[Tuple[int, List[str]]]:
  """(line number, tab-separated fields) for each line of a TSV file.

  Args:
    columns: the number of fields every line must have (an int or a collection of
      allowed counts; None: any).
    layout: what the columns are, named in the column-count error.
    keep_blank: yield blank lines as `[]` instead of skipping them.
    header: skip the first line, unchecked.

  Raises:
    InputError: `path:line: expected N tab-separated columns (layout), found M`.
  """
  path = os.fspath(path)
  allowed = None if columns is None else ((columns,) if isinstance(columns, int) else tuple(columns))
  for n, line in iter_lines(path):
    if header and n == 1:
      continue
    if not line.strip():
      if keep_blank:
        yield n, []
      continue
    fields = line.split("\t")
    if allowed is not None and len(fields) not in allowed:
      want = " or ".join(str(c) for c in sorted(allowed))
      raise InputError(f"expected {want} tab-separated columns{f' ({layout})' if layout else ''}, "
                       f"found {len(fields)}", path, n)
    yield n, fields


# --- fields of JSON objects ------------------------------------------------------------------


def _fields(obj: Mapping[str, Any], limit: int = 6) -> str:
  names = [repr(k) for k in list(obj)[:limit]]
  return ", ".join(names) + (", ..." if len(obj) > limit else "") if names else "none"


def field(obj: Mapping[str, Any], key: str, path: Optional[str], line: Optional[int], *,
          required: bool = True) -> Any:
  """`obj[key]`, or None when it is absent and not required.

  Raises:
    InputError: `path:line: missing 'key' (missing field 'key'; fields present: ...)`.
  """
  if key in obj:
    return obj[key]
  if required:
    raise InputError(f"missing {key!r} (missing field {key!r}; fields present: {_fields(obj)})",
                     path, line)
  return None


def string_field(obj: Mapping[str, Any], key: str, path: Optional[str], line: Optional[int], *,
                 required: bool = True) -> str:
  """A text field; JSON null (or, when not required, an absent field) reads as ''.

  Raises:
    InputError: missing (see `field`), or `'key' must be a string (field 'key' is int)`.
  """
  value = field(obj, key, path, line, required=required)
  if value is None:
    return ""
  if not isinstance(value, str):
    raise InputError(f"{key!r} must be a string (field {key!r} is {type(value).__name__})", path, line)
  return value


def id_field(obj: Mapping[str, Any], key: str, path: Optional[str], line: Optional[int]) -> str:
  """An identifier: a string or an integer (read as its decimal string), non-empty and
  without whitespace, so it can stand in a TREC run line."""
  value = field(obj, key, path, line)
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise InputError(f"{key!r} must be a string (field {key!r} is {type(value).__name__})", path, line)
  value = str(value)
  if not value or any(c.isspace() for c in value):
    raise InputError(f"{key!r} must be non-empty and contain no whitespace: {value!r}", path, line)
  return value


# --- empty records ---------------------------------------------------------------------------


def check_empty_policy(empty: str) -> str:
  """`empty` if it is one of EMPTY_POLICIES ('skip' drops empty records, 'error' reports them)."""
  if empty not in EMPTY_POLICIES:
    raise InputError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
  return empty


class EmptyPolicy:
  """Counts records read and applies the empty-record policy with `path:line` reporting.

  `read` counts every record offered to `admit`, `skipped` those dropped under 'skip'.
  """

  def __init__(self, empty: str, what: str):
    self.empty = check_empty_policy(empty)
    self.what = what
    self.read = 0
    self.skipped = 0

  def admit(self, problem: Optional[str], path: Optional[str], line: Optional[int]) -> bool:
    """Counts a record; False if `problem` (e.g. 'empty query') drops it, InputError under 'error'."""
    self.read += 1
    if not problem:
      return True
    if self.empty == "error":
      raise InputError(f"{problem} (set empty: skip to drop such {self.what})", path, line)
    self.skipped += 1
    return False
