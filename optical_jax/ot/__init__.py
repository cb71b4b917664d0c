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

The package, one concept a module (as ott-jax splits geometry / problems / solvers):

    config.py      OTConfig, the settings and their checks
    marginals.py   token weights (uniform, idf, norm, [CLS] attention), idf tables
    cost.py        the ground cost matrix, the mean token vector (centring)
    solve.py       Sinkhorn over a padded batch (ott per pair, or one batched loop),
                   epsilon schedules and relative epsilon, OTResult
    implicit.py    the implicit-function gradient on the marginals' support
    objectives.py  ot_loss, divergence_loss, barycentric_loss and their diagnostics

Everything public is importable from `optical_jax.ot` itself.
"""

from optical_jax.ot.config import (CENTER_SOURCES, COSTS, GRAD_MODES, RELATIVE_TO, SOLVERS,
                                   OTConfig)
from optical_jax.ot.cost import cost_matrix, token_mean
from optical_jax.ot.marginals import compute_idf, token_weights
from optical_jax.ot.objectives import (BARYCENTRIC_DISTANCES, barycentric_loss,
                                       barycentric_targets, divergence_loss, ot_loss)
from optical_jax.ot.solve import (OTResult, batched_sinkhorn, pair_epsilon, scheduled_epsilon,
                                  sinkhorn_batch)

__all__ = ["BARYCENTRIC_DISTANCES", "CENTER_SOURCES", "COSTS", "GRAD_MODES", "OTConfig",
           "OTResult", "RELATIVE_TO", "SOLVERS", "barycentric_loss", "barycentric_targets",
           "batched_sinkhorn", "compute_idf", "cost_matrix", "divergence_loss", "ot_loss",
           "pair_epsilon", "scheduled_epsilon", "sinkhorn_batch", "token_mean", "token_weights"]
