"""Sinkhorn over a padded batch: one ott-jax solve per pair under `vmap`, or one batched
loop (`batched_sinkhorn`, the same plans); epsilon schedules and relative epsilon; the
plans, duals and convergence of each pair (`OTResult`)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

from optical_jax.ot.config import OTConfig
from optical_jax.ot.cost import _compute_dtype, cost_matrix
from optical_jax.ot.implicit import _implicit_plan


class OTResult(NamedTuple):
  """Batched Sinkhorn solutions (a pytree); leading axis B = pairs.

  plan: [B, n, m] transport plans; exactly 0 on zero-weight rows/columns. Its
    gradient follows `OTConfig.grad` ('envelope': none).
  cost: [B, n, m] (scaled) cost matrices with gradient; 0 outside the support.
  converged: [B] bool, marginal error below threshold and finite plan.
  n_iters: [B] int32 Sinkhorn iterations run.
  marginal_error: [B] L1 error of both marginals of the plan, summed (for
    unbalanced plans: how far the plan's marginals moved from a and b).
  reg_ot_cost: [B] ott's regularised cost from the dual potentials (no gradient):
    <T, C> + eps KL(T | a b^T) when balanced.
  valid: [B] bool, both sides have positive total weight; invalid pairs were
    solved with uniform weights so that nothing is NaN, and must be ignored.
  epsilon: [B] the entropic regularisation each pair was solved with (after the
    schedule and `relative_epsilon`).
  marginal_penalty: [B] rho_a KL(T 1 | a) + rho_b KL(T^T 1 | b) (generalised KL,
    rho = eps tau / (1 - tau)); 0 when balanced (no gradient).
  """

  plan: jnp.ndarray
  cost: jnp.ndarray
  converged: jnp.ndarray
  n_iters: jnp.ndarray
  marginal_error: jnp.ndarray
  reg_ot_cost: jnp.ndarray
  valid: jnp.ndarray
  epsilon: jnp.ndarray
  marginal_penalty: jnp.ndarray


def _solver(cfg: OTConfig, unroll: bool, symmetric: bool = False) -> sinkhorn.Sinkhorn:
  # A symmetric problem (a divergence's self term: same cloud, same weights) uses the
  # averaged updates f <- (f + T(f)) / 2 that ott's `sinkhorn_divergence` uses (Feydy
  # et al. 2019, eq. 25): alternating updates converge slowly on it in float32.
  extra = dict(parallel_dual_updates=True,
               momentum=acceleration.Momentum(start=0, value=0.5)) if symmetric else {}
  return sinkhorn.Sinkhorn(
      **extra,
      lse_mode=cfg.lse_mode,
      threshold=cfg.threshold,
      inner_iterations=cfg.inner_iterations,
      min_iterations=cfg.max_iterations if cfg.fixed_iterations else cfg.min_iterations,
      max_iterations=cfg.max_iterations,
      implicit_diff=None if unroll else implicit_differentiation.ImplicitDiff(),
  )


def _solve_pair(cost: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray, epsilon: jnp.ndarray,
                cfg: OTConfig, unroll: bool, symmetric: bool = False
                ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """One ott Sinkhorn solve: (plan, converged, n_iters, reg_ot_cost).

  `epsilon` may be traced (ott's Geometry keeps it as a pytree leaf): the schedule
  and relative epsilon change no compiled program.
  """
  geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
  prob = linear_problem.LinearProblem(geom, a=a, b=b, tau_a=cfg.tau_a, tau_b=cfg.tau_b)
  out = _solver(cfg, unroll, symmetric)(prob)
  return out.matrix, out.converged, out.n_iters.astype(jnp.int32), out.reg_ot_cost


# Long by design: one algorithm (a single Sinkhorn loop over the batch with ott's updates,
# stopping rule and outputs per pair); splitting its loop body would scatter its state.
def batched_sinkhorn(cost: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray, epsilon: jnp.ndarray,
                     cfg: OTConfig) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Sinkhorn on a whole batch of problems in one loop: (plan, converged, n_iters, reg_ot_cost).

  The same algorithm as ott's `Sinkhorn` (alternating updates g then f, log domain
  with the same stabilisation, or scalings when `cfg.lse_mode` is false; KL-relaxed
  updates for tau < 1; ott's default initial potentials: 0 on the support, -inf off it) and its stopping rule per problem:
  blocks of `inner_iterations` updates, the error (L1 column-marginal error when
  balanced, ott's gradient-norm error when unbalanced) computed at the end of a
  block once `min_iterations` is reached, a problem stops when its error is below
  `threshold` or not finite, and everything stops at `max_iterations`. A stopped
  problem is frozen while the others go on, so each plan is the one a separate
  solve gives. Outputs match `_solve_pair` under `jax.vmap` (`converged` and
  `n_iters` by ott's conventions, `reg_ot_cost` ott's dual objective).

  Args:
    cost: [B, n, m] cost matrices (solved as constants: no gradient).
    a, b: [B, n] and [B, m] marginals (zeros allowed: those rows/columns get no mass).
    epsilon: [B] entropic regularisation of each problem.
    cfg: solver settings (tau_a, tau_b, lse_mode and the iteration settings).
  """
  cost = jax.lax.stop_gradient(cost)
  dtype = cost.dtype
  eps = jnp.asarray(epsilon, dtype)[:, None]  # [B, 1]: broadcasts over a potential
  e3 = eps[:, :, None]
  tau_a, tau_b = cfg.tau_a, cfg.tau_b
  inner = cfg.inner_iterations
  min_it = cfg.max_iterations if cfg.fixed_iterations else cfg.min_iterations
  max_it = cfg.max_iterations
  outer = -(-max_it // inner)

  def where_finite(x):
    return jnp.where(jnp.isfinite(x), x, 0.0)

  if cfg.lse_mode:
    log_a, log_b = jnp.log(a), jnp.log(b)

    def lse_kernel(f, g, axis):
      # eps * log sum exp((f_i + g_j - C_ij) / eps) minus the potential added for
      # stability (ott's `apply_lse_kernel`).
      z = eps * jax.nn.logsumexp((f[:, :, None] + g[:, None, :] - cost) / e3, axis=axis)
      return z - where_finite(g if axis == 1 else f)

    def update(f, g):
      g = tau_b * (eps * log_b - where_finite(lse_kernel(f, g, axis=1)))
      f = tau_a * (eps * log_a - where_finite(lse_kernel(f, g, axis=2)))
      return f, g

    def row_marginal(f, g):  # ott's `marginal_from_potentials`
      return jnp.exp((lse_kernel(f, g, axis=2) + f) / eps)

    def col_marginal(f, g):
      return jnp.exp((lse_kernel(f, g, axis=1) + g) / eps)

    def potentials(f, g):
      return f, g

    init = (jnp.where(a > 0, 0.0, -jnp.inf), jnp.where(b > 0, 0.0, -jnp.inf))
  else:
    kernel = jnp.exp(-cost / e3)

    def scale(marginal, applied):
      return marginal / jnp.where(applied > 0, applied, 1.0)

    def update(u, v):
      v = scale(b, jnp.einsum("bnm,bn->bm", kernel, u)) ** tau_b
      u = scale(a, jnp.einsum("bnm,bm->bn", kernel, v)) ** tau_a
      return u, v

    def row_marginal(u, v):
      return u * jnp.einsum("bnm,bm->bn", kernel, v)

    def col_marginal(u, v):
      return v * jnp.einsum("bnm,bn->bm", kernel, u)

    def potentials(u, v):
      return eps * jnp.log(u), eps * jnp.log(v)

    init = (jnp.where(a > 0, 1.0, 0.0), jnp.where(b > 0, 1.0, 0.0))

  def marginal_fit(c, h, tau):
    # ott's `grad_of_marginal_fit` on potentials h (the target itself when balanced).
    if tau == 1.0:
      return c
    rho = eps * tau / (1.0 - tau)
    return jnp.where(c > 0, c * jnp.exp(-h / rho), 0.0)

  def error(f, g):
    cols = col_marginal(f, g)
    if tau_a == 1.0 and tau_b == 1.0:  # the rows are exact after the f update
      return jnp.sum(jnp.abs(cols - b), axis=1)
    pf, pg = potentials(f, g)
    return (jnp.sum(jnp.abs(row_marginal(f, g) - marginal_fit(a, pf, tau_a)), axis=1)
            + jnp.sum(jnp.abs(cols - marginal_fit(b, pg, tau_b)), axis=1))

  def block(carry):
    f, g, it, active, blocks, last_err, saw_nan = carry
    f_new, g_new = jax.lax.fori_loop(0, inner, lambda _, fg: update(*fg), (f, g))
    f = jnp.where(active[:, None], f_new, f)
    g = jnp.where(active[:, None], g_new, g)
    it = it + inner
    last = it - 1
    checked = (last >= min_it) | (last == max_it - 1)
    err = jnp.where(checked, error(f, g), jnp.inf)
    last_err = jnp.where(active, err, last_err)
    saw_nan = saw_nan | (active & jnp.isnan(err))
    blocks = blocks + active.astype(jnp.int32)
    go_on = (it < min_it) | (jnp.isfinite(err) & (err >= cfg.threshold))
    active = active & go_on & (it < max_it)
    return f, g, it, active, blocks, last_err, saw_nan

  batch = cost.shape[0]
  carry = (*init, jnp.int32(0), jnp.ones((batch,), bool), jnp.zeros((batch,), jnp.int32),
           jnp.full((batch,), jnp.inf, dtype), jnp.zeros((batch,), bool))
  if min_it >= max_it:  # fixed iterations: a scan, as ott forces one
    carry = jax.lax.fori_loop(0, outer, lambda _, c: block(c), carry)
  else:
    carry = jax.lax.while_loop(lambda c: jnp.any(c[3]), block, carry)
  fu, gv, _, _, blocks, last_err, saw_nan = carry
  # ott: converged unless an error was NaN, and either the loop stopped early (its last
  # error slot never written) or the final error is below the threshold.
  converged = ~saw_nan & ((blocks < outer) | (last_err < cfg.threshold))
  f, g = potentials(fu, gv)
  plan = jnp.exp((f[:, :, None] + g[:, None, :] - cost) / e3)
  mass = jnp.sum(col_marginal(fu, gv), axis=1)
  reg_cost = _dual_objective(f, g, a, b, eps, mass, tau_a, tau_b)
  return plan, converged, blocks * inner, reg_cost


def _dual_objective(f, g, a, b, eps, mass, tau_a, tau_b) -> jnp.ndarray:
  """ott's `compute_kl_reg_cost` per problem: the regularised cost from the potentials."""
  def div(c, h, tau):
    keep = c > 0
    hc = h - eps * jnp.log(jnp.where(keep, c, 1.0))
    if tau == 1.0:
      term = c * hc
    else:
      rho = eps * tau / (1.0 - tau)
      term = -c * rho * (jnp.exp(-hc / rho) - 1.0)
    return jnp.sum(jnp.where(keep, term, 0.0), axis=1)

  return (div(a, f, tau_a) + div(b, g, tau_b)
          + eps[:, 0] * (jnp.sum(a, axis=1) * jnp.sum(b, axis=1) - mass))


def scheduled_epsilon(cfg: OTConfig, step: Any) -> Optional[jnp.ndarray]:
  """Epsilon at training step `step` (a traced int is fine), or None without a schedule.

  Geometric interpolation from `cfg.epsilon_start` (step 0) to `cfg.epsilon`
  (step >= `cfg.anneal_steps`). With `relative_epsilon` both are fractions of
  each pair's cost spread.
  """
  if not cfg.epsilon_start or step is None:
    return None
  t = jnp.clip(jnp.asarray(step, jnp.float32) / float(cfg.anneal_steps), 0.0, 1.0)
  return jnp.exp((1.0 - t) * math.log(cfg.epsilon_start) + t * math.log(cfg.epsilon))


def pair_epsilon(cost: jnp.ndarray, support: jnp.ndarray, cfg: OTConfig,
                 epsilon: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """The epsilon of each pair [B] (no gradient): `epsilon` (default `cfg.epsilon`), times
  the pair's cost std or mean over its support when `cfg.relative_epsilon`.

  Args:
    cost: [B, n, m] cost matrices; support [B, n, m] bool (pairs of real tokens).
    epsilon: a scalar overriding `cfg.epsilon` (e.g. `scheduled_epsilon`).
  """
  dtype = cost.dtype
  base = jnp.asarray(cfg.epsilon if epsilon is None else epsilon, dtype)
  base = jnp.broadcast_to(base, cost.shape[:1])
  if cfg.relative_epsilon:
    c = jax.lax.stop_gradient(cost)
    count = jnp.maximum(jnp.sum(support, axis=(1, 2)), 1).astype(dtype)
    mean = jnp.sum(jnp.where(support, c, 0.0), axis=(1, 2)) / count
    if cfg.relative_to == "mean":
      stat = mean
    else:
      var = jnp.sum(jnp.where(support, jnp.square(c - mean[:, None, None]), 0.0),
                    axis=(1, 2)) / count
      stat = jnp.sqrt(var)
    base = jnp.where(stat > 0, base * stat, base)
  return jax.lax.stop_gradient(base)



def _prepare(x, a, y, b, cfg: OTConfig, x_center, y_center):
  """Zeroed padding, centred tokens, renormalised weights, support and cost of a batch."""
  dtype = _compute_dtype(x, y)
  a = jax.lax.stop_gradient(a).astype(dtype)
  b = jax.lax.stop_gradient(b).astype(dtype)
  sa = a > 0
  sb = b > 0
  valid = jnp.any(sa, axis=-1) & jnp.any(sb, axis=-1)
  x = x.astype(dtype)
  y = y.astype(dtype)
  if x_center is not None:
    x = x - jax.lax.stop_gradient(jnp.asarray(x_center, dtype))
  if y_center is not None:
    y = y - jax.lax.stop_gradient(jnp.asarray(y_center, dtype))
  # Zero-weight tokens are zeroed before the cost, so that whatever padding
  # holds (even NaN) neither reaches the cost nor receives gradient.
  x = jnp.where(sa[..., None], x, 0.0)
  y = jnp.where(sb[..., None], y, 0.0)
  support = sa[:, :, None] & sb[:, None, :]
  cost = jnp.where(support, cost_matrix(x, y, cfg.cost) / cfg.scale_cost, 0.0)
  # Rows are renormalised in the compute dtype (balanced OT needs equal masses;
  # float32 weights sum to 1 only to ~1e-7), and pairs with an empty side are
  # solved as uniform problems and masked later.
  n, m = a.shape[-1], b.shape[-1]
  a_s = jnp.where(valid[:, None], a / jnp.sum(a, axis=-1, keepdims=True).clip(1e-30), 1.0 / n)
  b_s = jnp.where(valid[:, None], b / jnp.sum(b, axis=-1, keepdims=True).clip(1e-30), 1.0 / m)
  return cost, support, a_s, b_s, valid


def _solve_batch(cost, support, a_s, b_s, valid, eps, cfg: OTConfig,
                 symmetric: bool = False) -> OTResult:
  unroll = cfg.grad == "unroll"
  solve_cost = cost if unroll else jax.lax.stop_gradient(cost)
  if cfg.solver == "batched" and not symmetric:
    plan, converged, n_iters, reg_cost = batched_sinkhorn(solve_cost, a_s, b_s, eps, cfg)
  else:
    solve = jax.vmap(functools.partial(_solve_pair, cfg=cfg, unroll=unroll,
                                       symmetric=symmetric))
    plan, converged, n_iters, reg_cost = solve(solve_cost, a_s, b_s, eps)
  finite = jnp.all(jnp.isfinite(jax.lax.stop_gradient(plan)), axis=(1, 2))
  plan = jnp.where(support & jnp.isfinite(plan), plan, 0.0)
  if cfg.grad == "envelope":
    plan = jax.lax.stop_gradient(plan)
  elif cfg.grad == "implicit":
    plan = jax.vmap(_implicit_plan)(eps, cost, plan, a_s, b_s)
  fixed = jax.lax.stop_gradient(plan)
  marginal_error = (jnp.sum(jnp.abs(jnp.sum(fixed, axis=2) - a_s), axis=1)
                    + jnp.sum(jnp.abs(jnp.sum(fixed, axis=1) - b_s), axis=1))
  penalty = jnp.zeros_like(marginal_error)
  for tau, marginal, axis in ((cfg.tau_a, a_s, 2), (cfg.tau_b, b_s, 1)):
    if tau < 1.0:
      penalty = penalty + eps * (tau / (1.0 - tau)) * _generalized_kl(
          jnp.sum(fixed, axis=axis), marginal)
  return OTResult(
      plan=plan,
      cost=cost,
      converged=converged & finite,
      n_iters=n_iters,
      marginal_error=marginal_error,
      reg_ot_cost=jax.lax.stop_gradient(reg_cost),
      valid=valid,
      epsilon=eps,
      marginal_penalty=jax.lax.stop_gradient(penalty),
  )


def _generalized_kl(p: jnp.ndarray, q: jnp.ndarray) -> jnp.ndarray:
  """sum_i p_i log(p_i / q_i) - p_i + q_i over the last axis (0 log 0 = 0; q_i = 0 -> p_i = 0)."""
  pos = (p > 0) & (q > 0)
  ratio = jnp.where(pos, p / jnp.where(pos, q, 1.0), 1.0)
  return jnp.sum(jnp.where(pos, p * jnp.log(ratio), 0.0) - p + q, axis=-1)


def sinkhorn_batch(x: jnp.ndarray, a: jnp.ndarray, y: jnp.ndarray, b: jnp.ndarray,
                   cfg: OTConfig = OTConfig(), *, epsilon: Optional[jnp.ndarray] = None,
                   x_center: Optional[jnp.ndarray] = None,
                   y_center: Optional[jnp.ndarray] = None) -> OTResult:
  """Entropic OT between each pair of padded token sets, one ott solve per pair.

  Args:
    x: student tokens [B, n, d] (plan rows); any float dtype (solved in float32).
    a: student weights [B, n] >= 0 (see token_weights), each row renormalised
      to sum 1; treated as constants (no gradient).
    y: teacher tokens [B, m, d] (plan columns).
    b: teacher weights [B, m].
    cfg: solver settings (static).
    epsilon: optional traced scalar replacing `cfg.epsilon` (a schedule,
      `scheduled_epsilon`); still relative to the cost spread if
      `cfg.relative_epsilon`.
    x_center / y_center: optional mean vectors [d] subtracted from the tokens
      before the cost (`cfg.center`; no gradient).

  Returns:
    OTResult with per-pair plans, costs and convergence information.
  """
  cost, support, a_s, b_s, valid = _prepare(x, a, y, b, cfg, x_center, y_center)
  eps = pair_epsilon(cost, support, cfg, epsilon)
  return _solve_batch(cost, support, a_s, b_s, valid, eps, cfg)
