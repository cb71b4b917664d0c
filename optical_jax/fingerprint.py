"""Content fingerprints: the one place texts, rows, files, configs, parameters and models are hashed.

Every cache key, data-iterator fingerprint and manifest key of the project is built
here, so one thing is never hashed two ways. All digests are sha256 in hex, cut to
`n` characters (`n=None`: all 64).

Several of these values are stored (token and embedding cache names, the data
iterator state in checkpoints, run manifests), so the byte streams hashed here must
not change without a reason: a change silently invalidates those caches and makes
saved iterator states refuse to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from optical_jax import paths  # imports nothing of the project either

PathLike = Union[str, os.PathLike]

# Model spec fields that only one side of a retrieval model depends on.
QUERY_FIELDS = ("query_prefix", "query_max_len")
DOC_FIELDS = ("doc_prefix", "doc_max_len")
SIDES = ("query", "doc")
# Files of a model directory that identify its weights and tokenizer.
MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")


def _hex(h, n: Optional[int]) -> str:
  return h.hexdigest() if n is None else h.hexdigest()[:n]


def texts(seq: Sequence[str], n: Optional[int] = 16) -> str:
  """Hash of a list of strings: order-sensitive, and each string is length-prefixed, so
  boundaries count (["ab", "c"] and ["a", "bc"] differ). Lone surrogates are hashed too."""
  h = hashlib.sha256()
  h.update(str(len(seq)).encode())
  for t in seq:
    b = t.encode("utf-8", "surrogatepass")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)
  return _hex(h, n)


def rows(table: Iterable[Sequence[str]], n: Optional[int] = 16) -> str:
  """Hash of rows of string fields (e.g. (id, title, text) per document), in order.

  Fields end with U+001F and rows with U+001E (the ASCII unit and record separators).
  """
  h = hashlib.sha256()
  for row in table:
    for field in row:
      h.update(field.encode("utf-8"))
      h.update(b"\x1f")
    h.update(b"\x1e")
  return _hex(h, n)


def file(path: PathLike, n: Optional[int] = 16) -> str:
  """Hash of a file's bytes, read in 1 MiB blocks (`n=None`: the full sha256 to verify downloads)."""
  h = hashlib.sha256()
  with paths.open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return _hex(h, n)


def params(tree: Any, n: Optional[int] = 16) -> str:
  """Hash of a pytree of arrays (parameters, or any arrays a cache key names): each
  leaf's path, shape, dtype and bytes."""
  import jax  # pylint: disable=g-import-not-at-top  # keeps the data layer free of jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return _hex(h, n)


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  if isinstance(obj, tuple):
    return list(obj)
  if isinstance(obj, Mapping):
    return dict(obj)
  raise TypeError(f"a value of type {type(obj).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
  """`obj` as JSON with sorted keys (ASCII only); numpy values, tuples, sets, paths and
  mappings are turned into JSON types. Raises ValueError for anything else."""
  try:
    return json.dumps(obj, sort_keys=True, default=_json_default)
  except TypeError as e:
    raise ValueError(str(e)) from None


def digest(obj: Any, n: Optional[int] = 16) -> str:
  """Hash of `canonical_json(obj)`: equal for equal content whatever the key order."""
  return _hex(hashlib.sha256(canonical_json(obj).encode("utf-8")), n)


def files_stat(path: PathLike, suffixes: Sequence[str] = MODEL_SUFFIXES) -> List[str]:
  """`name:size:mtime_ns` of a file, or of each file in a directory whose name ends with
  one of `suffixes` (sorted by name); [] for an empty or missing path.

  Cheap identity without reading the bytes: a rewritten file gets a new mtime.
  """
  path = os.fspath(path) if path else ""
  if not path or not os.path.exists(path):
    return []
  if os.path.isfile(path):
    found = [path]
  else:
    found = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(tuple(suffixes))]
  out = []
  for f in found:
    st = os.stat(f)
    out.append(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns}")
  return out
