"""Remote storage (optical_jax.paths): `gs://` workdirs, eval outputs, study workdirs, data
and model paths, against a local GCS emulator started by these tests (tests/gcs_emulator.py:
gcp-storage-emulator on 127.0.0.1, with GCS's upload preconditions and generation headers).

Every client the project uses is pointed at it: gcsfs (etils.epath, the project's own
reads and writes), tensorstore (Orbax's checkpoint arrays) and google-cloud-storage
(tensorboardX's event files). Caches are the one thing that stays local, by design
(`paths.require_local`). The end-to-end cases run the programs as users do (a process each,
tens of seconds) and are `slow`; the path, lock and atomic-write cases are quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gcs_emulator  # pylint: disable=g-bad-import-order
from optical_jax import fileio, paths
from optical_jax.errors import InputError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUCKET = "bkt"


@pytest.fixture(scope="module")
def gcs():
  """A fresh emulator for this module; its URL; this process's clients pointed at it."""
  port = gcs_emulator.free_port()
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"),
                           str(port), BUCKET], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == '{"ready": true}'
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in gcs_emulator.client_env(url)}
    os.environ.update(gcs_emulator.client_env(url))
    try:
      yield url
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    proc.kill()
    proc.wait()


def _gs(*parts):
  return "gs://" + "/".join((BUCKET,) + parts)


# --- paths, atomic writes, locks (quick) -----------------------------------------------------


def test_urls_are_kept_as_written_and_joined_with_slashes():
  assert paths.is_url("gs://b/x") and paths.is_url("s3://b") and not paths.is_url("/tmp/x")
  assert not paths.is_url("relative/gs:/x") and not paths.is_url(None)
  assert paths.resolve("gs://b/run/") == "gs://b/run"      # never `<cwd>/gs:/b/run`
  assert paths.resolve("rel") == os.path.join(os.getcwd(), "rel")
  assert paths.join("gs://b/run", "checkpoints", "4") == "gs://b/run/checkpoints/4"
  assert paths.dirname("gs://b/run/x.json") == "gs://b/run"
  assert paths.basename("gs://b/run/") == "run"
  assert paths.relpath("gs://b/run/runs/a.trec", "gs://b/run") == "runs/a.trec"


def test_objects_are_written_whole_and_listed_like_directories(gcs):
  root = _gs("t1")
  fileio.write_json(paths.join(root, "a", "x.json"), {"k": 1})
  fileio.write_text(paths.join(root, "b.txt"), "héllo\n")
  assert fileio.read_json(paths.join(root, "a", "x.json")) == {"k": 1}
  assert fileio.read_text(paths.join(root, "b.txt")) == "héllo\n"
  assert paths.isdir(root) and paths.isdir(paths.join(root, "a"))
  assert paths.isfile(paths.join(root, "b.txt")) and not paths.isdir(paths.join(root, "b.txt"))
  assert sorted(paths.listdir(root)) == ["a", "b.txt"]
  assert paths.walk_files(root) == ["a/x.json", "b.txt"]
  with pytest.raises(FileNotFoundError):
    paths.listdir(paths.join(root, "missing"))
  # A body that fails uploads nothing: the old object stays as it was.
  with pytest.raises(RuntimeError):
    with fileio.atomic_open(paths.join(root, "b.txt"), "w", encoding="utf-8") as f:
      f.write("half")
      raise RuntimeError("crash")
  assert fileio.read_text(paths.join(root, "b.txt")) == "héllo\n"
  paths.replace(paths.join(root, "a"), paths.join(root, "moved"))
  assert paths.walk_files(root) == ["b.txt", "moved/x.json"]
  paths.rmtree(root)
  assert not paths.exists(root) and fileio.read_json(paths.join(root, "b.txt")) is None


def test_lock_object_is_created_only_if_absent(gcs):
  lock = _gs("t2", "lockobj")
  assert paths.create_new(lock, b"first")
  assert not paths.create_new(lock, b"second")    # the does-not-exist precondition held
  assert fileio.read_bytes(lock) == b"first"


def test_workdir_lock_on_a_bucket_refuses_a_second_run_and_takes_over_a_dead_one(gcs, tmp_path):
  work = _gs("t3", "run")
  hold = fileio.hold_directory(work, "workdir")
  assert hold.created and paths.exists(hold.lock_path)
  with pytest.raises(InputError, match=r"workdir is in use by pid \d+ on "):
    fileio.hold_directory(work, "workdir")
  hold.release()
  assert not paths.exists(hold.lock_path)
  # A lock left by a process of this host that has died is taken over, with a warning.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  info = dict(hold.info, pid=int(dead.stdout), pid_start=None)
  paths.write_bytes(hold.lock_path, (json.dumps(info) + "\n").encode())
  seen = []
  again = fileio.hold_directory(work, "workdir", report=seen.append)
  assert again.held and seen and "took over the stale lock" in seen[0]
  again.release()


def test_caches_must_be_local_paths():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from optical_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = tiny.get_config("")
  c.data.cache_dir = "gs://bkt/cache"
  with pytest.raises(InputError, match="config.data.cache_dir must be a local path"):
    config_lib.check(c)


def test_model_directories_on_a_bucket_are_copied_once_and_refreshed_when_changed(gcs, tmp_path):
  src = tmp_path / "model"
  (src / "sub").mkdir(parents=True)
  (src / "config.json").write_text("{}")
  (src / "sub" / "w.bin").write_bytes(b"\x00" * 10)
  url = _gs("t4", "model")
  paths.upload_tree(str(src), url)
  cache = str(tmp_path / "cache")
  local = paths.local_copy(url, cache)
  assert sorted(os.listdir(local)) == [".remote.json", "config.json", "sub"]
  mtime = os.stat(os.path.join(local, "config.json")).st_mtime_ns
  tok = paths.local_copy(paths.join(url, "config.json"), cache)   # a file brings its directory
  assert tok == os.path.join(local, "config.json")
  assert os.stat(tok).st_mtime_ns == mtime                         # reused, not fetched again
  paths.write_bytes(paths.join(url, "config.json"), b'{"changed": 1}')
  with open(os.path.join(paths.local_copy(url, cache), "config.json"), "rb") as f:
    assert f.read() == b'{"changed": 1}'


# --- the programs on gs:// (slow: a process each) -------------------------------------------


def _env():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  return env


def _train_cmd(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config",
          os.path.join(ROOT, "configs", "tiny.py"), "--workdir", str(workdir),
          "--config.train.devices=1", *extra]


def _safetensors(path):
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  return load(fileio.read_bytes(path))


def _wait_for_object_step(path, step, proc, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"training exited early with {proc.returncode}")
    text = fileio.read_text(path) or ""
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]
    if lines and lines[-1]["step"] >= step:
      return
    time.sleep(0.2)
  raise AssertionError("timed out waiting for training")


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
  """The tiny run trained to the end in a local workdir, uninterrupted."""
  work = tmp_path_factory.mktemp("ref") / "run"
  out = subprocess.run(_train_cmd(work), env=_env(), capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return work


@pytest.mark.slow
def test_training_in_a_bucket_killed_and_resumed_gives_the_same_parameters(gcs, local_reference):
  work = _gs("runs", "tiny")
  proc = subprocess.Popen(_train_cmd(work, "--config.train.checkpoint_every=2"), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  _wait_for_object_step(paths.join(work, "metrics.jsonl"), 7, proc)
  proc.send_signal(signal.SIGKILL)   # no chance to save or release anything
  proc.communicate(timeout=60)
  steps = sorted(int(n) for n in paths.listdir(paths.join(work, "checkpoints")) if n.isdigit())
  assert steps and steps[-1] < 12
  assert paths.exists(paths.join(work, ".lock"))      # left by the killed run
  out = subprocess.run(_train_cmd(work, "--config.train.checkpoint_every=2"), env=_env(),
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "took over the stale lock" in out.stdout + out.stderr
  assert f"model exported to {work}/student" in out.stdout + out.stderr
  ref = _safetensors(os.path.join(local_reference, "student", "model.safetensors"))
  got = _safetensors(paths.join(work, "student", "model.safetensors"))
  assert sorted(ref) == sorted(got)
  for k in ref:
    np.testing.assert_array_equal(ref[k], got[k])
  losses = [json.loads(x)["loss"] for x in fileio.read_text(paths.join(work, "metrics.jsonl"))
            .splitlines()]
  with open(os.path.join(local_reference, "metrics.jsonl"), encoding="utf-8") as f:
    assert losses == [json.loads(x)["loss"] for x in f]
  assert any(n.startswith("events.out.tfevents") for n in
             paths.listdir(paths.join(work, "tensorboard")))
  assert not paths.exists(paths.join(work, ".lock"))
  # A rerun of the finished run rewrites nothing.
  before = {f: fileio.read_bytes(paths.join(work, f)) for f in
            ("final_metrics.json", "student/optical_jax.json", "metrics.jsonl")}
  again = subprocess.run(_train_cmd(work), env=_env(), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
  assert again.returncode == 0 and "already finished at step 12" in again.stdout + again.stderr
  assert before == {f: fileio.read_bytes(paths.join(work, f)) for f in before}


EVAL_CONFIG = """
from optical_jax import evaluator, models
def get_config():
  c = evaluator.default_config()
  c.dataset.path = {data!r}
  c.dataset.split = "test"
  c.dataset.queries = {data!r} + "/queries/swa.test.jsonl"
  c.dataset.qrels = {data!r} + "/qrels/swa.test.tsv"
  c.cache_dir = "none"
  c.systems["student"] = evaluator.system(models.export_spec({model!r}))
  return c
"""


@pytest.mark.slow
def test_eval_reads_data_and_model_from_a_bucket_and_writes_its_outputs_there(
    gcs, local_reference, tmp_path):
  data, model, out = _gs("data", "afriqa"), _gs("models", "student"), _gs("eval", "student")
  paths.upload_tree(os.path.join(ROOT, "data", "afriqa-clir"), data)
  paths.upload_tree(os.path.join(local_reference, "student"), model)
  cfg = tmp_path / "eval_cfg.py"
  cfg.write_text(EVAL_CONFIG.format(data=data, model=model), encoding="utf-8")
  cmd = [sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}", f"--out={out}"]
  env = dict(_env(), OPTICAL_JAX_CACHE=str(tmp_path / "cache"))
  first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert first.returncode == 0, first.stderr[-3000:]
  assert f"done: 1 computed, 0 reused; outputs in {out}" in first.stdout + first.stderr
  files = paths.walk_files(out)
  for name in ("comparison.json", "comparison.md", "comparison.png", "config.json",
               "metrics/student.json", "runs/student.trec"):
    assert name in files, files
  assert ".lock" not in files
  metrics = fileio.read_json(paths.join(out, "metrics", "student.json"))
  again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert again.returncode == 0 and "0 computed, 1 reused" in again.stdout + again.stderr
  assert fileio.read_json(paths.join(out, "metrics", "student.json")) == metrics


@pytest.mark.slow
def test_two_study_shards_on_one_bucket_workdir_merge(gcs, tmp_path):
  from configs.studies import data_amount  # pylint: disable=g-import-not-at-top
  from optical_jax import study  # pylint: disable=g-import-not-at-top
  work = _gs("study")
  spec = f"smoke,amounts=16,seeds=1,cache_dir={tmp_path / 'cache'}"
  cmd = [sys.executable, os.path.join(ROOT, "study.py"), "--config",
         os.path.join(ROOT, "configs", "studies", "data_amount.py") + ":" + spec, "--workdir", work]
  procs = [subprocess.Popen(cmd + [f"--shard={i}/2"], env=_env(), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
  agg = subprocess.run(cmd + ["--aggregate"], env=_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert agg.returncode == 0, agg.stderr[-2000:]
  assert f"done: 3/3 cells, 40 rows; outputs in {work}" in agg.stdout or "3/3 cells" in agg.stdout
  # The same cells aggregated from a local copy give the same bytes.
  local = tmp_path / "copy"
  paths.download_tree(work, str(local))
  assert not [f for f in paths.walk_files(work) if f.endswith(".lock")]
  for name in ("results.csv", "per_query.csv.gz", "summary.md"):
    os.remove(local / name)
  study.aggregate(data_amount.get_config(spec), str(local), log=lambda _: None)
  for name in ("results.csv", "per_query.csv.gz"):
    assert (local / name).read_bytes() == fileio.read_bytes(paths.join(work, name)), name
