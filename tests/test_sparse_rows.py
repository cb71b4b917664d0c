"""Row-sparse word-embedding updates (`optim.sparse_embeddings`, optical_jax.sparse_rows):
equal to dense AdamW where lazy and dense AdamW agree, and to a NumPy lazy AdamW elsewhere."""

import dataclasses
import re

import jax
import numpy as np
import optax
import pytest

from optical_jax import config as config_lib
from optical_jax import sparse_rows, step as step_lib
from optical_jax.errors import InputError

from test_step import ARCH, _batch, _run, _setup  # pylint: disable=g-bad-import-order

TABLE = sparse_rows.TABLE


def _table(tree):
  for k in TABLE:
    tree = tree[k]
  return np.asarray(tree)


def _optimizer(student, weight_decay, clip_norm=1.0, lr=1e-2):
  return step_lib.make_optimizer(student, lr=lr, steps=20, warmup_steps=2,
                                 weight_decay=weight_decay, clip_norm=clip_norm)


def _same_vocabulary_batches(rng, n_batches, used):
  """Batches whose source sides all use exactly the ids in `used` (and padding 0)."""
  out = []
  for _ in range(n_batches):
    b = _batch(rng, 8, 12, 10)
    ids = rng.choice(used, size=b["src_ids"].shape)
    ids[:, 0] = 0 if 0 in used else ids[:, 0]
    flat = ids.reshape(-1)
    flat[:len(used)] = used           # every id of `used` occurs in every batch
    b["src_ids"] = ids.astype(np.int32)
    b["src_mask"] = np.ones_like(b["src_mask"])
    out.append(b)
  return out


@pytest.mark.parametrize("n_dev", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_equal_to_dense_adamw_when_every_batch_uses_the_same_rows(n_dev):
  """Without weight decay, lazy and dense AdamW differ only on rows used before and not
  now; with every batch on the same rows, several steps give the same params."""
  spec, _, student, teacher = _setup(loss="sentence")
  tx = _optimizer(student, weight_decay=0.0)
  used = np.arange(3, 40)
  batches = _same_vocabulary_batches(np.random.default_rng(0), 4, used)
  mesh = step_lib.make_mesh(jax.devices()[:n_dev])
  dense, l_dense, _ = _run(mesh, spec, tx, student, teacher, batches)
  sparse, l_sparse, _ = _run(mesh, dataclasses.replace(spec, sparse_embeddings=True), tx, student,
                             teacher, batches)
  np.testing.assert_allclose(l_sparse, l_dense, rtol=1e-6)
  # Two devices sum the gradients in another order: float32 noise on biases near 0 that
  # Adam's normalisation magnifies (as in test_step), hence atol 1e-6 on params ~0.02.
  for a, b in zip(jax.tree.leaves(sparse.params), jax.tree.leaves(dense.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_table(sparse.params), _table(dense.params), rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(sparse.opt_state), jax.tree.leaves(dense.opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
  # Rows no batch used: the sparse run never touched them.
  unused = np.setdiff1d(np.arange(ARCH["vocab_size"]), used)
  np.testing.assert_array_equal(_table(sparse.params)[unused], _table(student)[unused])


def _adam_moments(opt_state):
  """{'mu': table moment, 'nu': ...} of an optax adamw state, found by path."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if tuple(keys[-len(TABLE):]) == TABLE:
      out[[k for k in keys if k in ("mu", "nu")][0]] = np.asarray(leaf, np.float64)
  return out


def test_matches_a_numpy_lazy_adamw_on_rows_used_then_unused():
  """Step 2 uses rows step 1 did not and leaves out some it did: the sparse step's table and
  moments equal a NumPy lazy AdamW (decoupled decay, global-norm clipping, bias correction
  by the step count) fed the dense gradient of the same state, read off an SGD(1) step."""
  spec, _, student, teacher = _setup(loss="ranking")
  lr, wd, b1, b2, eps, clip = 1e-2, 0.1, 0.9, 0.999, 1e-8, 0.05
  tx = _optimizer(student, weight_decay=wd, clip_norm=clip, lr=lr)
  rng = np.random.default_rng(1)
  first = _same_vocabulary_batches(rng, 1, np.arange(3, 30))
  second = _same_vocabulary_batches(rng, 1, np.arange(20, 50))
  mesh = step_lib.make_mesh(jax.devices()[:2])
  sparse_spec = dataclasses.replace(spec, sparse_embeddings=True)
  state, frozen = step_lib.replicated_state(student, tx, jax.random.PRNGKey(0),
                                            {"teacher": teacher}, mesh)
  fn = step_lib.make_distill_step(sparse_spec, tx, mesh, donate_state=False)
  state, _ = fn(state, frozen, step_lib.shard_batch(first[0], mesh))
  before = jax.device_get(state)
  after, _ = fn(state, frozen, step_lib.shard_batch(second[0], mesh))
  after = jax.device_get(after)

  # The dense gradient at `before` (same step number, rng and batch): one SGD(lr=1) step.
  sgd = optax.sgd(1.0)
  probe = before.replace(opt_state=sgd.init(before.params))
  probe_fn = step_lib.make_distill_step(spec, sgd, mesh, donate_state=False)
  moved, _ = probe_fn(jax.device_put(probe), frozen, step_lib.shard_batch(second[0], mesh))
  grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                       jax.device_get(before.params), jax.device_get(moved.params))
  g_norm = np.sqrt(sum(np.sum(g ** 2) for g in jax.tree.leaves(grads)))
  g = _table(grads) * min(1.0, clip / g_norm)

  t = 2                                              # AdamW's step count after this update
  rate = float(step_lib.make_schedule(lr, 20, 2)(t - 1))
  rows = np.unique(second[0]["src_ids"])
  m, v = _adam_moments(before.opt_state)["mu"], _adam_moments(before.opt_state)["nu"]
  p = _table(before.params).astype(np.float64)
  m2, v2, p2 = m.copy(), v.copy(), p.copy()
  m2[rows] = b1 * m[rows] + (1 - b1) * g[rows]
  v2[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
  step = (m2[rows] / (1 - b1 ** t)) / (np.sqrt(v2[rows] / (1 - b2 ** t)) + eps)
  p2[rows] = p[rows] - rate * (step + wd * p[rows])
  got = _adam_moments(after.opt_state)
  np.testing.assert_allclose(got["mu"], m2, rtol=2e-4, atol=1e-9)
  np.testing.assert_allclose(got["nu"], v2, rtol=2e-4, atol=1e-12)
  np.testing.assert_allclose(_table(after.params), p2, rtol=1e-5, atol=1e-7)
  # Rows step 1 used and step 2 did not: bitwise as step 1 left them (dense AdamW moves them).
  idle = np.setdiff1d(np.arange(3, 30), rows)
  assert idle.size
  np.testing.assert_array_equal(_table(after.params)[idle], _table(before.params)[idle])
  np.testing.assert_array_equal(got["mu"][idle], m[idle])


@pytest.mark.slow
def test_eight_devices_match_one_with_ot():
  spec, _, student, teacher = _setup(loss="ot")
  spec = dataclasses.replace(spec, sparse_embeddings=True)
  tx = _optimizer(student, weight_decay=0.01)
  rng = np.random.default_rng(2)
  batches = [_batch(rng, 16, 12, 10) for _ in range(3)]
  s1, l1, _ = _run(step_lib.make_mesh(jax.devices()[:1]), spec, tx, student, teacher, batches)
  s8, l8, f8 = _run(step_lib.make_mesh(jax.devices()[:8]), spec, tx, student, teacher, batches)
  np.testing.assert_allclose(l1, l8, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, atol=5e-5)
  assert f8._cache_size() == 1


def test_the_step_reduces_and_updates_no_full_table():
  """Two devices: no all-reduce of a [vocab, hidden] array (the dense step has one)."""
  spec, _, student, teacher = _setup(loss="sentence")
  tx = _optimizer(student, weight_decay=0.01)
  mesh = step_lib.make_mesh(jax.devices()[:2])
  state, frozen_in = step_lib.replicated_state(student, tx, jax.random.PRNGKey(0),
                                               {"teacher": teacher}, mesh)
  b = step_lib.shard_batch(_batch(np.random.default_rng(3), 8, 12, 10), mesh)
  shape = "tensor<%dx%dxf32>" % _table(student).shape

  def reduced(s):
    text = step_lib.make_distill_step(s, tx, mesh).lower(state, frozen_in, b).as_text()
    types = re.findall(r'"stablehlo\.all_reduce".*?\}\) : \(([^)]*)\)', text, re.S)
    assert types
    return [t for t in types if shape in t]

  assert reduced(spec)
  assert not reduced(dataclasses.replace(spec, sparse_embeddings=True))


@pytest.mark.slow
def test_teacher_step_first_update_equals_dense():
  from optical_jax import encoder as enc  # pylint: disable=g-import-not-at-top
  cfg = enc.EncoderConfig(**ARCH)
  params = enc.init_params(cfg, jax.random.key(5))
  spec = step_lib.TeacherSpec(encoder=cfg, scoring="maxsim", temperature=0.1)
  tx = _optimizer(params, weight_decay=0.0)
  rng = np.random.default_rng(4)
  q, n = _batch(rng, 8, 6, 10), _batch(rng, 8, 10, 10)
  batch = {"q_ids": q["src_ids"], "q_mask": q["src_mask"], "p_ids": q["tgt_ids"],
           "p_mask": q["tgt_mask"], "n_ids": n["src_ids"][:, None],
           "n_mask": n["src_mask"][:, None]}
  mesh = step_lib.make_mesh(jax.devices()[:2])
  out = []
  for s in (spec, dataclasses.replace(spec, sparse_embeddings=True)):
    state, frozen = step_lib.replicated_state(params, tx, jax.random.PRNGKey(0), {}, mesh)
    state, m = step_lib.make_teacher_step(s, tx, mesh)(state, frozen,
                                                       step_lib.shard_batch(batch, mesh))
    out.append((float(m["loss"]), float(m["grad_norm"]), jax.device_get(state.params)))
  assert out[0][:2] == pytest.approx(out[1][:2], rel=1e-6)
  for a, b in zip(jax.tree.leaves(out[0][2]), jax.tree.leaves(out[1][2])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_config_refuses_a_frozen_sparse_table():
  c = config_lib.base_config()
  c.optim.sparse_embeddings = True
  c.optim.freeze = ("word_embeddings",)
  with pytest.raises(InputError, match="sparse_embeddings=True with optim.freeze"):
    config_lib.check(c)
  c.optim.freeze = ("layer_0",)
  config_lib.check(c)


@pytest.mark.slow   # three tiny training runs
def test_training_run_updates_only_the_rows_of_its_bitext(tmp_path, minilm_dir):
  """`optim.sparse_embeddings` end to end (tiny config): the exported table differs from
  the initial one (a run at lr 0) in the rows of tokens the bitext uses only; with dense
  AdamW the weight decay moves every row."""
  del minilm_dir
  from optical_jax import trainer  # pylint: disable=g-import-not-at-top
  from test_train import _params, tiny  # pylint: disable=g-import-not-at-top

  def table(name, **over):
    r = trainer.run(tiny(**{"train.steps": 3, **over}), str(tmp_path / name),
                    log_fn=lambda *_: None)
    return next(v for k, v in _params(r.workdir).items() if "word_embeddings" in k)

  init = table("init", **{"optim.lr": 0.0})
  sparse = table("sparse", **{"optim.sparse_embeddings": True})
  dense = table("dense")
  moved = lambda t: int(np.any(t != init, axis=1).sum())
  assert 0 < moved(sparse) < init.shape[0] // 10
  assert moved(dense) == init.shape[0]
