"""Atomic file output (write to a temporary name beside the target, then rename; one
upload for an object-store URL) and directory locks (one run per workdir / output
directory, local or on an object store). Paths may be URLs (`optical_jax.paths`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from optical_jax import paths
from optical_jax.errors import InputError, StorageError

try:
  import fcntl
except ImportError:  # not POSIX
  fcntl = None

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs) -> Iterator[Any]:
  """Opens a temporary file next to `path`; renames it onto `path` on success.

  If the body raises, the temporary file is removed and `path` is untouched, so a
  crash never leaves a half-written output. For a URL the body writes to memory and the
  object is uploaded in one request when it ends (an object store publishes an object
  whole or not at all).
  """
  path = os.fspath(path)
  if paths.is_url(path):
    buf = io.BytesIO() if "b" in mode else io.StringIO(newline=kwargs.get("newline"))
    yield buf
    data = buf.getvalue()
    if not isinstance(data, bytes):
      data = data.encode(kwargs.get("encoding") or "utf-8", kwargs.get("errors") or "strict")
    paths.write_bytes(path, data)
    return
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


def read_json(path) -> Any:
  """The JSON value in `path`, or None when the file is missing or not valid JSON (an
  output of an earlier, maybe interrupted, run that is then recomputed)."""
  try:
    with paths.open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_text(path) -> Optional[str]:
  """The UTF-8 text in `path`, or None when the file is missing or unreadable."""
  try:
    with paths.open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, ValueError):
    return None


def read_bytes(path) -> Optional[bytes]:
  """The bytes in `path`, or None when the file is missing or unreadable."""
  try:
    with paths.open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def write_bytes(path, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


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


# --------------------------------------------------------------------------------------
# Directory locks

LOCK_FILE = ".lock"


def _pid_start(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), else None.

  Recorded in the lock so that a pid reused by an unrelated process after a crash does
  not keep the lock alive.
  """
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22; the command name (field 2) is in parentheses and may hold spaces.
  fields = stat[stat.rfind(")") + 2:].split()
  return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  except OSError:
    return False
  return True


def _read_lock(path: str) -> Optional[Dict[str, Any]]:
  """The holder recorded in a lock file; {} when unreadable; None when there is none."""
  try:
    with paths.open(path, encoding="utf-8") as f:
      info = json.load(f)
    return info if isinstance(info, dict) else {}
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}


def _is_stale(info: Dict[str, Any], host: str) -> bool:
  """A lock whose holder is known to be gone: same host and the pid dead (or reused)."""
  if not info or info.get("host") != host or not isinstance(info.get("pid"), int):
    return False
  pid = info["pid"]
  if not pid_alive(pid):
    return True
  recorded, now = info.get("pid_start"), _pid_start(pid)
  return recorded is not None and now is not None and recorded != now


class DirectoryLock:
  """An exclusive hold on a directory (see `hold_directory`); a context manager.

  Attributes:
    path: the directory (absolute).
    lock_path: the lock file inside it.
    created: True when this hold created the directory.
    info: what the lock file records: host, pid, pid_start, started, started_unix, what.
  """

  def __init__(self, path, what: str = "workdir", *,
               report: Callable[[str], None] = log.warning, lock_name: str = LOCK_FILE):
    self.path = paths.resolve(path)
    self.what = what
    self.lock_path = paths.join(self.path, lock_name)
    self.created = False
    self.info: Dict[str, Any] = {}
    self._report = report
    self._held = False
    self._acquire()

  # -- acquiring

  def _make_dir(self) -> None:
    if paths.is_url(self.path):  # no directories to make on an object store
      if paths.isfile(self.path):
        raise InputError(f"{self.what} is an object, not a directory", self.path)
      self.created = not paths.exists(self.path)
      return
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise InputError(f"{self.what} is a file, not a directory", self.path)
    parent = os.path.dirname(self.path)
    try:
      os.makedirs(parent, exist_ok=True)
      os.mkdir(self.path)
      self.created = True
    except FileExistsError:
      if not os.path.isdir(self.path):
        raise InputError(f"{self.what} is a file, not a directory", self.path) from None
    except NotADirectoryError as e:
      raise InputError(f"{self.what} cannot be created: a parent is a file, not a directory",
                       self.path) from e
    except OSError as e:
      raise InputError(f"{self.what} cannot be created: {e.strerror or e}", self.path) from e

  def _acquire(self) -> None:
    self._make_dir()
    host, pid = socket.gethostname(), os.getpid()
    now = time.time()
    self.info = {"host": host, "pid": pid, "pid_start": _pid_start(pid),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
                 "started_unix": round(now, 3), "what": self.what}
    for _ in range(3):
      try:
        created = self._create_lock_file()
      except OSError as e:
        raise StorageError(f"{self.path}: cannot write the {self.what} lock: "
                           f"{e.strerror or e}") from None
      if created:
        self._held = True
        return
      holder = _read_lock(self.lock_path)
      if holder is None:  # released meanwhile
        continue
      if _is_stale(holder, host) and self._remove_stale(holder):
        self._report(f"{self.path}: took over the stale lock of {self.what} left by pid "
                     f"{holder['pid']} on {host} (started {holder.get('started', '?')}; "
                     f"that process is gone)")
        continue
      raise self._in_use(holder)
    raise InputError(f"{self.what} lock {self.lock_path} keeps changing; is another run "
                     f"starting in it?", self.path)

  def _create_lock_file(self) -> bool:
    """Writes our lock file atomically (a does-not-exist precondition on object stores);
    False when one exists already."""
    return paths.create_new(self.lock_path, (json.dumps(self.info) + "\n").encode("utf-8"))

  def _remove_stale(self, holder: Dict[str, Any]) -> bool:
    """Removes the lock file if it still records `holder` (serialised over the processes
    of this host; on an object store only this host's dead holders are stale at all)."""
    with _flocked(self.path):
      if _read_lock(self.lock_path) != holder:
        return False
      paths.remove(self.lock_path)
      return True

  def _in_use(self, holder: Dict[str, Any]) -> InputError:
    if not holder:
      return InputError(f"{self.what} is locked by {self.lock_path}, which cannot be read: "
                        f"remove it if no run is using this {self.what}", self.path)
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = holder.get("started", "?")
    hint = (f"wait for that run to finish or stop it, or use another {self.what}"
            if host == self.info["host"] else
            f"wait for that run to finish, or remove {self.lock_path} if it is no longer "
            f"running (a lock from another host cannot be checked)")
    return InputError(f"{self.what} is in use by pid {pid} on {host} since {since}: {hint}",
                      self.path)

  # -- releasing

  @property
  def held(self) -> bool:
    return self._held

  def release(self, remove_created: bool = False) -> None:
    """Removes the lock file (only our own, only in the process that took it).

    Args:
      remove_created: also delete the directory with everything in it, if this hold
        created it (for a run that failed before doing any work).
    """
    if not self._held or os.getpid() != self.info.get("pid"):
      return
    self._held = False
    if _read_lock(self.lock_path) == self.info:
      paths.remove(self.lock_path)
    if remove_created and self.created:
      paths.rmtree(self.path)

  def __enter__(self) -> "DirectoryLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def __repr__(self) -> str:
    return (f"DirectoryLock({self.path!r}, what={self.what!r}, held={self._held}, "
            f"created={self.created})")


@contextlib.contextmanager
def _flocked(directory: str) -> Iterator[None]:
  """An exclusive flock on a directory (a no-op without fcntl and on object stores)."""
  if fcntl is None or paths.is_url(directory):
    yield
    return
  fd = os.open(directory, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing releases the flock


def hold_directory(path, what: str = "workdir", *,
                   report: Callable[[str], None] = log.warning) -> DirectoryLock:
  """Creates `path` if needed and takes an exclusive lock on it for this process.

  The lock is a file `PATH/.lock` holding JSON {host, pid, pid_start, started, ...},
  created atomically (it either exists complete or not at all), so a second run in the
  same directory fails at once. A lock left by a process that died on this host (its pid
  gone, or reused by another process) is taken over, with a warning through `report`.
  Use as a context manager (released on exit, also on exceptions) or call `release()`.
  On an object store (`gs://...`) the lock is an object created with a does-not-exist
  precondition, so of two runs starting together exactly one gets it; a lock left by a
  run that died elsewhere must be removed by hand (the error names it).

      with fileio.hold_directory(workdir, "workdir") as hold:
        ...  # hold.created: whether this call created the directory

  Raises:
    InputError: `path` is a file ("workdir is a file, not a directory"), cannot be
      created, or is held by a live process ("workdir is in use by pid P on HOST since T: ...").
  """
  return DirectoryLock(path, what, report=report)
