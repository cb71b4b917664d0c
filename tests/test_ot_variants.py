"""OT variants of issue 14: Sinkhorn divergence, unbalanced OT, relative and annealed epsilon,
centred costs, barycentric targets, the ranking term, importance marginals, hidden layers."""


import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from ott.geometry import costs, pointcloud
from ott.tools import sinkhorn_divergence as ott_divergence

from optical_jax import encoder as enc
from optical_jax import losses, ot
from optical_jax.config import base_config
from optical_jax.errors import InputError

from test_ot import _batch  # pylint: disable=g-bad-import-order

TIGHT = dict(threshold=1e-6, max_iterations=3000)
SHAPE = (3, 6, 5, 3)  # (pairs, student tokens, teacher tokens, dim): shared compilations


def _jax(x, xm, y, ym, dtype=jnp.float32):
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  return jnp.asarray(x, dtype), a, jnp.asarray(y, dtype), b


_div = jax.jit(ot.divergence_loss, static_argnames="cfg")
_ot = jax.jit(ot.ot_loss, static_argnames="cfg")
_solve = jax.jit(ot.sinkhorn_batch, static_argnames="cfg")


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad, words", [
    ({"tau_a": 0.0}, "tau_a"), ({"tau_b": 1.5}, "tau_b"),
    ({"tau_b": 0.5, "grad": "implicit"}, "envelope"),
    ({"relative_to": "median"}, "relative_to"), ({"relative_epsilon": 1}, "relative_epsilon"),
    ({"epsilon_start": 0.5}, "anneal_steps"), ({"epsilon_start": -1.0}, "epsilon_start"),
    ({"center": "yes"}, "center"), ({"center_source": "corpus"}, "center_source"),
])
def test_ot_config_rejects_bad_variant_values(bad, words):
  with pytest.raises(InputError, match=words):
    ot.OTConfig.from_dict(bad)


def test_distill_config_variant_fields_and_base_config_schema():
  loss = base_config().loss.to_dict()
  loss.pop("temperature")
  assert losses.DistillConfig.from_dict(loss) == losses.DistillConfig()  # schema == defaults
  cfg = losses.DistillConfig.from_dict({"loss": "ot+ranking", "layers": [-1, -2],
                                        "ot": {"tau_b": 0.5}})
  assert cfg.layers == (-1, -2) and cfg.token_term == "ot" and hash(cfg)
  assert losses.DistillConfig(loss="ranking").token_term is None
  assert cfg.needs_hidden and not cfg.needs_cls_attention
  assert losses.DistillConfig(marginals="cls_attention").needs_cls_attention
  for bad, words in [({"loss": "divergence", "ot": {"grad": "implicit"}}, "envelope"),
                     ({"loss": "divergence+ranking", "ot": {"tau_b": 0.5}}, "balanced"),
                     ({"ranking_temperature": 0.0}, "ranking_temperature"),
                     ({"token_distance": "l1"}, "token_distance"),
                     ({"layers": "last"}, "layers"), ({"layer_combine": "max"}, "layer_combine"),
                     ({"marginals": "attention"}, "marginals")]:
    with pytest.raises(InputError, match=words):
      losses.DistillConfig.from_dict(bad)


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("cost, cost_fn", [("cosine", costs.Cosine()),
                                           ("sqeuclidean", costs.SqEuclidean())])
def test_divergence_matches_ott_sinkhorn_divergence(cost, cost_fn):
  x, xm, y, ym = _batch(0, *SHAPE, x_len=[6, 4, 2], y_len=[5, 2, 3], scale=0.5)
  cfg = ot.OTConfig(cost=cost, epsilon=0.1, **TIGHT)
  args = _jax(x, xm, y, ym)
  loss, diag = _div(*args, cfg=cfg)
  assert float(diag["converged_fraction"]) == 1.0
  assert float(diag["converged_fraction_self"]) == 1.0

  def reference(x, a, y, b):  # ott on the padded pair: zero weights take no part
    return ott_divergence.sinkhorn_divergence(
        pointcloud.PointCloud, x, y, a=a, b=b, cost_fn=cost_fn, epsilon=0.1,
        solve_kwargs=dict(threshold=1e-6, max_iterations=3000))[0]

  refs = jax.jit(jax.vmap(reference))(*args)
  np.testing.assert_allclose(float(loss), float(jnp.mean(refs)), rtol=1e-4, atol=1e-6)


@st.composite
def _clouds(draw):
  bsz, n, m, _ = SHAPE
  x_len = draw(st.lists(st.integers(1, n), min_size=bsz, max_size=bsz))
  y_len = draw(st.lists(st.integers(1, m), min_size=bsz, max_size=bsz))
  scale = 10.0 ** draw(st.floats(-1, 1))
  return x_len, y_len, scale, draw(st.integers(0, 2 ** 16))


DIV_CASES = [ot.OTConfig(epsilon=0.05, cost="cosine", **TIGHT),
             ot.OTConfig(epsilon=0.5, cost="sqeuclidean", **TIGHT)]


@pytest.mark.parametrize("cfg", DIV_CASES, ids=[c.cost for c in DIV_CASES])
@hypothesis.settings(max_examples=8, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(data=st.data())
def test_divergence_nonnegative_and_zero_for_identical_clouds(cfg, data):
  x_len, y_len, scale, seed = data.draw(_clouds())
  x, xm, y, ym = _batch(seed, *SHAPE, x_len=x_len, y_len=y_len, scale=scale)
  # Padding garbage must not matter.
  x = np.where(xm[..., None] > 0, x, np.nan)
  args = _jax(x, xm, y, ym)
  loss, _ = _div(*args, cfg=cfg)
  assert np.isfinite(float(loss)) and float(loss) >= -1e-5
  same, _ = _div(args[0], args[1], args[0], args[1], cfg=cfg)
  assert abs(float(same)) < 1e-5


def test_divergence_penalises_collapse_unlike_the_transport_cost():
  """Collapsing every student token onto the teacher's mean direction lowers <T, C>-style
  costs little but leaves a positive divergence; the divergence prefers the true cloud."""
  rng = np.random.default_rng(3)
  y = rng.normal(size=(1, 6, 4))
  ym = np.ones((1, 6), np.float32)
  collapsed = np.repeat(y.mean(axis=1, keepdims=True), 6, axis=1)
  cfg = ot.OTConfig(epsilon=0.5, cost="sqeuclidean", **TIGHT)
  d_true, _ = _div(*_jax(y, ym, y, ym), cfg=cfg)
  d_collapsed, _ = _div(*_jax(collapsed, ym, y, ym), cfg=cfg)
  assert float(d_collapsed) > float(d_true) + 0.1


# ----------------------------------------------------------------------------- unbalanced


def test_unbalanced_tends_to_balanced_as_tau_goes_to_one():
  args = _jax(*_batch(1, *SHAPE, x_len=[6, 3, 1], y_len=[4, 5, 2]))
  tight = dict(epsilon=0.1, threshold=1e-7, max_iterations=5000)
  ref = _solve(*args, cfg=ot.OTConfig(**tight))
  ref_plan = np.asarray(ref.plan)
  ref_loss = np.sum(ref_plan * np.asarray(ref.cost), axis=(1, 2))
  gaps = []
  for tau_a, tau_b in ((0.9, 0.9), (0.99, 0.99), (0.999, 0.999), (1.0, 0.9), (1.0, 0.999)):
    res = _solve(*args, cfg=ot.OTConfig(tau_a=tau_a, tau_b=tau_b, **tight))
    plan = np.asarray(res.plan)
    loss = np.sum(plan * np.asarray(res.cost), axis=(1, 2)) + np.asarray(res.marginal_penalty)
    assert np.isfinite(loss).all() and np.all(plan.sum((1, 2)) <= 1.0 + 1e-5)
    gaps.append(max(np.abs(plan - ref_plan).max(), np.abs(loss - ref_loss).max()))
  unb, semi = gaps[:3], gaps[3:]
  assert unb[0] > 3 * unb[1] > 9 * unb[2] and semi[0] > 3 * semi[1], gaps  # O(1 - tau)
  assert unb[-1] < 1e-2 and semi[-1] < 2e-3, gaps


def test_unbalanced_drops_mass_of_unmatched_tokens():
  """A teacher token far from every student token keeps less mass with tau_b < 1."""
  x = np.array([[[1.0, 0.0], [0.9, 0.1]]])
  y = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
  m = np.ones((1, 2), np.float32)
  cfg = ot.OTConfig(epsilon=0.05, tau_b=0.3, **TIGHT)
  plan = np.asarray(_solve(*_jax(x, m, y, m), cfg=cfg).plan)[0]
  assert plan[:, 1].sum() < 0.5 * plan[:, 0].sum()
  loss, diag = _ot(*_jax(x, m, y, m), cfg=cfg)
  np.testing.assert_allclose(float(loss), float(diag["transport_cost"] + diag["marginal_penalty"]),
                             rtol=1e-6)


# ----------------------------------------------------------------------------- epsilon


@pytest.mark.parametrize("relative_to", ot.RELATIVE_TO)
def test_relative_epsilon_makes_the_plan_invariant_to_cost_scale(relative_to):
  args = _jax(*_batch(2, *SHAPE, x_len=[6, 4, 1], y_len=[5, 3, 2]))
  plans = {}
  for relative in (True, False):
    for scale in (1.0, 7.5):
      cfg = ot.OTConfig(epsilon=0.2, relative_epsilon=relative, relative_to=relative_to,
                        scale_cost=scale, **TIGHT)
      res = _solve(*args, cfg=cfg)
      assert np.asarray(res.converged).all()
      plans[relative, scale] = np.asarray(res.plan)
  np.testing.assert_allclose(plans[True, 1.0], plans[True, 7.5], atol=1e-5)
  assert np.abs(plans[False, 1.0] - plans[False, 7.5]).max() > 1e-2


def test_relative_epsilon_is_a_fraction_of_the_cost_spread():
  cost = jnp.array([[[0.0, 2.0], [4.0, 9.0]], [[1.0, 1.0], [1.0, 1.0]]])
  support = jnp.array([[[True, True], [True, False]], [[True, True], [True, True]]])
  std = np.std([0.0, 2.0, 4.0])
  got = ot.pair_epsilon(cost, support, ot.OTConfig(epsilon=0.5, relative_epsilon=True))
  np.testing.assert_allclose(got, [0.5 * std, 0.5], rtol=1e-6)   # zero spread: absolute
  got = ot.pair_epsilon(cost, support, ot.OTConfig(epsilon=0.5, relative_epsilon=True,
                                                   relative_to="mean"), epsilon=0.25)
  np.testing.assert_allclose(got, [0.25 * 2.0, 0.25], rtol=1e-6)


def test_epsilon_schedule_is_geometric_and_traced():
  cfg = ot.OTConfig(epsilon=0.01, epsilon_start=1.0, anneal_steps=10)
  assert ot.scheduled_epsilon(ot.OTConfig(), 5) is None
  f = jax.jit(lambda s: ot.scheduled_epsilon(cfg, s))
  np.testing.assert_allclose([float(f(s)) for s in (0, 5, 10, 50)], [1.0, 0.1, 0.01, 0.01],
                             rtol=1e-5)
  assert f._cache_size() == 1
  args = _jax(*_batch(4, *SHAPE, x_len=[6, 4, 1], y_len=[5, 3, 2]))
  g = jax.jit(lambda e: ot.ot_loss(*args, ot.OTConfig(), epsilon=e))
  ents = [float(g(jnp.float32(e))[1]["plan_entropy"]) for e in (1.0, 0.1, 0.01)]
  assert ents[0] > ents[1] > ents[2] and g._cache_size() == 1


# ----------------------------------------------------------------------------- centring


def test_centering_subtracts_the_means_and_batch_mean_ignores_padding():
  x, xm, y, ym = _batch(5, *SHAPE, x_len=[6, 4, 1], y_len=[5, 3, 2])
  xa, a, ya, b = _jax(np.where(xm[..., None] > 0, x, 1e6), xm, y, ym)
  mx = ot.token_mean(xa, a)
  np.testing.assert_allclose(mx, x[xm > 0].mean(axis=0), rtol=1e-5)
  my = ot.token_mean(ya, b)
  cfg = ot.OTConfig(**TIGHT)
  res = _solve(xa, a, ya, b, cfg=cfg, x_center=mx, y_center=my)
  ref = _solve(xa - mx, a, ya - my, b, cfg=cfg)
  np.testing.assert_allclose(res.plan, ref.plan, atol=1e-6)


# ----------------------------------------------------------------------------- barycentric


def test_barycentric_targets_hand_computed():
  plan = jnp.array([[[0.25, 0.25, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]])
  y = jnp.array([[[1.0, 0.0], [0.0, 2.0], [7.0, 7.0]]])
  targets, mass = ot.barycentric_targets(plan, y)
  np.testing.assert_allclose(mass, [[0.5, 0.5, 0.0]])
  np.testing.assert_allclose(targets, [[[0.5, 1.0], [0.0, 2.0], [0.0, 0.0]]], atol=1e-7)


def test_barycentric_loss_hand_computed():
  # Cosine costs make the identity matching optimal; at small epsilon T = diag(1/2).
  x = jnp.array([[[2.0, 0.1], [0.0, 1.0], [np.nan, 5.0]]])
  y = jnp.array([[[1.0, 0.0], [0.1, 3.0]]])
  a = jnp.array([[0.5, 0.5, 0.0]])
  b = jnp.array([[0.5, 0.5]])
  cfg = ot.OTConfig(epsilon=1e-3, **TIGHT)
  xs, ys = np.asarray(x[0, :2]), np.asarray(y[0])
  cos = np.sum(xs * ys, 1) / np.linalg.norm(xs, axis=1) / np.linalg.norm(ys, axis=1)
  got, _ = ot.barycentric_loss(x, a, y, b, cfg, distance="cosine")
  np.testing.assert_allclose(float(got), np.mean(1 - cos), atol=1e-5)
  got, _ = ot.barycentric_loss(x, a, y, b, cfg, distance="mse")
  np.testing.assert_allclose(float(got), np.mean(np.mean((xs - ys) ** 2, axis=1)), rtol=1e-5)


# ----------------------------------------------------------------------------- gradients


def _fd(f, x, dirs, h=1e-5):
  return [(f(x + h * v) - f(x - h * v)) / (2 * h) for v in dirs]


@pytest.mark.slow
def test_variant_gradients_match_finite_differences():
  """Envelope gradients equal the derivative of the regularised objective (plans at
  optimum): for the divergence and for unbalanced OT (the objective ott minimises);
  with fixed centres the implicit gradient is that of <T*, C>; barycentric gradients
  hold the targets fixed; the ranking term is plain."""
  x, xm, y, ym = _batch(6, 2, 5, 4, 3, x_len=[5, 3], y_len=[4, 2])
  rng = np.random.default_rng(7)
  dirs = [rng.normal(size=x.shape) * xm[..., None] for _ in range(2)]
  tight = dict(threshold=1e-11, max_iterations=10000)
  with jax.enable_x64(True):
    a = ot.token_weights(jnp.asarray(xm)).astype(jnp.float64)
    b = ot.token_weights(jnp.asarray(ym)).astype(jnp.float64)
    yj = jnp.asarray(y)
    center = (jnp.asarray([0.3, -0.2, 0.1]), jnp.asarray([-0.1, 0.2, 0.4]))
    cases = {
        "divergence": (lambda x, c: ot.divergence_loss(x, a, yj, b, c), ot.OTConfig(
            epsilon=0.1, **tight), 0),
        "unbalanced": (lambda x, c: ot.ot_loss(x, a, yj, b, c), ot.OTConfig(
            epsilon=0.1, tau_a=0.8, tau_b=0.5, **tight), "objective"),
        "centred": (lambda x, c: ot.ot_loss(x, a, yj, b, c, x_center=center[0],
                                            y_center=center[1]),
                    ot.OTConfig(epsilon=0.1, grad="implicit", center=True, **tight), 0),
    }
    for name, (fn, cfg, key) in cases.items():
      value = jax.jit(jax.value_and_grad(lambda x: fn(x, cfg), has_aux=True))  # one compile
      (_, diag), g = value(jnp.asarray(x))
      assert float(diag["converged_fraction"]) == 1.0, name
      pick = lambda out: float(out[0])
      if key == "objective":  # what ott minimises: <T, C> - eps H(T) + marginal penalties
        pick = lambda out: float(out[1]["transport_cost"] + out[1]["marginal_penalty"] - 0.1 * (
            out[1]["plan_entropy"] + out[1]["plan_mass"]))
      want = _fd(lambda z: pick(value(jnp.asarray(z))[0]), x, dirs)
      got = [float(np.sum(np.asarray(g) * v)) for v in dirs]
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7, err_msg=name)
    # Barycentric: the gradient with the plan (targets) held fixed.
    cfg = ot.OTConfig(epsilon=0.1, **tight)
    plan = np.asarray(ot.sinkhorn_batch(jnp.asarray(x), a, yj, b, cfg).plan)
    targets, mass = (np.asarray(t) for t in ot.barycentric_targets(jnp.asarray(plan), yj))

    def fixed_target_loss(z):
      cos = np.sum(z * targets, -1) / np.maximum(np.linalg.norm(z, axis=-1), 1e-30) / (
          np.maximum(np.linalg.norm(targets, axis=-1), 1e-30))
      share = mass / mass.sum(1, keepdims=True)
      return float(np.mean(np.sum(np.where(mass > 0, share * (1 - cos), 0.0), axis=1)))

    g = jax.grad(lambda z: ot.barycentric_loss(z, a, yj, b, cfg)[0])(jnp.asarray(x))
    np.testing.assert_allclose([float(np.sum(np.asarray(g) * v)) for v in dirs],
                               _fd(fixed_target_loss, x, dirs), rtol=1e-5, atol=1e-8)
    # Ranking term.
    s, sm, t, tm = _ranking_case()
    f = lambda s: float(losses.ranking_loss(jnp.asarray(s), sm, t, tm, 0.3)[0])
    g = jax.grad(lambda s: losses.ranking_loss(s, sm, t, tm, 0.3)[0])(jnp.asarray(s))
    rdirs = [rng.normal(size=s.shape) for _ in range(2)]
    np.testing.assert_allclose([float(np.sum(np.asarray(g) * v)) for v in rdirs],
                               _fd(f, s, rdirs), rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- ranking


def _ranking_case(seed=8):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(4, 3, 5))
  t = jnp.asarray(rng.normal(size=(4, 2, 5)))
  sm = jnp.asarray([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  tm = jnp.asarray([[1, 1], [1, 0], [1, 1], [0, 0]])  # pair 3: no English tokens
  return s, sm, t, tm


def test_ranking_loss_matches_numpy():
  s, sm, t, tm = _ranking_case()
  loss, acc = losses.ranking_loss(jnp.asarray(s, jnp.float32), sm, t.astype(jnp.float32), tm, 0.5)

  def pooled(v, m):
    m = np.asarray(m, np.float64)[..., None]
    p = (np.asarray(v) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)

  ps, pt = pooled(s, sm)[:3], pooled(t, tm)[:3]   # valid pairs only

  def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))

  lp, lq = log_softmax(pt @ pt.T / 0.5), log_softmax(ps @ pt.T / 0.5)
  np.testing.assert_allclose(float(loss), np.mean(np.sum(np.exp(lp) * (lp - lq), 1)), rtol=1e-5)
  np.testing.assert_allclose(float(acc), np.mean(np.argmax(lq, 1) == np.arange(3)))
  same, _ = losses.ranking_loss(t, tm, t, tm, 0.5)
  assert abs(float(same)) < 1e-6


def test_maxsim_ranking_loss_matches_numpy():
  """`ranking_scoring='maxsim'`: similarities are the mean over the first sentence's real
  tokens of its best cosine with the other's real tokens (ColBERT MaxSim / length)."""
  s, sm, t, tm = _ranking_case()
  loss, acc = losses.ranking_loss(jnp.asarray(s, jnp.float32), sm, t.astype(jnp.float32), tm, 0.5,
                                  scoring="maxsim")
  unit = lambda v: np.asarray(v) / np.linalg.norm(np.asarray(v), axis=-1, keepdims=True)

  def sim(a, a_mask, b, b_mask):
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
      qi = unit(a[i])[np.asarray(a_mask[i]) > 0]
      for j in range(len(b)):
        dj = unit(b[j])[np.asarray(b_mask[j]) > 0]
        out[i, j] = (qi @ dj.T).max(1).mean()
    return out

  def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))

  s, sm, t, tm = (np.asarray(x)[:3] for x in (s, sm, t, tm))   # pair 3 has no English tokens
  lp = log_softmax(sim(t, tm, t, tm) / 0.5)
  lq = log_softmax(sim(s, sm, t, tm) / 0.5)
  np.testing.assert_allclose(float(loss), np.mean(np.sum(np.exp(lp) * (lp - lq), 1)), rtol=1e-5)
  np.testing.assert_allclose(float(acc), np.mean(np.argmax(lq, 1) == np.arange(3)))


def test_maxsim_ranking_equals_dense_for_one_token_sentences():
  rng = np.random.default_rng(3)
  s, t = (jnp.asarray(rng.normal(size=(5, 1, 4)), jnp.float32) for _ in range(2))
  m = jnp.ones((5, 1), jnp.int32)
  dense = losses.ranking_loss(s, m, t, m, 0.2)
  maxsim = losses.ranking_loss(s, m, t, m, 0.2, scoring="maxsim")
  np.testing.assert_allclose(np.asarray(maxsim), np.asarray(dense), rtol=1e-5)
  with pytest.raises(ValueError, match="ranking scoring"):
    losses.ranking_loss(s, m, t, m, 0.2, scoring="cosine")


# ----------------------------------------------------------------------------- marginals, layers


def test_importance_weights_and_fallback():
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  imp = jnp.array([[1.0, 3.0, 0.0, 9.0], [0.0, 0.0, 5.0, 5.0]])
  w = np.asarray(ot.token_weights(mask, importance=imp))
  np.testing.assert_allclose(w, [[0.25, 0.75, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])


ARCH = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
            max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0)


def test_encoder_apply_with_hidden_states_and_cls_attention():
  cfg = enc.EncoderConfig(**ARCH, head_dim=8)
  params = enc.init_params(cfg, jax.random.key(0))
  ids = jnp.array([[5, 6, 7, 8, 0], [9, 10, 0, 0, 0]])
  mask = (ids > 0).astype(jnp.int32)
  plain = enc.apply(params, ids, mask, cfg=cfg)
  same, extras = enc.apply_with(params, ids, mask, cfg=cfg)
  assert extras == {} and np.array_equal(plain, same)
  tokens, extras = enc.apply_with(params, ids, mask, cfg=cfg, hidden=True, cls_attention=True)
  np.testing.assert_allclose(tokens, plain, atol=1e-6)
  hidden = extras["hidden"]
  assert len(hidden) == 3 and hidden[-1].shape == (2, 5, 16)
  head = params["head"]["kernel"]
  np.testing.assert_allclose(np.asarray(hidden[-1]) @ np.asarray(head), plain, atol=1e-5)
  att = np.asarray(extras["cls_attention"])
  np.testing.assert_allclose(att.sum(1), 1.0, rtol=1e-5)
  assert np.all(att[np.asarray(mask) == 0] == 0.0)


def test_batch_loss_uses_layers_and_importance_marginals():
  rng = np.random.default_rng(9)
  b, ls, lt, d = 3, 5, 4, 6
  batch = {"src_ids": jnp.asarray(rng.integers(3, 50, (b, ls))),
           "src_mask": jnp.asarray(np.arange(ls)[None] < np.array([[5], [3], [1]]), jnp.int32),
           "tgt_ids": jnp.asarray(rng.integers(3, 50, (b, lt))),
           "tgt_mask": jnp.asarray(np.arange(lt)[None] < np.array([[4], [2], [3]]), jnp.int32)}
  s = jnp.asarray(rng.normal(size=(b, ls, d)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(b, lt, d)), jnp.float32)
  s_hid = tuple(jnp.asarray(rng.normal(size=(b, ls, d)), jnp.float32) for _ in range(3))
  t_hid = tuple(jnp.asarray(rng.normal(size=(b, lt, d)), jnp.float32) for _ in range(3))
  cfg = losses.DistillConfig(layers=(-1, 1), layer_combine="mean", marginals="norm")
  got, _ = losses.batch_loss(s, t, batch, cfg, student_aux={"hidden": s_hid},
                             teacher_aux={"hidden": t_hid})
  xs, yt = 0.5 * (s_hid[2] + s_hid[1]), 0.5 * (t_hid[2] + t_hid[1])
  a = ot.token_weights(batch["src_mask"], importance=jnp.linalg.norm(xs, axis=-1))
  bw = ot.token_weights(batch["tgt_mask"], importance=jnp.linalg.norm(yt, axis=-1))
  want, _ = ot.ot_loss(xs, a, yt, bw, cfg.ot)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  with pytest.raises(ValueError, match="cls_attention"):
    losses.batch_loss(s, t, batch, losses.DistillConfig(marginals="cls_attention"))


# ----------------------------------------------------------------------------- training runs

# The command-line names: `train.py --config configs/tiny.py --workdir W` plus these
# overrides (run here in-process through `trainer.run`, as train.py does).
TRAIN_VARIANTS = {
    "divergence": {"loss.loss": "divergence"},
    "barycentric": {"loss.loss": "barycentric"},
    "ranking": {"loss.loss": "ranking"},
    "ot+ranking": {"loss.loss": "ot+ranking"},
    "tau_b=0.5": {"loss.ot.tau_b": 0.5},
    "relative_epsilon": {"loss.ot.relative_epsilon": True},
    "center": {"loss.ot.center": True},
    "center-bitext": {"loss.ot.center": True, "loss.ot.center_source": "bitext"},
    "marginals=norm": {"loss.marginals": "norm"},
    "marginals=cls_attention": {"loss.marginals": "cls_attention"},
    "layers": {"loss.layers": (-1, -2), "loss.layer_combine": "sum"},
    "schedule": {"loss.ot.epsilon_start": 0.5, "loss.ot.anneal_steps": 4},
}


def _train_tiny(tmp_path, overrides, steps):
  import math  # pylint: disable=g-import-not-at-top
  from optical_jax import trainer  # pylint: disable=g-import-not-at-top
  from test_train import tiny  # pylint: disable=g-import-not-at-top,g-bad-import-order
  config = tiny(**overrides)
  config.train.steps = steps
  result = trainer.run(config, str(tmp_path / "w"), log_fn=lambda *a: None)
  assert result.step == steps
  assert result.last_metrics and all(math.isfinite(v) for v in result.last_metrics.values()), (
      result.last_metrics)
  return result


@pytest.mark.slow  # default-run budget (measured 10:51 idle with it)
def test_tiny_training_smoke_with_combined_variants(tmp_path):
  # Also code-switched (issue 15's `--config.data.code_switch.rate=0.25`): no extra compilation.
  from test_codeswitch import tiny_lexicon  # pylint: disable=g-import-not-at-top,g-bad-import-order
  from test_train import tiny  # pylint: disable=g-import-not-at-top,g-bad-import-order
  lexicon = tiny_lexicon(tiny(), tmp_path / "swa-en.txt")
  _train_tiny(tmp_path, {"loss.loss": "ot+ranking", "loss.ot.tau_b": 0.5,
                         "loss.ot.relative_epsilon": True, "loss.ot.center": True,
                         "loss.marginals": "norm", "data.code_switch.rate": 0.25,
                         "data.code_switch.dictionary": lexicon}, steps=2)


@pytest.mark.slow
def test_tiny_training_each_variant_finite(tmp_path):
  for i, (name, overrides) in enumerate(TRAIN_VARIANTS.items()):
    result = _train_tiny(tmp_path / str(i), overrides, steps=4)
    assert result.compilations <= 2, name   # buckets 16 and 32
