"""Portable records of finished study cells: one checksummed file per cell.

A finished cell of a study workdir (`cells/<key>/`) holds its resolved configs
(`cell.json`), its metrics with per-query values (`eval/<dataset>/metrics/<system>.json`)
and `done.json`; its checkpoints, exported student and run files were only needed to
make those. A record keeps just these JSON files, so that

* a grid too long for one machine or session goes on elsewhere: `study.py --archive DIR`
  writes every finished cell's record to DIR, and restores a cell missing from the
  workdir from DIR when the record's configs are the cell's (`optical_jax.study`);
* a study page commits the data its numbers come from (`docs/studies/NAME/cells/`), and
  `study.py --aggregate --archive DIR` re-renders it on a fresh clone.

Layout: `DIR/<cell key>.json.gz` (a selection stage's cells under `DIR/select/`), each

    {"format": FORMAT, "key": ..., "fingerprint": ..., "checksum": ...,
     "files": {"cell.json": ..., "done.json": ..., "eval/<dataset>/metrics/<system>.json": ...}}

`checksum` is `fingerprint.digest(files)` (sha256 of their canonical JSON). A record
that does not read or verify (truncated, edited, another format, a path leaving the
cell) is named in one warning line and ignored: the cell reruns and its record is
written anew. Records are gzip without a timestamp around compact JSON in the files' own
key order, so a cell always gives the same bytes (an unchanged record is not rewritten).
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
from typing import Any, Callable, Dict, Optional

from optical_jax import fileio, fingerprint, paths

FORMAT = "optical_jax.study-cell/1"
SUFFIX = ".json.gz"
CELL = "cell.json"
DONE = "done.json"

Log = Callable[[str], None]


def path_of(archive: str, key: str) -> str:
  return paths.join(archive, key + SUFFIX)


def make(directory: str) -> Optional[Dict[str, Any]]:
  """The record of the finished cell in `directory` (None while it is unfinished or one
  of its files is unreadable)."""
  done = fileio.read_json(paths.join(directory, DONE))
  cell = fileio.read_json(paths.join(directory, CELL))
  if not isinstance(done, dict) or not isinstance(cell, dict):
    return None
  files: Dict[str, Any] = {CELL: cell, DONE: done}
  for systems in done.get("datasets", {}).values():
    for rel in systems.values():
      obj = fileio.read_json(paths.join(directory, rel))
      if obj is None:
        return None
      files[rel.replace(os.sep, "/")] = obj
  return {"format": FORMAT, "key": done.get("key"), "fingerprint": done.get("fingerprint"),
          "checksum": fingerprint.digest(files, n=None), "files": files}


def encode(record: Dict[str, Any]) -> bytes:
  # Key order kept (metrics' order is the CSV's row order); the checksum ignores it.
  return gzip.compress(json.dumps(record, separators=(",", ":")).encode("utf-8"), mtime=0)


def save(directory: str, archive: str) -> bool:
  """Writes the record of the finished cell in `directory` to `archive` (atomically);
  True when a new or changed record was written."""
  record = make(directory)
  if record is None:
    return False
  data = encode(record)
  path = path_of(archive, record["key"])
  if fileio.read_bytes(path) == data:
    return False
  fileio.write_bytes(path, data)
  return True


def problem(record: Any) -> str:
  """Why `record` cannot be used ('' when it verifies)."""
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    return f"not a {FORMAT} record"
  files = record.get("files")
  if not isinstance(files, dict) or not isinstance(files.get(DONE), dict) or not isinstance(
      files.get(CELL), dict):
    return "incomplete record (no cell.json or done.json)"
  if fingerprint.digest(files, n=None) != record.get("checksum"):
    return "checksum mismatch (the record was edited or damaged)"
  for rel in files:
    parts = rel.split("/")
    if posixpath.isabs(rel) or ".." in parts or "" in parts:
      return f"file name {rel!r} leaves the cell directory"
  if files[DONE].get("key") != record.get("key"):
    return "its done.json names another cell"
  return ""


def load(archive: str, key: str, log: Log) -> Optional[Dict[str, Any]]:
  """The verified record of cell `key` in `archive`; None when there is none, or (with a
  warning line naming the file) when it does not read or verify."""
  path = path_of(archive, key)
  raw = fileio.read_bytes(path)
  if raw is None:
    return None
  try:
    record = json.loads(gzip.decompress(raw).decode("utf-8"))
  except (OSError, EOFError, ValueError) as e:
    log(f"warning: {path}: not a readable cell record ({type(e).__name__}); ignored, the "
        "cell reruns")
    return None
  why = problem(record)
  if why:
    log(f"warning: {path}: {why}; ignored, the cell reruns")
    return None
  return record


def restore(record: Dict[str, Any], directory: str) -> None:
  """Writes a verified record's files into the cell `directory`, done.json last."""
  files = record["files"]
  for rel in sorted(files):
    if rel != DONE:
      fileio.write_json(paths.join(directory, *rel.split("/")), files[rel])
  fileio.write_json(paths.join(directory, DONE), files[DONE])
