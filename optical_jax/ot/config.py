"""The OT settings (`OTConfig`, the training config's `loss.ot`): cost, epsilon and its
schedules, iterations, gradient mode, solver, unbalanced marginals and centring, checked
in one place (`_config_problems`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping


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
