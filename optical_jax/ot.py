"""Entropic optimal transport between token sets: the OPTICAL token-level distillation loss.

A sentence pair is two padded token sets: student tokens x [n, d] (rows of the
plan) and teacher tokens y [m, d] (columns). Each set carries marginal weights
(`token_weights`: uniform over real tokens, padding weight exactly 0). The
Sinkhorn solver of ott-jax finds the entropic plan T for the cost matrix C and
the loss of the pair is the transport cost <T, C> = sum_ij T_ij C_ij; `ot_loss`
averages it over a padded batch (one solve per pair under `jax.vmap`).

Gradient modes (`OTConfig.grad`):
  * 'envelope': the plan is held fixed, loss = sum(stop_gradient(T) * C). By
    Danskin's (envelope) theorem this is the exact gradient of the *regularised*
    cost OT_eps(C) = min_T <T, C> + eps KL(T | a b^T) at a converged plan, not
    the gradient of <T*(C), C> (which also moves T). Cheapest; default.
  * 'implicit': the gradient of <T*(C), C> through the optimal plan, by the
    implicit function theorem on the Sinkhorn optimality conditions. ott's own
    `ImplicitDiff` returns NaN gradients as soon as a marginal has a zero
    entry (its linear system divides by the zero marginals of padded tokens),
    so the same vector-Jacobian product is computed here restricted to the
    support of the marginals (Schur complement + pseudo-inverse); on problems
    without padding it agrees with ott's.
  * 'unroll': backpropagation through the Sinkhorn iterations of ott
    (`implicit_diff=None`); costs memory proportional to the iterations run.

Choosing epsilon and the cost (as the training logs of AfriQA swa runs show them):
  * epsilon only means something relative to the spread of the costs. MiniLM's token
    cosines spread widely (mean cost ~0.7), so 0.05 gives a peaked plan; e5's tokens
    are anisotropic (all pairwise cosines ~0.85, mean cost ~0.16), so at 0.05 the plan
    is the uniform product a b^T (entropy log(nm)) and the loss degenerates to the
    mean cost over all token pairs, with no alignment at all. Watch `plan_entropy`
    against `mean_cost` and the loss; e5 needs epsilon ~0.005 (more iterations).
  * With uniform marginals over the tokens that mean pooling averages (special tokens
    included) and the 'sqeuclidean' cost, Jensen's inequality gives
    ||mean(x) - mean(y)||^2 = ||sum_ij T_ij (x_i - y_j)||^2 <= <T, C> for any plan T
    with those marginals: the OT loss upper-bounds the sentence-level MSE of the
    pooled embeddings (times the dimension). Raw squared distances are large
    (~11 for e5, ~110 for MiniLM), so set `scale_cost` near the mean cost.

Everything is computed in float32 (float64 inputs stay float64), so bfloat16
activations are accepted. The functions are pure and work under `jax.jit`,
`jax.vmap` and `jax.shard_map(..., check_vma=False)` (ott 0.6.0 fails with
`check_vma=True`). Tokens with zero weight get exactly zero plan mass and zero
gradient; a pair in which either side has no weight at all is excluded from the
batch averages (`OTResult.valid`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import acceleration, implicit_differentiation, sinkhorn

from optical_jax import norms
from optical_jax.encoder import masked_mean
from optical_jax.errors import InputError, build, field_problems

COSTS = ("cosine", "sqeuclidean")
GRAD_MODES = ("envelope", "implicit", "unroll")
SOLVERS = ("ott", "batched")
RELATIVE_TO = ("std", "mean")
CENTER_SOURCES = ("batch", "bitext")


@dataclasses.dataclass(frozen=True)
class OTConfig:
  """Settings of the entropic OT loss; frozen and hashable (a jit-static argument).

  Attributes:
    cost: 'cosine' (1 - cosine similarity, in [0, 2]) or 'sqeuclidean'
      (||x - y||^2). Cosine is the default: encoder token vectors are compared
      by angle in retrieval (ColBERT MaxSim, cosine-normalised DPR), and its
      bounded range makes a fixed epsilon meaningful.
    epsilon: entropic regularisation, absolute (always set on the geometry;
      ott's default epsilon relative to the cost's spread is never used, so the
      loss does not change meaning from batch to batch). 0.05 is 2.5% of the
      cosine cost range: plans are close to sparse, yet Sinkhorn converges in
      tens of iterations in float32.
    max_iterations: upper bound on Sinkhorn iterations (a multiple of
      inner_iterations). 100 suffices at epsilon=0.05 for sentence-length
      token sets; non-convergence is reported, never hidden.
    min_iterations: iterations run before convergence is checked.
    inner_iterations: iterations between two convergence checks (ott's 10).
    threshold: convergence tolerance on the L1 error of the column marginal
      (ott's default 1e-3; marginals sum to 1).
    fixed_iterations: run exactly max_iterations (a `lax.scan`, no early
      stop): uniform cost across devices and reproducible timings.
    grad: 'envelope' | 'implicit' | 'unroll' (see the module docstring).
    lse_mode: log-domain Sinkhorn (stable for small epsilon). The kernel mode
      (False) underflows once cost/epsilon exceeds ~80 in float32 (the plan
      is then wrong and reported as not converged) and cannot be unrolled.
    scale_cost: positive number dividing the cost matrix before solving; the
      loss is reported on the scaled cost, and epsilon is relative to it.
    relative_epsilon: if true, `epsilon` (and `epsilon_start`) is a fraction of
      each problem's cost spread (`relative_to` over the pair's support, no
      gradient): the plan no longer changes when the cost is rescaled, so its
      sharpness does not depend on the backbone (e5's costs ~0.16 +- 0.03,
      MiniLM's ~0.7 +- 0.15). A pair whose cost has zero spread uses `epsilon`.
    relative_to: 'std' or 'mean' of the pair's cost entries on its support.
    epsilon_start: 0 = no schedule; otherwise epsilon is annealed geometrically
      from `epsilon_start` at step 0 to `epsilon` at `anneal_steps` (then kept):
      a blurred plan first, the target sharpness later. The value is a traced
      scalar of the step (`scheduled_epsilon`): one compilation for all steps.
    anneal_steps: length of the schedule (>= 1 when `epsilon_start` is set).
    tau_a / tau_b: unbalanced (KL-relaxed) marginals, in (0, 1]; 1 = balanced
      (exact marginal), tau -> 0 = free. ott solves min_T <T, C> - eps H(T) +
      rho_a KL(T 1 | a) + rho_b KL(T^T 1 | b), rho = epsilon tau / (1 - tau),
      generalised KL, H(T) = -sum T (log T - 1) (with free masses this is not
      the KL(T | a b^T) form; ott's `reg_ot_cost` then is not this objective).
      With tau < 1 the OT loss is <T, C> + rho_a KL(T1|a) + rho_b KL(T^T1|b) at
      the plan (the transport cost alone rewards dropping mass) and its
      gradient sum_ij T_ij dC_ij, the envelope gradient of the objective solved
      (grad='envelope' only); it tends to the balanced loss as tau -> 1. The
      divergence is balanced only. tau_a = 1, tau_b < 1 is
      semi-relaxed: every student token is transported, teacher tokens may be
      left out.
    center: subtract a mean token vector per model from the tokens before the
      cost (removes the shared direction that makes every pair alike under an
      anisotropic encoder).
    center_source: where the means come from: 'batch' (mean real token of the
      global batch, no gradient) or 'bitext' (estimated once before training
      over the whole bitext, the student's at initialisation; a frozen input
      of the step, like the idf tables).
    solver: 'ott' (one ott-jax solve per pair under `jax.vmap`) or 'batched' (one
      loop over the whole [B, n, m] batch, `batched_sinkhorn`: the same updates,
      stopping rule and outputs as ott's per pair, with each problem frozen once it
      converged; the convergence check runs once per `inner_iterations` instead of
      being evaluated every iteration, as ott's `lax.cond` is under `vmap`). Not
      with grad='unroll'; a divergence's symmetric self terms always use ott.
  """

  cost: str = "cosine"
  epsilon: float = 0.05
  max_iterations: int = 100
  min_iterations: int = 0
  inner_iterations: int = 10
  threshold: float = 1e-3
  fixed_iterations: bool = False
  grad: str = "envelope"
  lse_mode: bool = True
  scale_cost: float = 1.0
  relative_epsilon: bool = False
  relative_to: str = "std"
  epsilon_start: float = 0.0
  anneal_steps: int = 0
  tau_a: float = 1.0
  tau_b: float = 1.0
  center: bool = False
  center_source: str = "batch"
  solver: str = "ott"

  def __post_init__(self):
    problems = _config_problems(self)
    if problems:
      raise InputError("invalid OT config: " + "; ".join(problems))
    for name in ("epsilon", "threshold", "scale_cost", "epsilon_start", "tau_a", "tau_b"):  # 1 -> 1.0: equal configs hash alike
      object.__setattr__(self, name, float(getattr(self, name)))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "OTConfig":
    """Builds a config from a mapping (e.g. `config.loss.ot.to_dict()`).

    Raises:
      InputError: unknown keys, wrong types or invalid values.
    """
    return build(cls, d, "OT config")

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def balanced(self) -> bool:
    return self.tau_a == 1.0 and self.tau_b == 1.0


_RULES = (
    ("cost", "choice", dict(choices=COSTS)),
    ("grad", "choice", dict(choices=GRAD_MODES)),
    (("epsilon", "threshold", "scale_cost"), "number", dict(low=0, open_low=True)),
    (("max_iterations", "inner_iterations"), "int", dict(low=1)),
    ("min_iterations", "int", dict(low=0)),
    (("fixed_iterations", "lse_mode", "relative_epsilon", "center"), "bool", {}),
    ("relative_to", "choice", dict(choices=RELATIVE_TO)),
    ("center_source", "choice", dict(choices=CENTER_SOURCES)),
    ("solver", "choice", dict(choices=SOLVERS)),
    (("tau_a", "tau_b"), "number", dict(low=0, open_low=True, high=1)),
    ("epsilon_start", "number", dict(low=0, note=" (0 = no schedule)")),
    ("anneal_steps", "int", dict(low=0)),
)


def _config_problems(cfg: OTConfig) -> list:
  problems = field_problems(cfg, _RULES)
  if problems:
    return problems
  if cfg.max_iterations % cfg.inner_iterations:
    problems.append(f"max_iterations ({cfg.max_iterations}) must be a multiple of "
                    f"inner_iterations ({cfg.inner_iterations})")
  if cfg.min_iterations > cfg.max_iterations:
    problems.append(f"min_iterations ({cfg.min_iterations}) exceeds max_iterations "
                    f"({cfg.max_iterations})")
  if cfg.epsilon_start > 0 and cfg.anneal_steps < 1:
    problems.append("epsilon_start needs anneal_steps >= 1")
  balanced = cfg.tau_a == 1 and cfg.tau_b == 1
  if not balanced and cfg.grad != "envelope":
    problems.append("unbalanced OT (tau_a or tau_b < 1) needs grad='envelope' (the loss is "
                    "the regularised objective, differentiated by the envelope theorem)")
  if cfg.lse_mode is False and cfg.grad == "unroll":
    # ott 0.6.0's kernel-mode iterations differentiate to NaN once a weight is 0.
    problems.append("grad='unroll' needs lse_mode=true (kernel-mode unrolling gives NaN "
                    "gradients with padded tokens)")
  if cfg.solver == "batched" and cfg.grad == "unroll":
    problems.append("solver='batched' cannot be unrolled (grad='unroll' needs solver='ott')")
  return problems


# ----------------------------------------------------------------------------- weights


def token_weights(mask: jnp.ndarray, ids: Optional[jnp.ndarray] = None, *,
                  special_ids: Sequence[int] = (), include_special: bool = True,
                  idf: Optional[jnp.ndarray] = None,
                  importance: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Marginal weights of padded token sets: [B, L] -> [B, L], rows summing to 1.

  Args:
    mask: 1 for real tokens, 0 for padding (padding weight is exactly 0).
    ids: token ids [B, L]; needed for `include_special=False` and `idf`.
    special_ids: ids of special tokens ([CLS], [SEP], <s>, </s>, ...).
    include_special: if False, special tokens get weight 0, except in a
      sentence that would be left with no token, which keeps all its real tokens.
    idf: optional per-vocabulary weights [vocab] (see `compute_idf`), gathered
      by ids; a row whose idf weights are all zero falls back to uniform.
    importance: optional per-token weights [B, L] >= 0 (e.g. token norms or the
      [CLS] attention row, see `optical_jax.losses`), no gradient; multiplied in
      like idf, with the same fallback to uniform.

  Returns:
    float32 weights; a row with no real token at all is all zeros.
  """
  keep = mask > 0
  if not include_special and len(special_ids):
    if ids is None:
      raise ValueError("token_weights: ids are required to exclude special tokens")
    special = jnp.any(ids[..., None] == jnp.asarray(tuple(special_ids), dtype=ids.dtype),
                      axis=-1)
    content = keep & ~special
    keep = jnp.where(jnp.any(content, axis=-1, keepdims=True), content, keep)
  uniform = keep.astype(jnp.float32)
  w = uniform
  if idf is not None:
    if ids is None:
      raise ValueError("token_weights: ids are required for idf weighting")
    w = uniform * jnp.asarray(idf, jnp.float32)[ids]
    w = jnp.where(jnp.sum(w, axis=-1, keepdims=True) > 0, w, uniform)
  if importance is not None:
    imp = jnp.maximum(jax.lax.stop_gradient(jnp.asarray(importance, jnp.float32)), 0.0)
    imp = w * jnp.where(jnp.isfinite(imp), imp, 0.0)
    w = jnp.where(jnp.sum(imp, axis=-1, keepdims=True) > 0, imp, w)
  total = jnp.sum(w, axis=-1, keepdims=True)
  return jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)


def compute_idf(id_lists: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
  """Smoothed inverse document frequency: idf[t] = log((1 + N) / (1 + df[t])) + 1.

  Args:
    id_lists: one sequence of token ids per document (repeats count once).
    vocab_size: size of the id space.

  Returns:
    float32 array [vocab_size], every entry >= 1 (sklearn's smooth idf).

  Raises:
    InputError: an id outside [0, vocab_size).
  """
  df = np.zeros((vocab_size,), np.int64)
  n_docs = 0
  for ids in id_lists:
    unique = np.unique(np.asarray(ids, np.int64))
    if unique.size and (unique[0] < 0 or unique[-1] >= vocab_size):
      bad = unique[0] if unique[0] < 0 else unique[-1]
      raise InputError(f"token id {bad} outside the vocabulary of size {vocab_size} "
                       f"(document {n_docs})")
    df[unique] += 1
    n_docs += 1
  return (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- costs


def _compute_dtype(*arrays: jnp.ndarray) -> jnp.dtype:
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def cost_matrix(x: jnp.ndarray, y: jnp.ndarray, cost: str = "cosine") -> jnp.ndarray:
  """Ground cost between token sets: x [n, d], y [m, d] -> [n, m] (float32 or wider).

  'cosine' is 1 - cos(x_i, y_j); a zero vector has cosine 0 with everything
  (cost 1) and a finite gradient. 'sqeuclidean' is ||x_i - y_j||^2, clipped at 0.
  """
  dtype = _compute_dtype(x, y)
  x = x.astype(dtype)
  y = y.astype(dtype)
  if cost == "cosine":
    xn, yn = norms.unit_rows(x), norms.unit_rows(y)
    return 1.0 - jnp.einsum("...nd,...md->...nm", xn, yn,
                            precision=jax.lax.Precision.HIGHEST)
  if cost == "sqeuclidean":
    cross = jnp.einsum("...nd,...md->...nm", x, y, precision=jax.lax.Precision.HIGHEST)
    sq = (jnp.sum(x * x, axis=-1)[..., :, None] + jnp.sum(y * y, axis=-1)[..., None, :]
          - 2.0 * cross)
    return jnp.maximum(sq, 0.0)
  raise ValueError(f"unknown cost {cost!r}; expected one of {COSTS}")


# ----------------------------------------------------------------------------- solver


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


def token_mean(x: jnp.ndarray, weights: jnp.ndarray, axis_name: Optional[str] = None
               ) -> jnp.ndarray:
  """Mean token vector [d] over the tokens of positive weight of a batch [B, L, d] (no
  gradient); over the whole global batch when `axis_name` names a mapped device axis."""
  keep = (weights > 0)[..., None]
  x = jax.lax.stop_gradient(jnp.where(keep, x.astype(_compute_dtype(x)), 0.0))
  total = jnp.sum(x, axis=(0, 1))
  count = jnp.sum(keep, dtype=total.dtype)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
    count = jax.lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)


def _schur_solve(plan: jnp.ndarray, ra: jnp.ndarray, rb: jnp.ndarray, sa: jnp.ndarray,
                 sb: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Solves [[diag(T1), T], [T^T, diag(T^T 1)]] [u; v] = [ra; rb] on the support.

  Rows/columns outside the support (sa, sb False) are decoupled with a unit
  diagonal and zero right-hand side. The diagonal block of the larger side is
  eliminated and the Schur complement (singular along the constant gauge,
  and along any further gauge of a plan whose support graph is disconnected)
  is solved with a pseudo-inverse.
  """
  if plan.shape[0] < plan.shape[1]:  # eliminate the larger (column) block instead
    v, u = _schur_solve(plan.T, rb, ra, sb, sa)
    return u, v
  da = jnp.where(sa, jnp.sum(plan, axis=1), 1.0)
  db = jnp.where(sb, jnp.sum(plan, axis=0), 1.0)
  da = jnp.where(da > 0, da, 1.0)  # an underflowed real row has no mass to move
  ra = jnp.where(sa, ra, 0.0)
  rb = jnp.where(sb, rb, 0.0)
  scaled = plan / da[:, None]
  schur = jnp.diag(db) - plan.T @ scaled
  schur = 0.5 * (schur + schur.T)
  rhs = rb - scaled.T @ ra
  v = jnp.linalg.pinv(schur, hermitian=True) @ rhs
  u = (ra - plan @ v) / da
  return jnp.where(sa, u, 0.0), jnp.where(sb, v, 0.0)


@jax.custom_vjp
def _implicit_plan(epsilon: jnp.ndarray, cost: jnp.ndarray, plan: jnp.ndarray, a: jnp.ndarray,
                   b: jnp.ndarray) -> jnp.ndarray:
  """Returns `plan` (solved for `cost` at `epsilon`), differentiable w.r.t. `cost` by
  implicit diff (epsilon, a traced scalar, gets no gradient)."""
  del epsilon, cost, a, b
  return plan


def _implicit_plan_fwd(epsilon, cost, plan, a, b):
  del cost
  return plan, (epsilon, plan, a, b)


def _implicit_plan_bwd(res, g):
  # T_ij = exp((f_i + g_j - C_ij) / eps) with f, g fixed by T 1 = a, T^T 1 = b.
  # Differentiating these conditions gives H [df; dg] = [(T*dC) 1; (T*dC)^T 1],
  # H = [[diag(T1), T], [T^T, diag(T^T 1)]], hence the cotangent of C is
  # T * (u_i + v_j - G_ij) / eps with H [u; v] = [(G*T) 1; (G*T)^T 1].
  epsilon, plan, a, b = res
  gt = jnp.where(plan > 0, g * plan, 0.0)
  u, v = _schur_solve(plan, jnp.sum(gt, axis=1), jnp.sum(gt, axis=0), a > 0, b > 0)
  dcost = plan * (u[:, None] + v[None, :] - g) / epsilon
  dcost = jnp.where(plan > 0, dcost, 0.0)
  return (jnp.zeros_like(epsilon), dcost, jnp.zeros_like(plan), jnp.zeros_like(a),
          jnp.zeros_like(b))


_implicit_plan.defvjp(_implicit_plan_fwd, _implicit_plan_bwd)


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
