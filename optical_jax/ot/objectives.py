"""The OT losses of a batch and their diagnostics: the transport cost <T, C> (`ot_loss`),
the debiased Sinkhorn divergence (`divergence_loss`) and barycentric token targets
(`barycentric_loss`)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from optical_jax import norms
from optical_jax.encoder import masked_mean
from optical_jax.ot.config import OTConfig
from optical_jax.ot.cost import _compute_dtype
from optical_jax.ot.solve import OTResult, _prepare, _solve_batch, pair_epsilon, sinkhorn_batch


def _entropy(plan: jnp.ndarray) -> jnp.ndarray:
  return -jnp.sum(jnp.where(plan > 0, plan * jnp.log(jnp.where(plan > 0, plan, 1.0)), 0.0),
                  axis=(1, 2))


def _objective(res: OTResult, cfg: OTConfig) -> jnp.ndarray:
  """Per-pair loss of a solve: <T, C> (balanced; its gradient per `cfg.grad`), plus the
  marginal penalties when unbalanced (the plan held fixed: gradient sum_ij T_ij dC_ij)."""
  linear = jnp.sum(res.plan * res.cost, axis=(1, 2))
  if cfg.balanced:
    return linear
  return linear + res.marginal_penalty


def _diagnostics(res: OTResult, x_weights, y_weights) -> Dict[str, jnp.ndarray]:
  plan = jax.lax.stop_gradient(res.plan)
  cost = jax.lax.stop_gradient(res.cost)
  support = (x_weights > 0)[:, :, None] & (y_weights > 0)[:, None, :]
  mean_cost = jnp.sum(jnp.where(support, cost, 0.0), axis=(1, 2)) / jnp.maximum(
      jnp.sum(support, axis=(1, 2)), 1)
  return {
      "converged_fraction": masked_mean(res.converged.astype(jnp.float32), res.valid),
      "iterations": masked_mean(res.n_iters.astype(jnp.float32), res.valid),
      "plan_entropy": masked_mean(_entropy(plan), res.valid),
      "mean_cost": masked_mean(mean_cost, res.valid),
      "transport_cost": masked_mean(jnp.sum(plan * cost, axis=(1, 2)), res.valid),
      "marginal_error": masked_mean(res.marginal_error, res.valid),
      "reg_ot_cost": masked_mean(res.reg_ot_cost, res.valid),
      "plan_mass": masked_mean(jnp.sum(plan, axis=(1, 2)), res.valid),
      "marginal_penalty": masked_mean(res.marginal_penalty, res.valid),
      "epsilon": masked_mean(res.epsilon, res.valid),
      "valid_fraction": jnp.mean(res.valid.astype(jnp.float32)),
  }


def ot_loss(x: jnp.ndarray, x_weights: jnp.ndarray, y: jnp.ndarray, y_weights: jnp.ndarray,
            cfg: OTConfig = OTConfig(), *, epsilon: Optional[jnp.ndarray] = None,
            x_center: Optional[jnp.ndarray] = None, y_center: Optional[jnp.ndarray] = None
            ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """OT distillation loss: mean over valid pairs of <T, C> between student and teacher tokens.

  Balanced OT (tau_a = tau_b = 1) gives the transport cost <T, C> (OPTICAL);
  unbalanced OT <T, C> + rho_a KL(T 1 | a) + rho_b KL(T^T 1 | b) of its plan (the
  transport cost alone would reward dropping mass), which tends to the balanced
  loss as tau -> 1 (see `OTConfig.tau_a`, also for its gradient).

  Args:
    x: student tokens [B, n, d] (plan rows); x_weights [B, n] (see token_weights).
    y: teacher tokens [B, m, d] (plan columns); y_weights [B, m].
    cfg: solver settings (static under jit).
    epsilon, x_center, y_center: see `sinkhorn_batch`.

  Returns:
    (loss, diagnostics), float32 scalars. Diagnostics, averaged over valid pairs:
      converged_fraction: fraction of pairs whose Sinkhorn converged (< 1 means
        the loss is that of an approximate plan: raise max_iterations/epsilon).
      iterations: mean Sinkhorn iterations.
      plan_entropy: mean -sum T log T (0 = deterministic; log(n m) = uniform).
      mean_cost: mean of C over the support pairs (a_i > 0, b_j > 0), i.e. the
        cost under the uniform product over the tokens that take part; compare
        with the loss to see how much the plan improves on no alignment.
      transport_cost: mean <T, C>.
      marginal_error: mean L1 error of both marginals of the plan.
      reg_ot_cost: mean of ott's regularised cost (balanced: <T, C> + eps KL(T | a b^T)).
      marginal_penalty: mean rho_a KL(T1|a) + rho_b KL(T^T1|b) (0 balanced).
      plan_mass: mean total mass of the plan (1 when balanced; the mass kept by
        an unbalanced plan).
      epsilon: mean epsilon used (after schedule and relative scaling).
      valid_fraction: fraction of pairs with tokens on both sides.
  """
  res = sinkhorn_batch(x, x_weights, y, y_weights, cfg, epsilon=epsilon, x_center=x_center,
                       y_center=y_center)
  loss = masked_mean(_objective(res, cfg), res.valid)
  diagnostics = _diagnostics(res, x_weights, y_weights)
  dtype = loss.dtype
  return loss, {k: v.astype(dtype) for k, v in diagnostics.items()}


def divergence_loss(x: jnp.ndarray, x_weights: jnp.ndarray, y: jnp.ndarray,
                    y_weights: jnp.ndarray, cfg: OTConfig = OTConfig(), *,
                    epsilon: Optional[jnp.ndarray] = None, x_center: Optional[jnp.ndarray] = None,
                    y_center: Optional[jnp.ndarray] = None
                    ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Debiased Sinkhorn divergence S = OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2, mean over pairs.

  OT here is the balanced regularised objective OT_eps (`reg_ot_cost`: <T, C> + eps
  KL(T | a b^T)), the three problems of a pair
  sharing the epsilon of the (x, y) problem (Feydy et al. 2019; ott-jax's
  `sinkhorn_divergence`, with equal masses, is the reference). For the cosine
  and squared-Euclidean costs (Gaussian kernels) S >= 0, with S = 0 exactly
  when the two weighted clouds coincide; collapsing the student's tokens onto
  one point is penalised by the -OT(x, x)/2 term; as epsilon grows S tends to
  an MMD rather than to the mean cost over all pairs.

  Gradients follow the envelope theorem on each term (plans held fixed; the
  student appears on both sides of OT(x, x)); `cfg.grad` must be 'envelope'
  and OT balanced (`losses.DistillConfig` checks both). The teacher's self term is a constant: it
  is solved for the value only.

  Returns:
    (loss, diagnostics): those of the (x, y) problem (see `ot_loss`) plus
    'ot_xy', 'ot_xx', 'ot_yy' (mean regularised costs) and
    'converged_fraction_self' (both self problems converged).
  """
  cost, support, a_s, b_s, valid = _prepare(x, x_weights, y, y_weights, cfg, x_center, y_center)
  eps = pair_epsilon(cost, support, cfg, epsilon)
  res_xy = _solve_batch(cost, support, a_s, b_s, valid, eps, cfg)
  cost_xx, support_xx, a_xx, _, _ = _prepare(x, x_weights, x, x_weights, cfg, x_center,
                                             x_center)
  res_xx = _solve_batch(cost_xx, support_xx, a_xx, a_xx, valid, eps, cfg, symmetric=True)
  y_const = jax.lax.stop_gradient(y)
  cost_yy, support_yy, b_yy, _, _ = _prepare(y_const, y_weights, y_const, y_weights, cfg,
                                             y_center, y_center)
  res_yy = _solve_batch(cost_yy, support_yy, b_yy, b_yy, valid, eps, cfg, symmetric=True)
  lin_xy = jnp.sum(res_xy.plan * res_xy.cost, axis=(1, 2))
  lin_xx = jnp.sum(res_xx.plan * res_xx.cost, axis=(1, 2))
  linear = lin_xy - 0.5 * lin_xx
  value = res_xy.reg_ot_cost - 0.5 * (res_xx.reg_ot_cost + res_yy.reg_ot_cost)
  per_pair = linear + jax.lax.stop_gradient(value - linear)
  loss = masked_mean(per_pair, valid)
  diagnostics = _diagnostics(res_xy, x_weights, y_weights)
  diagnostics.update(
      ot_xy=masked_mean(res_xy.reg_ot_cost, valid),
      ot_xx=masked_mean(res_xx.reg_ot_cost, valid),
      ot_yy=masked_mean(res_yy.reg_ot_cost, valid),
      converged_fraction_self=masked_mean(
          (res_xx.converged & res_yy.converged).astype(jnp.float32), valid))
  dtype = loss.dtype
  return loss, {k: v.astype(dtype) for k, v in diagnostics.items()}


BARYCENTRIC_DISTANCES = ("mse", "cosine")


def barycentric_targets(plan: jnp.ndarray, y: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """OT-mapped targets t_i = sum_j T_ij y_j / r_i with r_i = sum_j T_ij, and r.

  Args:
    plan: [B, n, m] transport plans (r = a for a balanced plan).
    y: [B, m, d] teacher tokens.

  Returns:
    (targets [B, n, d], row masses r [B, n]); a row without mass has target 0.
  """
  plan = plan.astype(_compute_dtype(plan, y))
  mass = jnp.sum(plan, axis=2)
  y = jnp.where(jnp.any(plan > 0, axis=1)[..., None], y.astype(plan.dtype), 0.0)
  moved = jnp.einsum("bnm,bmd->bnd", plan, y, precision=jax.lax.Precision.HIGHEST)
  safe = jnp.where(mass > 0, mass, 1.0)
  return jnp.where((mass > 0)[..., None], moved / safe[..., None], 0.0), mass


def barycentric_loss(x: jnp.ndarray, x_weights: jnp.ndarray, y: jnp.ndarray,
                     y_weights: jnp.ndarray, cfg: OTConfig = OTConfig(), *,
                     distance: str = "cosine", epsilon: Optional[jnp.ndarray] = None,
                     x_center: Optional[jnp.ndarray] = None,
                     y_center: Optional[jnp.ndarray] = None
                     ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Barycentric token targets: each student token regresses onto its OT-mapped teacher target.

  The plan T is solved as for `ot_loss` (on centred tokens if asked) and held
  fixed; the target of student token i is t_i = sum_j T_ij y_j / r_i (raw
  teacher tokens, `barycentric_targets`) and the pair's loss is
  sum_i (r_i / sum r) dist(x_i, t_i), with dist 'mse' (mean over dimensions of
  the squared difference) or 'cosine' (1 - cos). Under late-interaction (MaxSim)
  scoring this bounds each query token's score error, which a pooled loss does not.

  Returns:
    (loss, diagnostics of the plan as `ot_loss`).
  """
  if distance not in BARYCENTRIC_DISTANCES:
    raise ValueError(f"unknown barycentric distance {distance!r}; expected one of "
                     f"{BARYCENTRIC_DISTANCES}")
  res = sinkhorn_batch(x, x_weights, y, y_weights, cfg, epsilon=epsilon, x_center=x_center,
                       y_center=y_center)
  plan = jax.lax.stop_gradient(res.plan)
  targets, mass = barycentric_targets(plan, jax.lax.stop_gradient(y))
  dtype = targets.dtype
  keep = mass > 0
  xs = jnp.where(keep[..., None], x.astype(dtype), 0.0)
  if distance == "mse":
    per_token = jnp.mean(jnp.square(xs - targets), axis=-1)
  else:
    per_token = 1.0 - norms.cosine_rows(xs, targets)
  share = mass / jnp.maximum(jnp.sum(mass, axis=1, keepdims=True), 1e-30)
  per_pair = jnp.sum(jnp.where(keep, share * per_token, 0.0), axis=1)
  loss = masked_mean(per_pair, res.valid)
  diagnostics = _diagnostics(res, x_weights, y_weights)
  return loss, {k: v.astype(loss.dtype) for k, v in diagnostics.items()}
