"""Tests of optical_jax.ot: ott-jax Sinkhorn against POT, gradients, padding, jit/vmap/shard_map."""

import jax

try:  # tests/conftest.py sets 8 devices too; this covers running the module alone.
  jax.config.update("jax_num_cpu_devices", 8)
except RuntimeError:  # backend already initialised: the shard_map test skips if < 8.
  pass

import functools  # noqa: E402

import hypothesis  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import ot as pot  # noqa: E402
import pytest  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from ott.geometry import geometry  # noqa: E402
from ott.problems.linear import linear_problem  # noqa: E402
from ott.solvers.linear import implicit_differentiation, sinkhorn  # noqa: E402

from optical_jax import ot  # noqa: E402
from optical_jax.errors import InputError  # noqa: E402

TIGHT = dict(threshold=1e-6, max_iterations=3000)


# ----------------------------------------------------------------------------- helpers


def _np_cost(x, y, cost):
  if cost == "cosine":
    xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    yn = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-6)
    return 1.0 - xn @ yn.T
  return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _pot_plan(a, b, c, eps):
  """POT log-domain Sinkhorn on the support of a, b; zero elsewhere (float64)."""
  sa, sb = a > 0, b > 0
  a, b = a / a.sum(), b / b.sum()  # float32 weights sum to 1 only to ~1e-8 in float64
  t = np.zeros_like(c)
  t[np.ix_(sa, sb)] = pot.sinkhorn(a[sa], b[sb], c[np.ix_(sa, sb)], reg=eps,
                                   method="sinkhorn_log", stopThr=1e-12, numItermax=5000,
                                   warn=False)
  return t


def _pot_losses(x, a, y, b, eps, cost):
  """Mean over pairs of <T, C> and of the regularised cost <T, C> + eps KL(T | a b^T)."""
  plain, reg = [], []
  for i in range(x.shape[0]):
    c = _np_cost(x[i], y[i], cost)
    t = _pot_plan(a[i], b[i], c, eps)
    ab = np.outer(a[i], b[i])
    pos = t > 0
    kl = np.sum(t[pos] * np.log(t[pos] / ab[pos]))
    plain.append(np.sum(t * c))
    reg.append(np.sum(t * c) + eps * kl)
  return float(np.mean(plain)), float(np.mean(reg))


def _batch(seed, b, n, m, d, x_len, y_len, scale=1.0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, n, d)) * scale
  y = rng.normal(size=(b, m, d)) * scale
  xm = (np.arange(n)[None, :] < np.asarray(x_len)[:, None]).astype(np.float32)
  ym = (np.arange(m)[None, :] < np.asarray(y_len)[:, None]).astype(np.float32)
  return x, xm, y, ym


SHAPE = (3, 6, 5, 3)  # (pairs, student tokens, teacher tokens, dim) shared to reuse compilations


def _std(seed, x_len, y_len, scale=1.0, dtype=jnp.float32):
  """A batch of SHAPE: (x, a, y, b) as jax arrays and the (x, y) masks as numpy."""
  x, xm, y, ym = _batch(seed, *SHAPE, x_len=x_len, y_len=y_len, scale=scale)
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  return (jnp.asarray(x, dtype), a, jnp.asarray(y, dtype), b), xm, ym


@functools.partial(jax.jit, static_argnames="cfg")
def _loss_and_grad(x, a, y, b, cfg):
  return jax.value_and_grad(lambda x: ot.ot_loss(x, a, y, b, cfg), has_aux=True)(x)


_loss = jax.jit(ot.ot_loss, static_argnames="cfg")
_batch_solve = jax.jit(ot.sinkhorn_batch, static_argnames="cfg")


# ----------------------------------------------------------------------------- config


def test_config_defaults_hashable_and_from_dict():
  cfg = ot.OTConfig()
  assert (cfg.cost, cfg.epsilon, cfg.grad, cfg.max_iterations, cfg.threshold) == (
      "cosine", 0.05, "envelope", 100, 1e-3)
  assert hash(cfg) == hash(ot.OTConfig())
  assert ot.OTConfig.from_dict(cfg.to_dict()) == cfg
  got = ot.OTConfig.from_dict({"epsilon": 1, "grad": "implicit", "fixed_iterations": True})
  assert got.epsilon == 1.0 and isinstance(got.epsilon, float) and got.grad == "implicit"


@pytest.mark.parametrize("bad, words", [
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": "0.1"}, "epsilon"),
    ({"cost": "l1"}, "cost"),
    ({"grad": "danskin"}, "grad"),
    ({"max_iterations": 25}, "multiple"),
    ({"max_iterations": 10.0}, "max_iterations"),
    ({"fixed_iterations": 1}, "fixed_iterations"),
    ({"min_iterations": 200}, "min_iterations"),
    ({"lse_mode": False, "grad": "unroll"}, "unroll"),
    ({"solver": "batched", "grad": "unroll"}, "unroll"),
    ({"solver": "pot"}, "solver"),
    ({"epsilom": 0.1}, "unknown"),
])
def test_config_rejects_bad_values(bad, words):
  with pytest.raises(InputError, match=words):
    ot.OTConfig.from_dict(bad)


def test_config_constructor_validates():
  with pytest.raises(InputError, match="threshold"):
    ot.OTConfig(threshold=-1.0)


# ----------------------------------------------------------------------------- weights and costs


def test_token_weights_uniform_special_and_fallback():
  mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
  ids = jnp.array([[101, 7, 8, 102, 0], [101, 102, 0, 0, 0], [101, 9, 102, 0, 0],
                   [0, 0, 0, 0, 0]])
  w = np.asarray(ot.token_weights(mask))
  np.testing.assert_allclose(w[0], [0.25] * 4 + [0.0])
  assert w[0, 4] == 0.0 and w[3].sum() == 0.0
  w = np.asarray(ot.token_weights(mask, ids, special_ids=(101, 102), include_special=False))
  np.testing.assert_allclose(w[0], [0, 0.5, 0.5, 0, 0])
  np.testing.assert_allclose(w[1], [0.5, 0.5, 0, 0, 0])  # only specials: falls back to real
  np.testing.assert_allclose(w[2], [0, 1, 0, 0, 0])
  np.testing.assert_allclose(w[3], 0.0)


def test_token_weights_idf():
  idf = ot.compute_idf([[1, 2, 2], [2, 3], [2]], vocab_size=5)
  df = np.array([0, 1, 3, 1, 0])
  np.testing.assert_allclose(idf, np.log(4.0 / (1.0 + df)) + 1.0, rtol=1e-6)
  mask = jnp.array([[1, 1, 1, 0]])
  ids = jnp.array([[1, 2, 3, 0]])
  w = np.asarray(ot.token_weights(mask, ids, idf=jnp.asarray(idf)))
  np.testing.assert_allclose(w[0, :3], idf[[1, 2, 3]] / idf[[1, 2, 3]].sum(), rtol=1e-6)
  assert w[0, 3] == 0.0
  with pytest.raises(InputError, match="outside the vocabulary"):
    ot.compute_idf([[1, 9]], vocab_size=5)


@pytest.mark.parametrize("cost", ot.COSTS)
def test_cost_matrix_matches_numpy(cost):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
  got = ot.cost_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), cost)
  np.testing.assert_allclose(got, _np_cost(x, y, cost), atol=1e-5)


def test_cosine_cost_zero_vector_has_finite_gradient():
  g = jax.grad(lambda x: ot.cost_matrix(x, jnp.ones((2, 3)), "cosine").sum())(jnp.zeros((2, 3)))
  assert np.isfinite(np.asarray(g)).all()


# ----------------------------------------------------------------------------- against POT


@pytest.mark.parametrize("cost, scale", [("cosine", 1.0), ("sqeuclidean", 0.3)])
def test_plan_and_cost_match_pot(cost, scale):
  x, xm, y, ym = _batch(0, *SHAPE, x_len=[6, 4, 1], y_len=[5, 2, 3], scale=scale)
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  cfg = ot.OTConfig(cost=cost, **TIGHT)
  res = _batch_solve(jnp.asarray(x, jnp.float32), a, jnp.asarray(y, jnp.float32), b, cfg=cfg)
  assert np.asarray(res.converged).all()
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  for i in range(3):
    c = _np_cost(x[i], y[i], cost) * (a64[i] > 0)[:, None] * (b64[i] > 0)[None, :]
    t = _pot_plan(a64[i], b64[i], c, cfg.epsilon)
    plan = np.asarray(res.plan[i])
    np.testing.assert_allclose(plan, t, atol=1e-4)
    assert np.all(plan[a64[i] == 0] == 0) and np.all(plan[:, b64[i] == 0] == 0)
    np.testing.assert_allclose(np.sum(plan * np.asarray(res.cost[i])), np.sum(t * c), atol=1e-4)


def test_transport_cost_approaches_emd_as_epsilon_shrinks():
  x, xm, y, ym = _batch(1, 1, 6, 5, 3, x_len=[5], y_len=[4])
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  a64, b64 = np.asarray(a[0], np.float64), np.asarray(b[0], np.float64)
  sa, sb = a64 > 0, b64 > 0
  c = _np_cost(x[0], y[0], "cosine")
  emd = pot.emd2(a64[sa] / a64.sum(), b64[sb] / b64.sum(), c[np.ix_(sa, sb)])
  gaps = []
  with jax.enable_x64(True):
    for eps in (0.1, 0.01, 0.002):
      cfg = ot.OTConfig(epsilon=eps, threshold=1e-9, max_iterations=20000)
      loss, diag = _loss(jnp.asarray(x), jnp.asarray(a, jnp.float64), jnp.asarray(y),
                         jnp.asarray(b, jnp.float64), cfg=cfg)
      assert float(diag["converged_fraction"]) == 1.0
      gaps.append(float(loss) - emd)
  assert all(g > -1e-9 for g in gaps), gaps
  assert all(g1 > g2 for g1, g2 in zip(gaps, gaps[1:])), gaps
  assert gaps[-1] < 1e-3, gaps


# ----------------------------------------------------------------------------- gradients


def test_gradients_match_finite_differences():
  """implicit/unroll give d<T*,C>/dx; envelope gives d(regularised OT cost)/dx, not d<T*,C>/dx."""
  eps = 0.1
  x, xm, y, ym = _batch(2, 2, 5, 4, 3, x_len=[5, 3], y_len=[4, 2])
  a = np.asarray(ot.token_weights(jnp.asarray(xm)), np.float64)
  b = np.asarray(ot.token_weights(jnp.asarray(ym)), np.float64)
  rng = np.random.default_rng(3)
  dirs = [rng.normal(size=x.shape) * xm[..., None] for _ in range(2)]
  h = 1e-5
  fd_plain, fd_reg = [], []
  for v in dirs:
    (p1, r1), (p0, r0) = (_pot_losses(x + s * h * v, a, y, b, eps, "cosine") for s in (1, -1))
    fd_plain.append((p1 - p0) / (2 * h))
    fd_reg.append((r1 - r0) / (2 * h))
  with jax.enable_x64(True):
    for grad in ot.GRAD_MODES:
      cfg = ot.OTConfig(epsilon=eps, grad=grad, threshold=1e-11, max_iterations=5000)
      (_, diag), g = _loss_and_grad(jnp.asarray(x), jnp.asarray(a), jnp.asarray(y),
                                    jnp.asarray(b), cfg=cfg)
      assert float(diag["converged_fraction"]) == 1.0
      g = np.asarray(g)
      assert g.dtype == np.float64 and np.all(g[xm == 0] == 0.0)
      got = [float(np.sum(g * v)) for v in dirs]
      want = fd_reg if grad == "envelope" else fd_plain
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8, err_msg=grad)
      if grad == "envelope":  # the envelope gradient is not that of <T*, C>
        assert max(abs(u - w) for u, w in zip(got, fd_plain)) > 1e-3


@pytest.mark.slow
def test_implicit_matches_ott_implicit_diff_without_padding():
  """ott's own ImplicitDiff (lineax) works here only eagerly: under jit it raises a
  non-finite linear-solve error on this unpadded problem (ott 0.6.0)."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(1, 5, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(1, 4, 3)), jnp.float32)
  a, b = jnp.full((1, 5), 0.2), jnp.full((1, 4), 0.25)
  cfg = ot.OTConfig(grad="implicit", **TIGHT)
  _, ours = _loss_and_grad(x, a, y, b, cfg=cfg)

  def ott_loss(x):
    c = ot.cost_matrix(x[0], y[0], "cosine")
    prob = linear_problem.LinearProblem(geometry.Geometry(c, epsilon=cfg.epsilon), a=a[0], b=b[0])
    out = sinkhorn.Sinkhorn(threshold=1e-6, max_iterations=3000,
                            implicit_diff=implicit_differentiation.ImplicitDiff())(prob)
    return jnp.sum(out.matrix * c)

  theirs = jax.grad(ott_loss)(x)
  np.testing.assert_allclose(ours, theirs, atol=2e-5)


# ----------------------------------------------------------------------------- properties

# One compiled program per case (OTConfig and padded shape are static); hypothesis
# varies what is data: real lengths (down to one token), scale, values, padding garbage.
PROPERTY_CASES = [
    ((3, 6, 5, 3), ot.OTConfig(epsilon=1e-3, grad="envelope", cost="cosine")),
    ((2, 3, 7, 2), ot.OTConfig(epsilon=1e-3, grad="implicit", cost="sqeuclidean")),
    ((3, 5, 4, 3), ot.OTConfig(epsilon=1e-3, grad="unroll", cost="cosine")),
]


@st.composite
def _data(draw, shape):
  bsz, n, m, _ = shape
  x_len = draw(st.lists(st.integers(1, n), min_size=bsz, max_size=bsz))
  y_len = draw(st.lists(st.integers(1, m), min_size=bsz, max_size=bsz))
  scale = 10.0 ** draw(st.floats(-3, 2))
  seed = draw(st.integers(0, 2 ** 16))
  return x_len, y_len, scale, seed


@pytest.mark.parametrize("shape, cfg", PROPERTY_CASES, ids=[c.grad for _, c in PROPERTY_CASES])
@hypothesis.settings(max_examples=10, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(data=st.data())
def test_loss_and_gradients_always_finite(shape, cfg, data):
  x_len, y_len, scale, seed = data.draw(_data(shape))
  x, xm, y, ym = _batch(seed, *shape, x_len=x_len, y_len=y_len, scale=scale)
  # Garbage in the padding must not leak into the loss, the plan or the gradients.
  x = np.where(xm[..., None] > 0, x, np.nan).astype(np.float32)
  y = np.where(ym[..., None] > 0, y, 1e30).astype(np.float32)
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  (loss, diag), g = _loss_and_grad(jnp.asarray(x), a, jnp.asarray(y), b, cfg=cfg)
  g = np.asarray(g)
  assert np.isfinite(float(loss)) and float(loss) >= 0.0
  assert np.isfinite(g).all() and np.all(g[xm == 0] == 0.0)
  assert all(np.isfinite(float(v)) for v in diag.values()), diag
  assert 0.0 <= float(diag["converged_fraction"]) <= 1.0


def test_padding_gets_exactly_zero_mass():
  (x, a, y, b), xm, ym = _std(10, x_len=[2, 6, 1], y_len=[5, 1, 3])
  x = jnp.where(jnp.asarray(xm)[..., None] > 0, x, jnp.nan)
  res = _batch_solve(x, a, y, b, cfg=ot.OTConfig(**TIGHT))
  plan = np.asarray(res.plan)
  assert np.isfinite(plan).all() and np.asarray(res.converged).all()
  assert np.all(plan[xm == 0] == 0.0) and np.all(plan.transpose(0, 2, 1)[ym == 0] == 0.0)
  np.testing.assert_allclose(plan.sum(2), np.asarray(a), atol=1e-6)
  np.testing.assert_allclose(plan.sum(1), np.asarray(b), atol=1e-6)


def test_non_convergence_is_reported():
  args, _, _ = _std(5, x_len=[6, 5, 4], y_len=[5, 4, 3])
  cfg = ot.OTConfig(epsilon=1e-3, max_iterations=2, inner_iterations=1)
  _, diag = _loss(*args, cfg=cfg)
  assert float(diag["converged_fraction"]) < 1.0 and float(diag["iterations"]) == 2.0
  assert float(diag["marginal_error"]) > 1e-3
  _, diag = _loss(*args, cfg=ot.OTConfig(fixed_iterations=True, max_iterations=30))
  assert float(diag["iterations"]) == 30.0
  _, diag = _loss(*args, cfg=ot.OTConfig())
  assert float(diag["converged_fraction"]) == 1.0 and float(diag["iterations"]) < 100


def test_empty_pairs_are_excluded():
  (x, a, y, b), _, _ = _std(6, x_len=[4, 0, 2], y_len=[3, 2, 0])
  loss, diag = _loss(x, a, y, b, cfg=ot.OTConfig())
  first = np.zeros(3, int)
  alone, _ = _loss(x[first], a[first], y[first], b[first], cfg=ot.OTConfig())
  np.testing.assert_allclose(loss, alone, rtol=1e-6)
  np.testing.assert_allclose(diag["valid_fraction"], 1.0 / 3.0)


# ----------------------------------------------------------------------------- transformations


def test_vmap_over_groups_matches_loop():
  groups = [_std(7 + i, x_len=[6, 3, 1], y_len=[2, 5, 4])[0] for i in range(2)]
  stacked = [jnp.stack(t) for t in zip(*groups)]
  cfg = ot.OTConfig()
  vmapped, _ = jax.jit(jax.vmap(lambda *t: ot.ot_loss(*t, cfg)))(*stacked)
  looped = [_loss(*g, cfg=cfg)[0] for g in groups]
  np.testing.assert_allclose(vmapped, looped, rtol=1e-6)


def test_bfloat16_inputs_are_solved_in_float32():
  (xb, a, yb, b), _, _ = _std(8, x_len=[6, 3, 2], y_len=[5, 2, 4], dtype=jnp.bfloat16)
  cfg = ot.OTConfig()
  (loss, diag), g = _loss_and_grad(xb, a, yb, b, cfg=cfg)
  assert loss.dtype == jnp.float32 and g.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(g, np.float32)).all()
  ref, _ = _loss(xb.astype(jnp.float32), a, yb.astype(jnp.float32), b, cfg=cfg)
  assert float(loss) == float(ref)


BATCHED_CASES = [
    dict(),
    dict(epsilon=0.01, max_iterations=500),
    dict(tau_b=0.5),
    dict(tau_a=0.7, tau_b=0.5),
    dict(lse_mode=False),
    dict(lse_mode=False, tau_b=0.6),
    dict(fixed_iterations=True),
    dict(min_iterations=20),
    dict(threshold=1e-6, max_iterations=50),  # some pairs stop at the cap unconverged
    dict(relative_epsilon=True),
]


@pytest.mark.parametrize("kw", BATCHED_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_batched_solver_matches_vmapped_ott(kw):
  # Ragged lengths, padding on both sides and one pair with an empty student side.
  rng = np.random.default_rng(11)
  x, y = rng.normal(size=(6, 7, 4)), rng.normal(size=(6, 9, 4))
  xm = (np.arange(7)[None] < np.array([7, 5, 1, 3, 0, 6])[:, None]).astype(np.float32)
  ym = (np.arange(9)[None] < np.array([9, 2, 6, 9, 4, 1])[:, None]).astype(np.float32)
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  ref = _batch_solve(x, a, y, b, cfg=ot.OTConfig(**kw))
  got = _batch_solve(x, a, y, b, cfg=ot.OTConfig(solver="batched", **kw))
  np.testing.assert_allclose(got.plan, ref.plan, atol=1e-5)  # the bound; float32
  np.testing.assert_array_equal(got.n_iters, ref.n_iters)
  np.testing.assert_array_equal(got.converged, ref.converged)
  valid = np.asarray(ref.valid)
  np.testing.assert_allclose(np.asarray(got.reg_ot_cost)[valid], np.asarray(ref.reg_ot_cost)[valid],
                             atol=1e-5)
  if "threshold" in kw:  # the case is meant to mix converged and capped pairs
    assert 0 < int(np.sum(np.asarray(ref.converged) & valid)) < int(valid.sum())


@pytest.mark.parametrize("grad", ["envelope", "implicit"])
def test_batched_solver_gradients_match_ott(grad):
  (x, a, y, b), _, _ = _std(12, x_len=[6, 4, 2], y_len=[3, 5, 5])
  (l1, _), g1 = _loss_and_grad(x, a, y, b, cfg=ot.OTConfig(grad=grad))
  (l2, _), g2 = _loss_and_grad(x, a, y, b, cfg=ot.OTConfig(grad=grad, solver="batched"))
  np.testing.assert_allclose(l2, l1, rtol=1e-6)
  np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("solver", ot.SOLVERS)
def test_shard_map_matches_single_device(solver):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake CPU) devices: set jax_num_cpu_devices before JAX initialises")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  n_pairs = 8 * SHAPE[0]
  lens = np.arange(n_pairs)
  x, xm, y, ym = _batch(9, n_pairs, *SHAPE[1:], x_len=lens % 6 + 1, y_len=lens % 5 + 1)
  a, b = ot.token_weights(jnp.asarray(xm)), ot.token_weights(jnp.asarray(ym))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  cfg = ot.OTConfig(solver=solver)

  def local(x, a, y, b):  # every shard holds SHAPE[0] pairs, so pmean = global mean
    (loss, diag), g = jax.value_and_grad(lambda x: ot.ot_loss(x, a, y, b, cfg), has_aux=True)(x)
    return jax.lax.pmean(loss, "data"), jax.lax.pmean(diag, "data"), g / 8.0

  sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"),
                                  out_specs=(P(), P(), P("data")), check_vma=False))
  loss, diag, g = sharded(x, a, y, b)
  (ref, ref_diag), ref_g = _loss_and_grad(x, a, y, b, cfg=cfg)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-7)
  for key in ("converged_fraction", "iterations", "plan_entropy", "mean_cost"):
    np.testing.assert_allclose(diag[key], ref_diag[key], rtol=1e-5, err_msg=key)
