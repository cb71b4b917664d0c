"""Trustworthy runs: one holder per workdir, config drift on resume, outputs that are files."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from optical_jax import trainer
from optical_jax.errors import InputError

from test_train import _cmd, _env, _params, tiny  # pylint: disable=g-bad-import-order

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True)
def _need_tokenizer(minilm_dir):
  del minilm_dir


def _quiet(*_):
  pass


@pytest.mark.slow
def test_resume_with_changed_math_stops_with_the_differences(tmp_path):
  work = str(tmp_path / "w")
  r = trainer.run(tiny(**{"train.devices": 1}), work, max_steps=4, log_fn=_quiet)
  assert r.step == 4
  with pytest.raises(InputError) as err:
    trainer.run(tiny(**{"train.devices": 1, "train.steps": 16, "optim.lr": 2e-3}), work,
                log_fn=_quiet)
  msg = str(err.value)
  assert "\n" not in msg and "allow_config_change" in msg
  assert "optim.lr: 0.001 -> 0.002" in msg and "train.steps: 12 -> 16" in msg
  # Harmless settings (logging, checkpoint cadence) are allowed and logged.
  seen = []
  r = trainer.run(tiny(**{"train.devices": 1, "train.log_every": 3}), work, max_steps=2,
                  log_fn=seen.append)
  assert r.resumed_from == 4 and r.step == 6
  assert any("train.log_every: 1 -> 3" in line for line in seen)
  # Asked for explicitly, the change is accepted.
  r = trainer.run(tiny(**{"train.devices": 1, "train.steps": 16, "train.log_every": 3,
                          "train.allow_config_change": True}), work, log_fn=_quiet)
  assert r.resumed_from == 6 and r.step == 16


@pytest.mark.slow
def test_second_run_on_a_workdir_stops_at_once_and_the_first_is_unharmed(tmp_path):
  over = ["--config.train.devices=1", "--config.train.steps=40", "--config.train.checkpoint_every=10"]
  ref = subprocess.run(_cmd(tmp_path / "ref", *over), env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert ref.returncode == 0, ref.stderr[-2000:]
  work = tmp_path / "shared"
  first = subprocess.Popen(_cmd(work, *over), env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  t0 = time.time()
  while not (work / ".lock").exists():
    assert first.poll() is None and time.time() - t0 < 120, "the first run never took the lock"
    time.sleep(0.05)
  t1 = time.time()
  second = subprocess.run(_cmd(work, *over), env=_env(), capture_output=True, text=True,
                          timeout=120)
  errors = [l for l in second.stderr.splitlines() if l.strip()]
  assert second.returncode == 2, second.stderr
  assert len(errors) == 1 and "in use by pid" in errors[0], second.stderr
  assert str(first.pid) in errors[0]
  assert time.time() - t1 < 60   # at once: no model or data loading first
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-2000:]
  a, b = _params(str(tmp_path / "ref")), _params(str(work))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not (work / ".lock").exists()


def test_outputs_that_are_files_are_one_line_errors(tmp_path):
  target = tmp_path / "afile"
  target.write_text("not a directory\n")
  train = subprocess.run(_cmd(target, "--config.train.devices=1"), env=_env(),
                         capture_output=True, text=True, timeout=120)
  lines = [l for l in train.stderr.splitlines() if l.strip()]
  assert train.returncode == 2 and len(lines) == 1, train.stderr
  assert lines[0] == f"error: {target}: workdir is a file, not a directory"
  cfg = tmp_path / "eval_cfg.py"
  cfg.write_text(EVAL_CONFIG.format(repo=ROOT), encoding="utf-8")
  ev = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}",
                       f"--out={target}"], env=_env(), capture_output=True, text=True,
                      timeout=300, cwd=str(tmp_path))
  lines = [l for l in ev.stderr.splitlines() if l.strip()]
  assert ev.returncode == 2 and len(lines) == 1, ev.stderr
  assert lines[0] == f"error: {target}: out directory is a file, not a directory"
  assert target.read_text() == "not a directory\n"


EVAL_CONFIG = """
import os
from optical_jax import evaluator, models

def get_config():
  data = os.path.join({repo!r}, "data", "afriqa-clir")
  c = evaluator.default_config()
  c.dataset.corpus = os.path.join(data, "corpus.jsonl")
  c.dataset.queries = os.path.join(data, "queries", "swa.test.jsonl")
  c.dataset.qrels = os.path.join(data, "qrels", "swa.test.tsv")
  c.systems["tiny"] = evaluator.system(models.model_spec(
      weights="random", tokenizer="asset:minilm/tokenizer.json", query_max_len=16,
      doc_max_len=32, arch=dict(vocab_size=30522, hidden_size=32, num_layers=1, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64)))
  return c
"""


@pytest.mark.slow  # two eval processes, ~11 s (default run budget)
def test_eval_logs_plain_lines_and_a_rerun_compiles_nothing(tmp_path):
  """In a log (stderr not a terminal) progress is plain lines; with the persistent
  compilation cache a second process on the same inputs compiles no XLA program."""
  cfg = tmp_path / "eval_cfg.py"
  cfg.write_text(EVAL_CONFIG.format(repo=ROOT), encoding="utf-8")
  env = dict(_env(), OPTICAL_JAX_XLA_CACHE=str(tmp_path / "xla"), OPTICAL_JAX_PROGRESS_EVERY="1")
  summaries = []
  for out in ("first", "second"):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}",
                           f"--out={tmp_path / out}", "--config.cache_dir=none"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr and "passages" in proc.stderr
    summaries.append([l for l in proc.stderr.splitlines() if l.startswith("compilation: ")])
  first, second = summaries
  assert len(first) == 1 and not first[0].startswith("compilation: 0 ")
  assert len(second) == 1 and second[0].startswith("compilation: 0 XLA"), second
  with open(tmp_path / "first" / "runs" / "tiny.trec") as a, \
       open(tmp_path / "second" / "runs" / "tiny.trec") as b:
    assert a.read() == b.read()
