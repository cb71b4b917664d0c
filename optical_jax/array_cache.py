"""On-disk array caches under one integrity contract: token ids, teacher tokens, embeddings.

Every cache of arrays the programs reuse (`data.pipeline.tokenize_texts`, the
teacher-token cache `teacher_cache`, the embedding cache `retrieval.cached`) stores its
entries here. An entry is a directory `ROOT/<name>-<key>/` holding one `.npy` file per
named array and `manifest.json`:

    {"format": FORMAT, "name": ..., "key": ..., "meta": {...what the caller records...},
     "arrays": {NAME: {"file", "shape", "dtype", "bytes", "sha256"}, ...}}

Writing: the arrays go into a temporary sibling directory (`.<name>-<key>.tmp.HOST.PID.N`),
each file's sha256 computed while it is written, the manifest last, and the directory is
renamed into place: an entry exists complete or not at all, and a second writer that
loses the race discards its copy. Temporary directories of writers that died on this
host are removed by the next write under ROOT.

Reading (`load`): every array is checked against the manifest (file size, the `.npy`
header's shape and dtype, the sha256 of the whole file) before it is used. An entry
that fails (a file missing, truncated, overwritten, of another shape; a manifest missing
or unreadable; a half entry of an older writer) is named in one warning with the
problem, moved aside to `ROOT/.broken/` (kept for inspection) and recomputed by
`cached`. What the contract costs against the work an entry saves is measured by
`benchmarks/caches.py` (results in `benchmarks/results/caches.json`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from optical_jax import fileio, fingerprint

FORMAT = 1
MANIFEST = "manifest.json"
BROKEN = ".broken"

Arrays = Dict[str, np.ndarray]
Report = Callable[[str], None]


class CacheWarning(UserWarning):
  """A cache entry failed its check and was moved aside (it is recomputed)."""


def _warn(message: str) -> None:
  warnings.warn(message, CacheWarning, stacklevel=3)


class _HashingWriter:
  """A write-only file wrapper that hashes what passes through (np.save writes to
  non-file objects in chunks through `write`)."""

  def __init__(self, f):
    self._f = f
    self.hash = hashlib.sha256()
    self.bytes = 0

  def write(self, data) -> int:
    view = memoryview(data).cast("B")
    self.hash.update(view)
    self.bytes += len(view)
    return self._f.write(view)


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def entry_dir(root: str, name: str, key: str) -> str:
  return os.path.join(os.fspath(root), f"{name}-{key}")


def _check(path: str, manifest: Any, name: str, key: str) -> str:
  """Why the entry at `path` cannot be used ('' when every array verifies)."""
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    return "no readable manifest (a half-written or older entry)"
  if manifest.get("name") != name or manifest.get("key") != key:
    return "its manifest names another entry"
  arrays = manifest.get("arrays")
  if not isinstance(arrays, dict) or not arrays:
    return "its manifest lists no arrays"
  for array, info in arrays.items():
    file = os.path.join(path, str(info.get("file", "")))
    try:
      size = os.path.getsize(file)
    except OSError:
      return f"array {array}: file {info.get('file')} is missing"
    if size != info.get("bytes"):
      return f"array {array}: {size} bytes, the manifest says {info.get('bytes')}"
    try:
      with open(file, "rb") as f:
        reader = _HEADER_READERS.get(np.lib.format.read_magic(f))
        if reader is None:
          return f"array {array}: not a .npy file of version 1 or 2"
        shape, _, dtype = reader(f)
    except (OSError, ValueError) as e:
      return f"array {array}: unreadable .npy header ({e})"
    if list(shape) != info.get("shape") or str(dtype) != info.get("dtype"):
      return (f"array {array}: shape {list(shape)} {dtype}, the manifest says "
              f"{info.get('shape')} {info.get('dtype')}")
    digest = fingerprint.file(file, n=None)
    if digest != info.get("sha256"):
      return f"array {array}: checksum mismatch (the file was changed after it was written)"
  return ""


def move_aside(root: str, path: str, problem: str, report: Optional[Report] = None) -> str:
  """Moves the entry `path` to `ROOT/.broken/` and reports it in one line."""
  broken = os.path.join(os.fspath(root), BROKEN)
  os.makedirs(broken, exist_ok=True)
  dst = os.path.join(broken, f"{os.path.basename(path)}.{time.time_ns()}")
  try:
    os.replace(path, dst)
  except OSError:   # another process moved or replaced it first
    dst = "(already gone)"
  message = f"cache entry {path}: {problem}; moved to {dst}, recomputing"
  (report or _warn)(message)
  return dst


def load(root: str, name: str, key: str, *, mmap: bool = False,
         report: Optional[Report] = None) -> Optional[Tuple[Arrays, Dict[str, Any]]]:
  """The verified arrays and `meta` of entry (name, key) under `root`; None when there is
  none, or when it fails its check (reported, moved aside)."""
  path = entry_dir(root, name, key)
  if not os.path.isdir(path):
    return None
  manifest = fileio.read_json(os.path.join(path, MANIFEST))
  problem = _check(path, manifest, name, key)
  if problem:
    move_aside(root, path, problem, report)
    return None
  arrays = {}
  for array, info in manifest["arrays"].items():
    arrays[array] = np.load(os.path.join(path, info["file"]), mmap_mode="r" if mmap else None,
                            allow_pickle=False)
  return arrays, dict(manifest.get("meta") or {})


def _tmp_prefix(name: str, key: str) -> str:
  return f".{name}-{key}.tmp."


def _clean_leftovers(root: str) -> None:
  """Removes temporary entry directories of writers that died on this host."""
  host = socket.gethostname()
  try:
    names = os.listdir(root)
  except OSError:
    return
  for n in names:
    if not n.startswith(".") or ".tmp." not in n:
      continue
    # .NAME-KEY.tmp.HOST.PID.N: HOST may hold dots, PID and N do not.
    head, _, rest = n.partition(".tmp.")
    parts = rest.rsplit(".", 2)
    if not head or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
      continue
    if not fileio.pid_alive(int(parts[1])):
      shutil.rmtree(os.path.join(root, n), ignore_errors=True)


def store(root: str, name: str, key: str, arrays: Mapping[str, np.ndarray],
          meta: Optional[Mapping[str, Any]] = None) -> str:
  """Writes entry (name, key) atomically (see the module docstring); returns its path. An
  entry another process published first is kept (same key, same content)."""
  root = os.fspath(root)
  os.makedirs(root, exist_ok=True)
  _clean_leftovers(root)
  path = entry_dir(root, name, key)
  tmp = os.path.join(root, f"{_tmp_prefix(name, key)}{socket.gethostname()}.{os.getpid()}."
                     f"{time.monotonic_ns()}")
  os.makedirs(tmp)
  try:
    listed = {}
    for i, (array, value) in enumerate(arrays.items()):
      value = np.ascontiguousarray(value)
      file = f"{i}.npy"
      with fileio.atomic_open(os.path.join(tmp, file), "wb") as f:
        writer = _HashingWriter(f)
        np.lib.format.write_array(writer, value, allow_pickle=False)
      listed[str(array)] = {"file": file, "shape": list(value.shape), "dtype": str(value.dtype),
                            "bytes": writer.bytes, "sha256": writer.hash.hexdigest()}
    fileio.write_json(os.path.join(tmp, MANIFEST),
                      {"format": FORMAT, "name": name, "key": key,
                       "meta": dict(meta or {}), "arrays": listed})
    try:
      os.rename(tmp, path)
    except OSError:
      if not os.path.isdir(path):
        raise
      shutil.rmtree(tmp, ignore_errors=True)   # another process published it first
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def cached(root: Optional[str], name: str, key: str, compute: Callable[[], Mapping[str, np.ndarray]],
           *, meta: Optional[Mapping[str, Any]] = None, mmap: bool = False,
           report: Optional[Report] = None) -> Tuple[Arrays, bool]:
  """(arrays, whether they came from the cache): the verified entry (name, key) under
  `root`, or `compute()` stored there. `root=None`: no cache, just `compute()`."""
  if root is not None:
    hit = load(root, name, key, mmap=mmap, report=report)
    if hit is not None:
      return hit[0], True
  arrays = {k: np.asarray(v) for k, v in compute().items()}
  if root is not None:
    store(root, name, key, arrays, meta)
  return arrays, False
