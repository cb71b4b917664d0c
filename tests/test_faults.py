"""The fault probe: bad inputs and machine faults replayed through the programs, each
ending in one line and the exit code that means it (issue 27).

Exit codes (optical_jax.cli): 0 done (outputs exist), 2 bad input, 3 non-finite
training, 4 the machine refused a write (disk full, read-only), 128 + N stopped by
signal N after a checkpoint (143 SIGTERM, 130 Ctrl-C). Cases that train (a few seconds
each on the tiny config) are `slow`; SIGTERM with exact resume is in test_train.py,
damaged caches in test_array_cache.py / test_teacher_cache.py / test_retrieval.py,
damaged checkpoints in test_checkpoint.py, rerunning a finished run in test_train.py.
Disk full and read-only directories use a tmpfs the test mounts (root on Linux; the
test is skipped where mounting is not allowed, the one reason that is not ours).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from test_train import _env, _wait_for_step  # pylint: disable=g-bad-import-order

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True)
def _need_tokenizer(minilm_dir):
  del minilm_dir


def _train(workdir, *over):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config",
          os.path.join(ROOT, "configs", "tiny.py"), "--workdir", str(workdir),
          "--config.train.devices=1", *over]


def _run(cmd, timeout=300):
  return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _one_error_line(out) -> str:
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "ERROR:absl" not in out.stderr, out.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("over,expected", [
    (["--config.train.steps=0"], "config.train.steps=0: must be an integer >= 1"),
    pytest.param(["--config.train.steps=-5"], "config.train.steps=-5: must be an integer >= 1",
                 marks=pytest.mark.slow),
    (["--config.data.teacher_cache=float64"], "config.data.teacher_cache='float64': use one of"),
    (["--config.train.stepz=3"], "unknown config key 'stepz' in --config.train.stepz; did you "
                                 "mean 'steps'?"),
])
def test_bad_config_values_stop_before_anything_is_written(tmp_path, over, expected):
  out = _run(_train(tmp_path / "w", *over))
  assert out.returncode == 2
  assert expected in _one_error_line(out)
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("every,kept", [
    (1, "last checkpoint (step 1) kept in"),
    pytest.param(100, "no checkpoint was saved yet", marks=pytest.mark.slow)])
def test_non_finite_training_names_a_checkpoint_that_exists_or_none(tmp_path, every, kept):
  out = _run(_train(tmp_path / "w", "--config.optim.lr=1e38", "--config.optim.warmup_steps=0",
                    f"--config.train.checkpoint_every={every}"))
  assert out.returncode == 3
  line = _one_error_line(out)
  assert "non-finite loss or gradients at step 2" in line and kept in line
  if every == 1:
    assert os.path.isdir(tmp_path / "w" / "checkpoints" / "1")


def test_aggregating_a_study_with_no_finished_cell_is_an_error(tmp_path):
  (tmp_path / "w").mkdir()
  out = _run([sys.executable, os.path.join(ROOT, "study.py"), "--config",
              "configs/studies/data_amount.py:smoke", "--workdir", str(tmp_path / "w"),
              "--aggregate"])
  assert out.returncode == 2 and "nothing to aggregate" in _one_error_line(out)
  assert os.listdir(tmp_path / "w") == []


@contextlib.contextmanager
def _tmpfs(size: str):
  """A fresh tmpfs of `size` mounted for the test (skips where mounting is refused)."""
  path = os.path.join("/tmp", f"optical-jax-fault-{uuid.uuid4().hex[:8]}")
  os.makedirs(path)
  if sys.platform != "linux" or os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
      capture_output=True).returncode != 0:
    os.rmdir(path)
    pytest.skip("needs a tmpfs mount (root on Linux) to make a small or read-only disk")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], capture_output=True)
    with contextlib.suppress(OSError):
      os.rmdir(path)


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_line_and_exit_4():
  with _tmpfs("3M") as disk:
    out = _run(_train(os.path.join(disk, "w"), "--config.train.checkpoint_every=2"))
  assert out.returncode == 4
  line = _one_error_line(out)
  assert "cannot save the checkpoint of step 2: no space left on device" in line
  assert "rerun the same command to resume" in line


@pytest.mark.slow
def test_read_only_workdir_is_one_line_and_exit_4():
  with _tmpfs("200M") as disk:
    work = os.path.join(disk, "w")
    assert _run(_train(work, "--config.train.steps=4")).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
    out = _run(_train(work, "--config.train.steps=4"))
  assert out.returncode == 4
  assert "cannot write the workdir lock: Read-only file system" in _one_error_line(out)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130_then_resumes(tmp_path):
  work = tmp_path / "w"
  proc = subprocess.Popen(_train(work, "--config.train.checkpoint_every=100"), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
  _wait_for_step(work, 3, proc)
  proc.send_signal(signal.SIGINT)
  out, err = (x.decode() for x in proc.communicate(timeout=120))
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert err.strip().splitlines()[-1].startswith("error: stopped: training stopped by SIGINT at step")
  assert "stopped by SIGINT" in out and not (work / "student").exists()
  steps = [s for s in os.listdir(work / "checkpoints") if s.isdigit()]
  assert steps and int(steps[0]) >= 3
  t0 = time.time()
  done = _run(_train(work, "--config.train.checkpoint_every=100"))
  assert done.returncode == 0 and "resumed from step" in done.stdout, done.stderr[-2000:]
  assert (work / "student" / "optical_jax.json").exists() and time.time() - t0 < 300


def test_closed_event_loop_noise_is_dropped_and_other_unraisables_are_not(monkeypatch):
  """After a handled checkpoint fallback, Orbax's asyncio finalizers raised 'Event loop is
  closed' into sys.unraisablehook (2,250 lines in 1 run of 4): the programs drop exactly
  those and report every other unraisable exception as Python does."""
  from optical_jax import cli  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
  cli.quiet_closed_event_loops()

  class Unraisable:
    def __init__(self, exc):
      self.exc_type, self.exc_value, self.exc_traceback = type(exc), exc, None
      self.err_msg, self.object = None, None
  sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
  other = ValueError("something else")
  sys.unraisablehook(Unraisable(other))
  assert seen == [other]
