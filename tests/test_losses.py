"""Tests of optical_jax.losses: sentence, hard-alignment and OT distillation, contrastive loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from optical_jax import losses, ot
from optical_jax.errors import InputError

# ----------------------------------------------------------------------------- sentence level


def _sentence_case():
  # Pair 0: student mean of real tokens [1,0],[3,0] = [2,0]; teacher [0,2]:
  #   MSE = (4 + 4) / 2 = 4, cos = 0.  Pair 1: [1,1] vs [2,2]: MSE = 1, cos = 1.
  s = jnp.array([[[1., 0.], [3., 0.], [9., 9.]], [[1., 1.], [1., 1.], [5., -5.]]])
  s_mask = jnp.array([[1, 1, 0], [1, 1, 0]])
  t = jnp.array([[[0., 2.], [0., 2.]], [[2., 2.], [7., 7.]]])
  t_mask = jnp.array([[1, 1], [1, 0]])
  return s, s_mask, t, t_mask


def test_sentence_mse_and_cosine_hand_checked():
  s, sm, t, tm = _sentence_case()
  mse, cos = losses.sentence_loss(s, sm, t, tm, "mse")
  np.testing.assert_allclose(mse, 2.5, rtol=1e-6)
  np.testing.assert_allclose(cos, 0.5, rtol=1e-6)
  one_minus_cos, _ = losses.sentence_loss(s, sm, t, tm, "cosine")
  np.testing.assert_allclose(one_minus_cos, 0.5, rtol=1e-6)


def test_sentence_loss_skips_empty_pairs_with_finite_gradients():
  s, sm, t, tm = _sentence_case()
  sm = sm.at[1].set(0)
  for distance in losses.SENTENCE_DISTANCES:
    (value, _), g = jax.value_and_grad(
        lambda s: losses.sentence_loss(s, sm, t, tm, distance), has_aux=True)(s)
    np.testing.assert_allclose(value, 4.0 if distance == "mse" else 1.0, rtol=1e-6)
    assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[1] == 0)


def test_sentence_and_ranking_terms_pool_each_side_as_its_model_does():
  s, sm, t, tm = _sentence_case()
  # [CLS] pooling: the first tokens, s = [[1, 0], [1, 1]], t = [[0, 2], [2, 2]].
  cfg = losses.DistillConfig(loss="sentence", student_pooling="cls", teacher_pooling="cls")
  pooled = losses.pooled_embeddings(s, sm, t, tm, cfg)
  mse, cos = losses.sentence_loss(s, sm, t, tm, "mse", pooled)
  np.testing.assert_allclose(mse, ((1 + 4) / 2 + (1 + 1) / 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(cos, (0 + 1) / 2, rtol=1e-6)
  got, m = losses.batch_loss(s, t, {"src_mask": sm, "src_ids": sm, "tgt_mask": tm, "tgt_ids": tm}, cfg)
  np.testing.assert_allclose(got, mse, rtol=1e-6)
  np.testing.assert_allclose(m["sentence_cosine"], cos, rtol=1e-6)
  # Mean pooling on both sides is the default path (no pooled embeddings).
  assert losses.pooled_embeddings(s, sm, t, tm, losses.DistillConfig()) is None
  # BERT's pooler: dense + tanh on the first token, with the side's params.
  w = jnp.array([[0., 1.], [1., 0.]])
  pooler = {"kernel": w, "bias": jnp.zeros(2)}
  cfg = losses.DistillConfig(loss="ranking", student_pooling="pooler", teacher_pooling="mean")
  ps, pt = losses.pooled_embeddings(s, sm, t, tm, cfg, {"student": pooler})
  np.testing.assert_allclose(ps, np.tanh(np.asarray(s)[:, 0] @ np.asarray(w)), rtol=1e-6)
  np.testing.assert_allclose(pt, [[0, 2], [2, 2]], rtol=1e-6)
  with pytest.raises(ValueError, match="pooler params"):
    losses.pooled_embeddings(s, sm, t, tm, cfg)


# ----------------------------------------------------------------------------- hard alignment


def test_hard_alignment_tiny_case():
  # Cosine costs: C = [[0, 2], [1, 1]] (rows: student tokens [1,0], [0,1]; columns:
  # teacher tokens [1,0], [-1,0]); the student's third token is padding.
  x = jnp.array([[[1., 0.], [0., 1.], [np.nan, 3.]]])
  a = jnp.array([[0.75, 0.25, 0.0]])
  y = jnp.array([[[1., 0.], [-1., 0.]]])
  b = jnp.array([[0.5, 0.5]])
  forward = losses.hard_alignment_loss(x, a, y, b, "cosine")
  np.testing.assert_allclose(forward, 0.75 * 0 + 0.25 * 1, atol=1e-6)    # rows' minima
  both = losses.hard_alignment_loss(x, a, y, b, "cosine", symmetric=True)
  np.testing.assert_allclose(both, 0.5 * (0.25 + (0.5 * 0 + 0.5 * 1)), atol=1e-6)
  g = jax.grad(lambda x: losses.hard_alignment_loss(x, a, y, b, "sqeuclidean"))(x)
  # sqeuclidean: x0 -> y0 (cost 0), x1 -> either (cost 2); gradient only on real tokens.
  assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[0, 2] == 0)
  np.testing.assert_allclose(g[0, 0], [0.0, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------- dispatcher


def _tokens(seed=0, b=3, ls=5, lt=4, d=6):
  rng = np.random.default_rng(seed)
  s = jnp.asarray(rng.normal(size=(b, ls, d)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(b, lt, d)), jnp.float32)
  sm = jnp.asarray(np.arange(ls)[None, :] < np.array([[5], [2], [1]]), jnp.int32)
  tm = jnp.asarray(np.arange(lt)[None, :] < np.array([[4], [3], [2]]), jnp.int32)
  return s, sm, ot.token_weights(sm), t, tm, ot.token_weights(tm)


@functools.partial(jax.jit, static_argnames="cfg")
def _distill(s, sm, sw, t, tm, tw, cfg):
  def f(s, t):
    return losses.distillation_loss(s, sm, sw, t, tm, tw, cfg)
  (loss, metrics), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(s, t)
  return loss, metrics, grads


def test_distillation_loss_modes():
  s, sm, sw, t, tm, tw = _tokens()
  sent, cos = losses.sentence_loss(s, sm, t, tm, "cosine")
  hard = losses.hard_alignment_loss(s, sw, t, tw, "cosine")
  expected = {"sentence": sent, "hard": hard}
  for mode in ("sentence", "hard", "ot", "ot+sentence"):
    cfg = losses.DistillConfig(loss=mode, sentence_weight=0.5, sentence_distance="cosine")
    loss, metrics, (gs, gt) = _distill(s, sm, sw, t, tm, tw, cfg=cfg)
    if mode == "ot":
      expected["ot+sentence"] = loss + 0.5 * sent
    else:
      np.testing.assert_allclose(loss, expected[mode], rtol=1e-5, err_msg=mode)
    np.testing.assert_allclose(metrics["sentence_cosine"], cos, rtol=1e-5)
    assert np.isfinite(np.asarray(gs)).all() and np.any(np.asarray(gs) != 0)
    assert np.all(np.asarray(gt) == 0)  # the teacher is frozen
    has_ot = "ot" in mode
    assert ("converged_fraction" in metrics) == has_ot
    if has_ot:
      assert float(metrics["converged_fraction"]) == 1.0
      for key in ("iterations", "plan_entropy", "mean_cost", "marginal_error", "ot_loss"):
        assert np.isfinite(float(metrics[key])), key
    assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())


def test_distill_config_from_dict():
  cfg = losses.DistillConfig.from_dict(
      {"loss": "ot+sentence", "sentence_weight": 2, "ot": {"epsilon": 0.1, "grad": "implicit"}})
  assert cfg.sentence_weight == 2.0 and cfg.ot == ot.OTConfig(epsilon=0.1, grad="implicit")
  assert hash(cfg) == hash(losses.DistillConfig.from_dict(
      {"loss": "ot+sentence", "sentence_weight": 2.0, "ot": {"grad": "implicit", "epsilon": 0.1}}))
  for bad, words in [({"loss": "emd"}, "loss"), ({"sentence_weight": -1.0}, "sentence_weight"),
                     ({"sentence_distance": "l1"}, "sentence_distance"),
                     ({"hard_symmetric": "yes"}, "hard_symmetric"),
                     ({"ot": {"epsilon": -1}}, "epsilon"), ({"temperature": 1.0}, "unknown")]:
    with pytest.raises(InputError, match=words):
      losses.DistillConfig.from_dict(bad)


# ----------------------------------------------------------------------------- contrastive


def _np_ce(scores, positives, temperature):
  logits = scores / temperature
  mx = logits.max(axis=1, keepdims=True)
  lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
  return np.mean(lse - logits[np.arange(len(positives)), positives])


def _np_maxsim(q, qm, d, dm):
  out = np.zeros((q.shape[0], d.shape[0]))
  for i in range(q.shape[0]):
    for j in range(d.shape[0]):
      sim = q[i][qm[i] > 0] @ d[j][dm[j] > 0].T
      out[i, j] = sim.max(axis=1).sum()
  return out


def test_contrastive_dense_matches_numpy():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(3, 4))
  d = rng.normal(size=(5, 4))  # 3 positives, then 2 hard negatives
  loss, metrics = losses.contrastive_loss(jnp.asarray(q), jnp.asarray(d), temperature=0.5)
  np.testing.assert_allclose(loss, _np_ce(q @ d.T, np.arange(3), 0.5), rtol=1e-5)
  acc = np.mean(np.argmax(q @ d.T, axis=1) == np.arange(3))
  np.testing.assert_allclose(metrics["accuracy"], acc)
  pos = np.array([4, 0, 2])
  loss, _ = losses.contrastive_loss(jnp.asarray(q), jnp.asarray(d), jnp.asarray(pos))
  np.testing.assert_allclose(loss, _np_ce(q @ d.T, pos, 1.0), rtol=1e-5)


def test_contrastive_maxsim_and_validity_masks():
  rng = np.random.default_rng(1)
  q, d = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5, 4))
  qm = np.array([[1, 1, 0], [1, 1, 1]])
  dm = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
  args = (jnp.asarray(q), jnp.asarray(d))
  kw = dict(scoring="maxsim", q_mask=jnp.asarray(qm), d_mask=jnp.asarray(dm), temperature=2.0)
  loss, _ = losses.contrastive_loss(*args, **kw)
  scores = _np_maxsim(q, qm, d, dm)
  np.testing.assert_allclose(loss, _np_ce(scores, np.arange(2), 2.0), rtol=1e-5)
  # Document 3 is padding and query 1 is padding: both leave the loss.
  loss, _ = losses.contrastive_loss(*args, **kw, d_valid=jnp.array([1, 1, 1, 0], bool),
                                    q_valid=jnp.array([1, 0], bool))
  np.testing.assert_allclose(loss, _np_ce(scores[:1, :3], np.arange(1), 2.0), rtol=1e-5)


def test_contrastive_with_documents_gathered_across_devices():
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake CPU) devices")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)        # 2 queries per device
  docs = jnp.asarray(rng.normal(size=(8, 3, 4)), jnp.float32)   # per device: 2 positives, 1 neg

  def local(q, d):
    d = d.reshape(-1, d.shape[-1])
    d_all = jax.lax.all_gather(d, "data", tiled=True)
    positives = jax.lax.axis_index("data") * d.shape[0] + jnp.arange(q.shape[0])
    loss, _ = losses.contrastive_loss(q, d_all, positives, temperature=0.1)
    return jax.lax.pmean(loss, "data")

  got = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P(),
                              check_vma=False))(q, docs)
  flat = docs.reshape(-1, 4)
  positives = (np.arange(16) // 2) * 3 + np.arange(16) % 2
  want, _ = losses.contrastive_loss(q, flat, jnp.asarray(positives), temperature=0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
