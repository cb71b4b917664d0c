"""Paths that may be URLs: the one place the project touches a user's storage.

Workdirs, evaluation outputs, study workdirs, data files and model directories may be
local paths or URLs that `etils.epath` opens (`gs://bucket/...`, `s3://...`, any fsspec
protocol with its package installed: `gcsfs` for `gs://`). Every module that handles a
user path goes through these functions instead of `os.path`:

- local paths keep exactly the behaviour of `os` (absolute paths, renames, fsync);
- URLs are used as written (never made absolute: `os.path.abspath('gs://b/x')` is
  `<cwd>/gs:/b/x`), and have object-store semantics: an object appears whole when its
  upload ends, "directories" are name prefixes, and there is no rename (a copy and a
  delete) and no append. The callers that need atomic publication write an object in one
  upload (`fileio.atomic_open`) or write a marker object last (exports, checkpoints:
  Orbax's `commit_success.txt`).

Caches are the exception: they stay on each host's local disk (`require_local`).

`create_new` is the one primitive locks need: create an object only if it does not exist
(on GCS an upload with the precondition `ifGenerationMatch=0`).

Credentials and endpoints are the storage libraries' own (`gcloud auth
application-default login`, or the metadata server on a TPU VM; `STORAGE_EMULATOR_HOST`
and `TENSORSTORE_GCS_HTTP_URL` point them at an emulator).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
from typing import IO, Any, List, Union

PathLike = Union[str, os.PathLike]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: Any) -> bool:
  """True for `scheme://...` strings (object stores, fsspec protocols); False for local
  paths (including `file://`-less relative and absolute paths)."""
  try:
    return bool(_URL.match(os.fspath(path)))
  except TypeError:
    return False


def require_local(path: Any, what: str) -> Any:
  """`path` (resolved when a non-empty string), or an InputError for a URL where only a
  local path will do: the caches (token, teacher-token and embedding caches are
  memory-mapped, written by each host for itself, and cheaper to recompute than to fetch
  from a bucket)."""
  if is_url(path):
    from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
    raise InputError(f"{what} must be a local path (caches are per-host and memory-mapped; "
                     f"the host's local disk is the place for them), got {path}")
  return resolve(path) if isinstance(path, str) and path else path


def resolve(path: PathLike) -> str:
  """A path to use from here on: local paths made absolute (with `~` expanded), URLs as
  written without a trailing '/'."""
  s = os.fspath(path)
  if is_url(s):
    return s.rstrip("/") if not s.endswith("://") else s
  return os.path.abspath(os.path.expanduser(s))


def join(base: PathLike, *parts: str) -> str:
  base = os.fspath(base)
  if is_url(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def dirname(path: PathLike) -> str:
  s = os.fspath(path)
  return posixpath.dirname(s.rstrip("/")) if is_url(s) else os.path.dirname(s)


def basename(path: PathLike) -> str:
  s = os.fspath(path)
  return posixpath.basename(s.rstrip("/")) if is_url(s) else os.path.basename(s)


def relpath(path: PathLike, start: PathLike) -> str:
  """`path` relative to `start` ('/'-separated for URLs)."""
  p, s = os.fspath(path), os.fspath(start)
  if is_url(p):
    return posixpath.relpath(p.split("://", 1)[1], s.split("://", 1)[1])
  return os.path.relpath(p, s)


_CONFIGURED = []


def _configure() -> None:
  """Turns off fsspec's directory-listing caches for object stores (once per process):
  other processes and hosts write the same workdir (study shards, the next run), and a
  cached listing would hide what they wrote."""
  if _CONFIGURED:
    return
  import fsspec.config  # pylint: disable=g-import-not-at-top
  for protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
  _CONFIGURED.append(True)


def epath(path: PathLike):
  """An `etils.epath.Path` for `path` (what Orbax takes)."""
  _configure()
  from etils import epath as _epath  # pylint: disable=g-import-not-at-top
  return _epath.Path(os.fspath(path))


def _fs(url: str):
  """(fsspec filesystem, path inside it) for a URL."""
  _configure()
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.core.url_to_fs(url)


# --------------------------------------------------------------------------------------
# Queries

def exists(path: PathLike) -> bool:
  if is_url(path):
    return epath(path).exists()
  return os.path.exists(path)


def isfile(path: PathLike) -> bool:
  if is_url(path):
    return epath(path).is_file()
  return os.path.isfile(path)


def isdir(path: PathLike) -> bool:
  """A directory; for URLs, a name prefix that has objects under it."""
  if is_url(path):
    return epath(path).is_dir()
  return os.path.isdir(path)


def listdir(path: PathLike) -> List[str]:
  """Names in a directory (not sorted, like `os.listdir`); FileNotFoundError when absent."""
  if is_url(path):
    p = epath(path)
    if not p.is_dir():
      raise FileNotFoundError(os.fspath(path))
    return [c.name for c in p.iterdir()]
  return os.listdir(path)


def getsize(path: PathLike) -> int:
  if is_url(path):
    fs, inner = _fs(os.fspath(path))
    return int(fs.size(inner))
  return os.path.getsize(path)


def walk_files(directory: PathLike) -> List[str]:
  """Every file under `directory`, as sorted '/'-separated paths relative to it."""
  d = os.fspath(directory)
  if is_url(d):
    fs, inner = _fs(d)
    inner = inner.rstrip("/")
    return sorted(posixpath.relpath(f, inner) for f in fs.find(inner))
  out = []
  for root, _, files in os.walk(d):
    for name in files:
      out.append(os.path.relpath(os.path.join(root, name), d).replace(os.sep, "/"))
  return sorted(out)


# --------------------------------------------------------------------------------------
# Reading and writing

def open(path: PathLike, mode: str = "r", **kwargs) -> IO[Any]:  # pylint: disable=redefined-builtin
  """Opens a local file or an object. Writing an object uploads it when the file is
  closed; for all-or-nothing writes use `fileio.atomic_open`."""
  if is_url(path):
    return epath(path).open(mode, **kwargs)
  import builtins  # pylint: disable=g-import-not-at-top
  return builtins.open(path, mode, **kwargs)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` in one go (one upload for an object)."""
  if is_url(path):
    epath(path).write_bytes(data)
    return
  with open(path, "wb") as f:
    f.write(data)


def makedirs(path: PathLike) -> None:
  """Creates a directory and its parents (a no-op for object-store URLs, which have no
  directories; other fsspec filesystems create them)."""
  if is_url(path):
    epath(path).mkdir(parents=True, exist_ok=True)
    return
  os.makedirs(path, exist_ok=True)


def remove(path: PathLike, missing_ok: bool = True) -> None:
  """Deletes one file or object."""
  if is_url(path):
    with contextlib.suppress(FileNotFoundError) if missing_ok else contextlib.nullcontext():
      epath(path).unlink()
    return
  with contextlib.suppress(FileNotFoundError) if missing_ok else contextlib.nullcontext():
    os.remove(path)


def rmtree(path: PathLike) -> None:
  """Deletes a directory with everything in it; no error when it is absent."""
  if is_url(path):
    p = epath(path)
    if p.exists():
      p.rmtree(missing_ok=True) if p.is_dir() else p.unlink(missing_ok=True)
    return
  shutil.rmtree(path, ignore_errors=True)


def replace(src: PathLike, dst: PathLike) -> None:
  """Moves `src` onto `dst` (a file or a directory). Local: one atomic rename. URLs: a
  copy and a delete, object by object (not atomic: callers publish a marker last)."""
  if is_url(src) or is_url(dst):
    if is_url(src) != is_url(dst):
      raise ValueError(f"cannot move between local storage and a URL: {src} -> {dst}")
    fs, inner = _fs(os.fspath(src))
    target = _fs(os.fspath(dst))[1]
    if fs.isfile(inner):
      fs.copy(inner, target)   # a server-side copy
      fs.rm(inner)
      return
    for rel in walk_files(src):
      fs.copy(posixpath.join(inner, rel), posixpath.join(target, rel))
    fs.rm(inner, recursive=True)
    return
  os.replace(src, dst)


def create_new(path: PathLike, data: bytes) -> bool:
  """Creates the file or object `path` holding `data` only if it does not exist yet, in
  one step that concurrent writers cannot both win; False when it existed.

  Local: a hard link of a complete temporary file (never half-written; O_EXCL where the
  filesystem has no hard links). Object stores: one upload with a does-not-exist
  precondition (gcsfs `mode='create'`, GCS `ifGenerationMatch=0`; S3 `If-None-Match`);
  a filesystem that cannot express it raises NotImplementedError instead of pretending.
  """
  if is_url(path):
    fs, inner = _fs(os.fspath(path))
    try:
      fs.pipe_file(inner, data, mode="create")
    except FileExistsError:
      return False
    except TypeError as e:  # an fsspec filesystem without exclusive creation
      raise NotImplementedError(f"{path}: this storage cannot create an object only if it "
                                f"is absent ({e})") from None
    except OSError as e:
      if _precondition_failed(e):
        return False
      raise
    return True
  import tempfile  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(tmp, path)  # atomic; fails if `path` exists
      return True
    except FileExistsError:
      return False
    except OSError:  # a filesystem without hard links
      try:
        lfd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(lfd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      return True
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def _precondition_failed(e: BaseException) -> bool:
  """An object-store error that says a precondition (does-not-exist) failed: HTTP 412."""
  code = getattr(e, "code", None) or getattr(e, "status", None)
  return code == 412 or "412" in str(e) or "Precondition" in str(e)


def upload_tree(local_dir: str, url: str, last: tuple = ()) -> None:
  """Copies the files of a local directory under `url`, those named in `last` (relative
  paths) after all others, so that a reader who waits for them sees a complete copy."""
  files = walk_files(local_dir)
  for rel in sorted(files, key=lambda r: (r in last, r)):
    with open(os.path.join(local_dir, *rel.split("/")), "rb") as f:
      write_bytes(join(url, rel), f.read())


def download_tree(url: str, local_dir: str) -> List[str]:
  """Copies every object under `url` into `local_dir` (created); the relative paths."""
  files = walk_files(url)
  for rel in files:
    target = os.path.join(local_dir, *rel.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(join(url, rel), "rb") as src, open(target, "wb") as dst:
      shutil.copyfileobj(src, dst)
  return files


def local_copy(url: str, cache_root: str) -> str:
  """A local copy of the directory `url` (or of the directory holding the file `url`,
  returning the file's local path) under `cache_root/remote/`, for readers that need local
  files (safetensors, tokenizers). Reused while the objects' names, sizes and generations
  are unchanged; otherwise downloaded again into a new directory and swapped in."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  url = resolve(url)
  directory, file = (url, "") if isdir(url) else (dirname(url), basename(url))
  if file and not exists(url):
    raise FileNotFoundError(url)
  fs, inner = _fs(directory)
  listing = fs.find(inner.rstrip("/"), detail=True)
  state = {posixpath.relpath(name, inner.rstrip("/")): [
      int(info.get("size") or 0),
      str(info.get("generation") or info.get("md5Hash") or info.get("ETag")
          or info.get("mtime") or info.get("updated") or "")] for name, info in listing.items()}
  key = hashlib.sha256(directory.encode("utf-8")).hexdigest()[:16]
  local = os.path.join(cache_root, "remote", key)
  record = os.path.join(local, ".remote.json")
  want = {"url": directory, "objects": dict(sorted(state.items()))}
  try:
    with open(record, encoding="utf-8") as f:
      fresh = json.load(f) == want and all(
          os.path.getsize(os.path.join(local, *r.split("/"))) == s[0] for r, s in state.items())
  except (OSError, ValueError):
    fresh = False
  if not fresh:
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=os.path.dirname(local))
    try:
      download_tree(directory, tmp)
      with open(os.path.join(tmp, ".remote.json"), "w", encoding="utf-8") as f:
        json.dump(want, f)
      old = local + f".old.{os.getpid()}"
      if os.path.exists(local):
        os.replace(local, old)
      os.replace(tmp, local)
      shutil.rmtree(old, ignore_errors=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return os.path.join(local, *file.split("/")) if file else local
