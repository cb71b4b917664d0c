"""Checkpoints: a step that fails to restore is moved aside, so the run can write it again."""

import os

import jax
import numpy as np
import pytest

from optical_jax import checkpoint

from test_train import tiny  # pylint: disable=g-bad-import-order


# A failed restore leaves a tensorstore callback that fires after Orbax closed its event
# loop ("Event loop is closed", ignored by Python): harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(step):
  return {"w": np.arange(600, dtype=np.float32).reshape(6, 100) + step,
          "b": np.full(3, step, np.int32), "step": np.int32(step)}


def corrupt_arrays(step_dir):
  """Truncates every array-data file of a checkpoint step (Orbax/OCDBT `d/` files)."""
  hit = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) != "d":
      continue
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
      hit += 1
  assert hit, f"no array data found under {step_dir}"


def test_corrupt_newest_is_moved_aside_and_saved_again(tmp_path):
  d = str(tmp_path / "ckpt")
  ck = checkpoint.Checkpointer(d, max_to_keep=3)
  for s in (4, 8, 12):
    ck.save(s, _state(s), {"step": s})
  ck.close()
  corrupt_arrays(os.path.join(d, "12"))
  # A leftover from an earlier failure: the new one goes to 12.corrupt.1.
  os.makedirs(os.path.join(d, "12.corrupt"))

  reports = []
  ck = checkpoint.Checkpointer(d, max_to_keep=3)
  abstract = checkpoint.abstract_like(_state(0))
  step, state, meta = ck.restore_latest(abstract, report=reports.append)
  assert step == 8 and meta == {"step": 8}
  np.testing.assert_array_equal(state["w"], _state(8)["w"])
  assert len(reports) == 1
  assert "12 failed to restore" in reports[0]
  assert reports[0].count("\n") == 0 and "12.corrupt.1" in reports[0]
  assert os.path.isdir(os.path.join(d, "12.corrupt.1"))
  assert not os.path.exists(os.path.join(d, "12"))
  assert ck.all_steps() == [4, 8]

  # The run reaches step 12 again: saving it works, and so does restoring it.
  assert ck.save(12, _state(112), {"step": 12})
  assert ck.all_steps() == [4, 8, 12]
  ck.close()
  ck = checkpoint.Checkpointer(d, max_to_keep=3)
  step, state, _ = ck.restore_latest(abstract, report=reports.append)
  assert step == 12 and len(reports) == 1
  np.testing.assert_array_equal(state["w"], _state(112)["w"])
  # Orbax neither counts nor garbage-collects the moved directories.
  for s in (16, 20, 24):
    ck.save(s, _state(s), {"step": s})
  assert ck.all_steps() == [16, 20, 24]
  assert {"12.corrupt", "12.corrupt.1"} <= set(os.listdir(d))
  ck.close()


def test_all_corrupt_restores_nothing(tmp_path):
  d = str(tmp_path / "ckpt")
  ck = checkpoint.Checkpointer(d)
  ck.save(4, _state(4), {"step": 4})
  ck.close()
  corrupt_arrays(os.path.join(d, "4"))
  reports = []
  ck = checkpoint.Checkpointer(d)
  assert ck.restore_latest(checkpoint.abstract_like(_state(0)), report=reports.append) is None
  assert len(reports) == 1 and ck.all_steps() == []
  assert ck.save(4, _state(4), {"step": 4})
  ck.close()


def test_corrupt_name(tmp_path):
  p = str(tmp_path / "7")
  assert checkpoint.corrupt_name(p) == p + ".corrupt"
  os.makedirs(p + ".corrupt")
  os.makedirs(p + ".corrupt.1")
  assert checkpoint.corrupt_name(p) == p + ".corrupt.2"


@pytest.mark.slow  # ~15 s; the checkpoint-level corrupt cases above stay quick
def test_trainer_resumes_past_a_corrupt_newest_checkpoint(tmp_path, minilm_dir):
  del minilm_dir  # the tiny config's tokenizer
  from optical_jax import trainer  # pylint: disable=g-import-not-at-top
  config = tiny(**{"train.devices": 1, "train.checkpoint_every": 4, "train.steps": 12})
  workdir = str(tmp_path / "run")
  r1 = trainer.run(config, workdir, log_fn=lambda *_: None)
  ckdir = os.path.join(workdir, "checkpoints")
  assert r1.step == 12 and sorted(os.listdir(ckdir)) == ["12", "4", "8"]
  corrupt_arrays(os.path.join(ckdir, "12"))
  os.rename(r1.export_dir, r1.export_dir + ".first")

  logged = []
  r2 = trainer.run(config, workdir, log_fn=logged.append)
  assert r2.resumed_from == 8 and r2.step == 12
  assert any("failed to restore" in m and "12.corrupt" in m for m in logged), logged
  assert os.path.exists(os.path.join(r2.export_dir, "model.safetensors"))
  with open(os.path.join(r2.export_dir, "README.md"), encoding="utf-8") as f:
    card = f.read()
  assert "| steps | 12 |" in card and "| loss.loss | ot |" in card and "**ntrex**" in card
  assert {"12", "12.corrupt"} <= set(os.listdir(ckdir))
  # The rerun from step 8 reproduces the first run's student exactly.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  a = load_file(os.path.join(r1.export_dir + ".first", "model.safetensors"))
  b = load_file(os.path.join(r2.export_dir, "model.safetensors"))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6)
  # And the step 12 it wrote restores.
  ck = checkpoint.Checkpointer(ckdir)
  assert ck.all_steps()[-1] == 12
  ck.close()
  jax.clear_caches()


def _rewrite_meta(step_dir, meta):
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(step_dir, "meta", "metadata"), "w", encoding="utf-8") as f:
    json.dump(meta, f)


@pytest.mark.slow
def test_trainer_falls_back_past_a_damaged_meta_and_stops_on_changed_data(tmp_path, minilm_dir):
  """A checkpoint whose meta is valid JSON with wrong content (a data position that is
  none, another step) falls back to the previous step like any other damage; a data
  position saved for another pipeline (the data changed) stops the run and moves nothing."""
  del minilm_dir
  from optical_jax import trainer  # pylint: disable=g-import-not-at-top
  from optical_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  config = tiny(**{"train.devices": 1, "train.checkpoint_every": 4, "train.steps": 8})
  workdir = str(tmp_path / "run")
  r1 = trainer.run(config, workdir, log_fn=lambda *_: None)
  ckdir = os.path.join(workdir, "checkpoints")
  _rewrite_meta(os.path.join(ckdir, "8"), {"data": {"epoch": -1, "batch": "x"}, "step": 8})
  os.rename(r1.export_dir, r1.export_dir + ".first")
  logged = []
  r2 = trainer.run(config, workdir, log_fn=logged.append)
  assert r2.resumed_from == 4 and r2.finished
  assert any("8.corrupt" in m and "bad data iterator state" in m for m in logged), logged
  _rewrite_meta(os.path.join(ckdir, "8"), {"data": {"epoch": 0, "batch": 8, "fingerprint": "other"},
                                           "step": 8})
  os.rename(r2.export_dir, r2.export_dir + ".second")
  with pytest.raises(InputError, match="saved for another pipeline"):
    trainer.run(config, workdir, log_fn=lambda *_: None)
  assert {"4", "8"} <= set(os.listdir(ckdir))
  jax.clear_caches()


def test_storage_problem_reads_tensorstore_and_os_errors():
  import errno  # pylint: disable=g-import-not-at-top
  ts = ValueError('RESOURCE_EXHAUSTED: Error writing "x" ... Failed to write 872449 bytes to '
                  "file 20: No space left on device [os_error_code='28']")
  assert checkpoint.storage_problem(ts) == "no space left on device"
  assert checkpoint.storage_problem(OSError(errno.EROFS, "ro")) == "read-only file system"
  wrapped = RuntimeError("outer")
  wrapped.__cause__ = OSError(errno.EDQUOT, "quota")
  assert checkpoint.storage_problem(wrapped) == "disk quota exceeded"
  assert checkpoint.storage_problem(ValueError("shape mismatch")) is None
