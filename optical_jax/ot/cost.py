"""What the transport cost compares: the ground cost matrix between two token sets and
the mean token vector that centring subtracts."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from optical_jax import norms
from optical_jax.ot.config import COSTS


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
