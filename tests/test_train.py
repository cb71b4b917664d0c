"""train.py end to end on the tiny config: layouts, exact resume, preemption, bad input."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from optical_jax import trainer
from optical_jax.errors import InputError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True)
def _need_tokenizer(minilm_dir):
  del minilm_dir


def tiny(**overrides):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import tiny as tiny_cfg  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  c = tiny_cfg.get_config()
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _params(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "student", "model.safetensors"))


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def _cmd(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "tiny.py"),
          "--workdir", str(workdir), *extra]


def _env(devices=1):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return env


def test_tiny_trains_on_eight_devices_like_one(tmp_path):
  r1 = trainer.run(tiny(**{"train.devices": 1}), str(tmp_path / "one"), log_fn=lambda *_: None)
  r8 = trainer.run(tiny(**{"train.devices": 8}), str(tmp_path / "eight"), log_fn=lambda *_: None)
  assert r1.step == r8.step == 12 and r8.compilations <= 2  # buckets (16, 32)
  for (s1, l1), (s8, l8) in zip(_losses(r1.workdir), _losses(r8.workdir)):
    assert s1 == s8 and abs(l1 - l8) < 1e-5
  p1, p8 = _params(r1.workdir), _params(r8.workdir)
  for k in p1:
    np.testing.assert_allclose(p1[k], p8[k], atol=1e-5)
  for name in ("config.json", "metrics.jsonl", "final_metrics.json", "student/optical_jax.json"):
    assert os.path.exists(os.path.join(r8.workdir, name))
  assert os.listdir(os.path.join(r8.workdir, "tensorboard"))
  # The export loads back as a model for eval.
  from optical_jax import models
  m = models.load_model(models.export_spec(r8.export_dir))
  assert m.cfg.hidden_size == 32


def _wait_for_step(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"training exited early with {proc.returncode}")
    if os.path.exists(path):
      with open(path) as f:
        lines = [json.loads(x) for x in f if x.strip()]
      if lines and lines[-1]["step"] >= step:
        return
    time.sleep(0.05)
  raise AssertionError("timed out waiting for training")


def test_sigterm_then_sigkill_then_resume_is_exact(tmp_path):
  """SIGTERM leaves a complete checkpoint; SIGKILL at a random step loses nothing but time."""
  ref = trainer.run(tiny(**{"train.devices": 1}), str(tmp_path / "ref"), log_fn=lambda *_: None)
  work = tmp_path / "run"
  over = ["--config.train.devices=1", "--config.train.checkpoint_every=2"]
  rng = random.Random(0)
  # 1) SIGTERM: the run saves a checkpoint at the step it reached and exits 143 with one
  # line saying where to resume; nothing claims an export.
  proc = subprocess.Popen(_cmd(work, *over), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _wait_for_step(work, 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = (x.decode() for x in proc.communicate(timeout=120))
  assert proc.returncode == 128 + signal.SIGTERM, out + err
  steps = sorted(int(s) for s in os.listdir(work / "checkpoints") if s.isdigit())
  assert steps and "stopped by SIGTERM at step" in out
  assert "exported" not in out + err and not (work / "student").exists()
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: stopped: training stopped by SIGTERM at step ")
  assert "rerun the same command to resume" in last
  # 2) SIGKILL at a random later step.
  kill_at = rng.randint(steps[-1] + 2, 10)
  proc = subprocess.Popen(_cmd(work, *over), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for_step(work, kill_at, proc)
  proc.kill()
  proc.wait()
  # 3) Resume to the end.
  done = subprocess.run(_cmd(work, *over), env=_env(), capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from step" in done.stdout
  a, b = _params(ref.workdir), _params(str(work))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])  # bitwise
  assert _losses(ref.workdir) == _losses(str(work))


def _tree_bytes(root):
  out = {}
  for d, _, files in os.walk(root):
    for n in files:
      if n != ".lock":
        with open(os.path.join(d, n), "rb") as f:
          out[os.path.relpath(os.path.join(d, n), root)] = f.read()
  return out


def test_no_per_step_host_sync_and_a_rerun_rewrites_nothing(tmp_path, monkeypatch):
  """Issue 25: the finiteness flag stays on the device and is read at log steps and
  checkpoints only, so the host never blocks on the device between steps: over 12 steps
  with a log every 6, the trainer fetches from the device at the start, the two log
  steps, the last checkpoint and the export, not after every step. Issue 27: the same
  command again after a finished run says 'already finished' and leaves every file of
  the workdir byte-identical (final_metrics.json kept, no new TensorBoard file)."""
  calls = []
  real = trainer.jax.device_get

  def counting(x):
    calls.append(1)
    return real(x)
  monkeypatch.setattr(trainer.jax, "device_get", counting)
  config = tiny(**{"train.devices": 1, "train.log_every": 6, "train.checkpoint_every": 100})
  first = trainer.run(config, str(tmp_path / "w"), log_fn=lambda *_: None)
  assert first.finished and first.stopped_by is None and first.step == 12
  assert len(calls) < 12, f"{len(calls)} device_get calls for 12 steps"
  monkeypatch.setattr(trainer.jax, "device_get", real)
  before = _tree_bytes(tmp_path / "w")
  seen = []
  again = trainer.run(config, str(tmp_path / "w"), log_fn=seen.append)
  assert again.finished and again.step == first.step and again.last_metrics == first.last_metrics
  assert any(m.startswith("already finished at step 12") for m in seen)
  assert _tree_bytes(tmp_path / "w") == before


@pytest.mark.parametrize("override,message", [
    ({"train.steps": 0}, "config.train.steps=0: must be an integer >= 1"),
    ({"train.steps": -5}, "config.train.steps=-5"),
    ({"data.teacher_cache": "float64"}, "config.data.teacher_cache='float64': use one of"),
    ({"data.code_switch.side": "both"}, "data.code_switch: side"),
])
def test_schema_refuses_values_that_would_do_nothing_or_fail_late(tmp_path, override, message):
  with pytest.raises(InputError, match=re.escape(message)):
    trainer.run(tiny(**override), str(tmp_path / "w"), log_fn=lambda *_: None)
  assert not (tmp_path / "w").exists()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_then_resume_on_one(tmp_path):
  """Two localhost processes (gloo, 4 CPU devices each) train; one 8-device process resumes."""
  work = tmp_path / "mh"
  port = _free_port()
  procs = []
  for pid in range(2):
    procs.append(subprocess.Popen(
        _cmd(work, "--config.train.steps=12", "--config.distributed.initialize=True",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}",
             "--config.train.checkpoint_every=4"),
        env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  # Stop both after step 8's checkpoint by running only 8 steps of 12: use SIGTERM.
  _wait_for_step(work, 6, procs[0])
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=180)[0].decode() for p in procs]
  assert all(p.returncode == 128 + signal.SIGTERM for p in procs), outs[0][-2000:] + outs[1][-2000:]
  # Resume the same workdir in one process with 8 devices.
  r = trainer.run(tiny(), str(work), log_fn=lambda *_: None)
  assert r.resumed_from is not None and r.step == 12
  ref = trainer.run(tiny(), str(tmp_path / "ref8"), log_fn=lambda *_: None)
  a, b = _params(ref.workdir), _params(r.workdir)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-5)


@pytest.mark.slow
def test_two_processes_with_host_shards_cache_their_own_teacher_tokens(tmp_path):
  """host_shards: each of two processes caches its half of the teacher tokens and trains; a
  resume on one process is refused (the data order depends on the host count)."""
  work, cache = tmp_path / "hs", tmp_path / "cache"
  port = _free_port()
  over = ("--config.train.steps=6", "--config.data.host_shards=True",
          "--config.data.teacher_cache=float32", f"--config.data.cache_dir={cache}")
  procs = [subprocess.Popen(
      _cmd(work, *over, "--config.distributed.initialize=True",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"),
      env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for pid in range(2)]
  outs = [p.communicate(timeout=300)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  assert len(os.listdir(cache / "teacher")) == 2            # one shard per host
  rows = [int(re.search(r"teacher tokens: (\d+) of (\d+) English rows", o).group(1)) for o in outs]
  total = int(re.search(r"teacher tokens: \d+ of (\d+) English rows", outs[0]).group(1))
  assert sum(rows) == total and abs(rows[0] - rows[1]) <= 4   # halves (one per source at most)
  with open(work / "metrics.jsonl") as f:
    assert np.isfinite([json.loads(x)["loss"] for x in f if x.strip()]).all()
  done = subprocess.run(_cmd(work, *over, "--config.train.steps=8",
                            "--config.train.allow_config_change=True"), env=_env(8),
                        capture_output=True, text=True, timeout=240)
  assert done.returncode != 0 and "process count" in done.stderr


def _two_processes(work, caches, *over):
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(work, *over, f"--config.data.cache_dir={caches[pid]}",
           "--config.distributed.initialize=True",
           f"--config.distributed.coordinator_address=127.0.0.1:{port}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"),
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for pid in range(2)]
  outs = [p.communicate(timeout=300)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  return outs


def _teacher_entry(cache):
  from optical_jax import array_cache  # pylint: disable=g-import-not-at-top
  (name,) = [n for n in os.listdir(cache / "teacher") if n.startswith("teacher-")]
  key = name[len("teacher-"):]
  return cache / "teacher" / name, array_cache.load(str(cache / "teacher"), "teacher", key)[0]


@pytest.mark.slow
def test_two_processes_encode_the_teacher_cache_together(tmp_path):
  """Without host shards every host holds the whole teacher-token cache, encoded once over
  both hosts' devices (outputs gathered to each): each host's entry equals a one-process
  cache; when one host lacks its entry both encode again and only that one stores."""
  caches = [tmp_path / "c0", tmp_path / "c1"]
  over = ("--config.train.steps=2", "--config.data.teacher_cache=float32")
  outs = _two_processes(tmp_path / "a", caches, *over)
  for o in outs:
    assert "English rows" in o and "encoded on 4 device(s) of 2 host(s)" in o, o[-3000:]
  one = subprocess.run(_cmd(tmp_path / "one", *over, f"--config.data.cache_dir={tmp_path / 'c'}"),
                       env=_env(4), capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  assert "encoded on 4 device(s) of 1 host(s)" in one.stdout + one.stderr
  _, ref = _teacher_entry(tmp_path / "c")
  entries = [_teacher_entry(c) for c in caches]
  for _, arrays in entries:
    np.testing.assert_array_equal(arrays["offsets"], ref["offsets"])
    np.testing.assert_allclose(arrays["flat"], ref["flat"], atol=1e-5)
  # Host 1 loses its entry: both encode again (a collective), host 0 keeps its own.
  kept = entries[0][0] / "manifest.json"
  before = kept.stat().st_mtime_ns
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(entries[1][0])
  outs = _two_processes(tmp_path / "b", caches, *over)
  assert all("encoded on 4 device(s) of 2 host(s)" in o for o in outs)
  assert kept.stat().st_mtime_ns == before
  np.testing.assert_array_equal(_teacher_entry(caches[1])[1]["flat"], entries[0][1]["flat"])
  # Both have it now: both read it, nobody encodes.
  outs = _two_processes(tmp_path / "c2", caches, *over)
  assert all("teacher tokens: from cache" in o and "English rows" not in o for o in outs)


def _write(path, text, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(text)
  return path


@pytest.mark.parametrize("case", ["missing", "unequal", "undecodable", "empty", "jsonl", "mismatch"])
def test_bad_input_is_one_clear_error(tmp_path, case):
  d = tmp_path / "data"
  foreign = _write(str(d / "f.txt"), "habari\ndunia\nhabari yako\n")
  english = _write(str(d / "e.txt"), "hello\nworld\nhow are you\n")
  src = dict(type="lines", foreign=foreign, english=english)
  over = {}
  expect = None
  if case == "missing":
    src["foreign"] = str(d / "nope.txt")
    expect = "nope.txt"
  elif case == "unequal":
    _write(english, "only one line\n")
    expect = "line"
  elif case == "undecodable":
    with open(foreign, "wb") as f:
      f.write(b"habari\n\xff\xfe bad\nhabari yako\n")
    expect = "f.txt:2"
  elif case == "empty":
    _write(foreign, "habari\n\nhabari yako\n")
    src["empty"] = "error"
    expect = "f.txt:2"
  elif case == "jsonl":
    src = dict(type="jsonl", path=_write(str(d / "q.jsonl"), '{"text": "a", "text_en": "b"}\n{"text": \n'))
    expect = "q.jsonl:2"
  elif case == "mismatch":
    over = {"student.arch.hidden_size": 48, "student.arch.num_heads": 4}
    expect = "set --config.student.head_dim=32"
  c = tiny(**{"train.devices": 1, **over})
  c.data.bitext.sources = [src]
  c.data.global_batch = 2
  work = tmp_path / "work"
  with pytest.raises(InputError) as err:
    trainer.run(c, str(work), log_fn=lambda *_: None)
  msg = str(err.value)
  assert expect in msg and "\n" not in msg
  # Nothing half-written: the data is checked before anything is written, and the
  # workdir this run created is gone again.
  assert not work.exists()


def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path):
  out = subprocess.run(_cmd(tmp_path / "w", "--config.nope=1"),
                       env=_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == ["error: unknown config key 'nope' in --config.nope"]
  out = subprocess.run(_cmd(tmp_path / "w", "--config.train.stepz=3"),
                       env=_env(), capture_output=True, text=True, timeout=120)
  assert out.stderr.strip().splitlines() == [
      "error: unknown config key 'stepz' in --config.train.stepz; did you mean 'steps'?"]
  out = subprocess.run(_cmd(tmp_path / "w2", "--config.student.weights=magic"), env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  err_lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(err_lines) == 1 and "student.weights must be one of" in err_lines[0]


@pytest.mark.slow
def test_real_bitext_lowers_ot_loss_and_raises_cosine(tmp_path, minilm_dir):
  """100 OT steps on NTREX swa-eng: a small student learns toward the frozen MiniLM teacher."""
  from configs.common import locate
  from optical_jax.models import model_spec
  c = tiny(**{"train.devices": 1, "train.steps": 100, "train.log_every": 10,
              "train.checkpoint_every": 1000, "optim.lr": 3e-4, "optim.warmup_steps": 10})
  c.teacher = model_spec(weights="hf", path=minilm_dir, query_max_len=32)
  c.student.arch.hidden_size = 64
  c.student.arch.num_heads = 4
  c.student.head_dim = 384  # project to the teacher's size
  c.data.bitext.sources = [dict(type="lines", foreign=locate("ntrex", "swa.txt"),
                                english=locate("ntrex", "eng.txt"), take=512)]
  c.data.global_batch = 16
  r = trainer.run(c, str(tmp_path / "w"), log_fn=lambda *_: None)
  with open(os.path.join(r.workdir, "metrics.jsonl")) as f:
    rows = [json.loads(x) for x in f if '"loss"' in x]
  first, last = rows[0], rows[-1]
  assert last["step"] == 100
  assert last["ot_loss"] < first["ot_loss"] - 0.05, (first["ot_loss"], last["ot_loss"])
  assert last["sentence_cosine"] > first["sentence_cosine"] + 0.05
  assert all(r["converged_fraction"] > 0.9 for r in rows)
