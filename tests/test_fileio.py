"""Atomic writes and directory locks (one run per workdir)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from optical_jax import fileio
from optical_jax.errors import InputError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

HOLDER = """
import sys, time
from optical_jax import fileio
lock = fileio.hold_directory(sys.argv[1], "workdir")
print("held", flush=True)
time.sleep(120)
"""


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _holder(path):
  """A child process holding the lock on `path` (waits until it holds it)."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE,
                           env=env, text=True)
  line = child.stdout.readline()
  assert line.strip() == "held", line
  return child


def test_atomic_open_leaves_target_untouched_on_error(tmp_path):
  p = tmp_path / "out.txt"
  fileio.write_text(p, "old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_open(p) as f:
      f.write("new")
      raise RuntimeError("boom")
  assert p.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.txt"]


def test_file_is_not_a_directory(tmp_path):
  p = tmp_path / "run"
  p.write_text("x")
  with pytest.raises(InputError) as e:
    fileio.hold_directory(p, what="workdir")
  assert str(e.value) == f"{p}: workdir is a file, not a directory"
  with pytest.raises(InputError, match="out is a file, not a directory"):
    fileio.hold_directory(p, what="out")


def test_creates_and_releases(tmp_path):
  p = tmp_path / "a" / "run"
  with fileio.hold_directory(p) as hold:
    assert hold.created and hold.held and os.path.isdir(p)
    info = json.loads((p / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
  assert not hold.held and os.listdir(p) == []
  with fileio.hold_directory(p) as hold:
    assert not hold.created


def test_second_holder_is_refused(tmp_path):
  p = tmp_path / "run"
  child = _holder(p)
  try:
    with pytest.raises(InputError) as e:
      fileio.hold_directory(p, what="workdir")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: workdir is in use by pid {child.pid} on "
                          f"{socket.gethostname()} since ")
    assert os.path.exists(p / ".lock")  # the refusal leaves the holder's lock alone
  finally:
    child.kill()
    child.wait()
  # The holder died without releasing: its lock is stale and is taken over.
  reports = []
  with fileio.hold_directory(p, report=reports.append) as hold:
    assert hold.held and not hold.created
    assert len(reports) == 1 and f"pid {child.pid}" in reports[0] and "stale" in reports[0]


def test_stale_lock_is_taken_over(tmp_path):
  p = tmp_path / "run"
  p.mkdir()
  dead = _dead_pid()
  (p / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead,
                                       "started": "2020-01-01 00:00:00 UTC"}))
  reports = []
  with fileio.hold_directory(p, report=reports.append) as hold:
    assert json.loads((p / ".lock").read_text())["pid"] == os.getpid()
    assert len(reports) == 1 and f"pid {dead}" in reports[0]
    assert hold.info["pid"] == os.getpid()
  assert not os.path.exists(p / ".lock")


def test_reused_pid_is_stale(tmp_path):
  # The recorded pid is alive (ours) but is a different process than the one that
  # wrote the lock: its start time differs.
  p = tmp_path / "run"
  p.mkdir()
  (p / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                       "pid_start": "-1", "started": "then"}))
  if fileio._pid_start(os.getpid()) is None:
    pytest.skip("no /proc: process start times unknown")
  with fileio.hold_directory(p, report=lambda _: None) as hold:
    assert hold.held


def test_other_host_and_unreadable_locks_are_not_taken_over(tmp_path):
  p = tmp_path / "run"
  p.mkdir()
  (p / ".lock").write_text(json.dumps({"host": "elsewhere.example", "pid": _dead_pid(),
                                       "started": "2020-01-01 00:00:00 UTC"}))
  with pytest.raises(InputError, match=r"in use by pid \d+ on elsewhere.example since "
                                       r"2020-01-01 00:00:00 UTC: .*remove .*\.lock"):
    fileio.hold_directory(p)
  (p / ".lock").write_text("{not json")
  with pytest.raises(InputError, match="cannot be read"):
    fileio.hold_directory(p)


def test_same_process_cannot_hold_twice(tmp_path):
  with fileio.hold_directory(tmp_path / "run"):
    with pytest.raises(InputError, match=f"in use by pid {os.getpid()}"):
      fileio.hold_directory(tmp_path / "run")


def test_released_on_exception(tmp_path):
  p = tmp_path / "run"
  with pytest.raises(RuntimeError, match="boom"):
    with fileio.hold_directory(p):
      raise RuntimeError("boom")
  assert not os.path.exists(p / ".lock")
  with fileio.hold_directory(p) as hold:
    assert hold.held


def test_remove_created(tmp_path):
  p = tmp_path / "run"
  hold = fileio.hold_directory(p)
  (p / "config.json").write_text("{}")
  hold.release(remove_created=True)
  assert not os.path.exists(p)
  # A directory that existed before is never removed.
  p.mkdir()
  hold = fileio.hold_directory(p)
  hold.release(remove_created=True)
  assert os.path.isdir(p)
