"""The implicit-function-theorem gradient of <T*(C), C> through the optimal plan,
restricted to the support of the marginals (ott's `ImplicitDiff` divides by the zero
marginals of padded tokens and returns NaN)."""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp



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
