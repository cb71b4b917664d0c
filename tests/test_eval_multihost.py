"""Evaluation over several hosts: each encodes and searches its share of the corpus."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from optical_jax import retrieval

from test_runs import EVAL_CONFIG  # pylint: disable=g-bad-import-order

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# The shipped swa queries over the shipped passage pool with a tiny random encoder; no
# embedding cache, quiet, top 20.
CONFIG = EVAL_CONFIG.replace("  return c\n", "  c.cache_dir = 'none'\n  c.progress = False\n"
                                             "  c.top_k = 20\n  return c\n")


def test_merge_top_k_equals_one_search():
  rng = np.random.default_rng(0)
  q = rng.standard_normal((7, 8)).astype(np.float32)
  d = rng.standard_normal((50, 8)).astype(np.float32)
  d[13] = d[40]          # a tie: the lower index wins, as in one search
  whole_s, whole_i = retrieval.exact_search(q, d, 10)
  whole_s = retrieval.rescore_top_k(q, d, whole_i)
  parts = [np.arange(0, 50, 3), np.arange(1, 50, 3), np.arange(2, 50, 3)]
  scores, indices = [], []
  for rows in parts:
    s, i = retrieval.exact_search(q, d[rows], 10)
    scores.append(retrieval.rescore_top_k(q, d[rows], i))
    indices.append(rows[i])
  s, i = retrieval.merge_top_k(scores, indices, 10)
  np.testing.assert_array_equal(i, whole_i)
  np.testing.assert_array_equal(s, whole_s)
  # Fewer documents than k: padded with -1 / -inf.
  s, i = retrieval.merge_top_k([whole_s[:, :2]], [whole_i[:, :2]], 4)
  assert (i[:, 2:] == -1).all() and np.isneginf(s[:, 2:]).all()


@pytest.mark.parametrize("max_tokens", [None, 8])   # 8: one row at lengths 8 and 16, two at 4
def test_encode_shards_together_equal_one_encoding(max_tokens):
  texts = [("word " * n).strip() for n in (3, 9, 1, 5, 7, 2, 8, 4, 6, 10, 2)]
  tok = lambda ts: [[1] * len(t.split()) for t in ts]   # pylint: disable=unnecessary-lambda-assignment
  embed = lambda ids, mask: np.stack([mask.sum(1) * 1.0, ids.shape[1] * np.ones(len(ids))], 1)  # pylint: disable=unnecessary-lambda-assignment
  whole = retrieval.encode_texts(texts, tok, embed, batch_size=2, length_buckets=(4, 8, 16),
                                 progress=False, max_tokens=max_tokens)
  got = np.zeros_like(whole)
  seen = []
  for index in range(3):
    rows, emb = retrieval.encode_shard(texts, tok, embed, batch_size=2,
                                       length_buckets=(4, 8, 16), progress=False, index=index,
                                       count=3, max_tokens=max_tokens)
    got[rows] = emb
    seen.extend(rows.tolist())
  assert sorted(seen) == list(range(len(texts)))   # every text exactly once
  np.testing.assert_array_equal(got, whole)        # same batch, padding, shape


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def _tokenizer(minilm_dir):
  del minilm_dir


@pytest.mark.slow
def test_two_processes_write_the_same_run_file_as_one(tmp_path, _tokenizer):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(CONFIG.format(repo=ROOT), encoding="utf-8")
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu",
             OPTICAL_JAX_XLA_CACHE="none")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}"]
  one = subprocess.run(cmd + [f"--out={tmp_path / 'one'}"], env=env, capture_output=True,
                       text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(
      cmd + [f"--out={tmp_path / 'two'}", "--config.distributed.initialize=True",
             f"--config.distributed.coordinator_address=127.0.0.1:{port}",
             "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "shard 1 of 2" in outs[0][1] and "shard 2 of 2" in outs[1][1]
  with open(tmp_path / "one" / "runs" / "tiny.trec") as a, \
       open(tmp_path / "two" / "runs" / "tiny.trec") as b:
    assert a.read() == b.read()


def test_rescored_maxsim_matches_the_search_scores():
  rng = np.random.default_rng(1)
  q = rng.standard_normal((3, 4, 8)).astype(np.float32)
  d = rng.standard_normal((9, 5, 8)).astype(np.float32)
  qm = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
  dm = (rng.random((9, 5)) > 0.3).astype(np.int32)
  dm[:, 0] = 1
  s, i = retrieval.exact_search(q, d, 4, scoring="maxsim", q_mask=qm, d_mask=dm)
  r = retrieval.rescore_top_k(q, d, i, scoring="maxsim", q_mask=qm, d_mask=dm)
  np.testing.assert_allclose(r, s, rtol=1e-5, atol=1e-5)
