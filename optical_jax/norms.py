"""Vector normalisation and cosines: the project's one home for them, with two rules.

* `unit(x)`: x / max(||x||, 1e-12), torch.nn.functional.normalize's rule. Retrieval
  embeddings use it (`encoder.pool_and_normalize`, `scoring`), so an exported
  sentence-transformers model (whose Normalize module is torch's) reproduces them.
* `unit_rows(x)` and `cosine_rows(u, v)`: x * rsqrt(max(||x||^2, 1e-12)), in float32 or
  wider. Inside losses and OT costs, where a zero vector (a padded token, an empty
  sentence) must have cosine 0 with everything and a finite gradient; rsqrt keeps the
  backward pass free of a division by a norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-12          # `unit`: the smallest norm divided by (torch's default)
SQUARED_NORM_FLOOR = 1e-12  # `unit_rows` / `cosine_rows`: a smaller squared norm counts as 0


def unit(x: jnp.ndarray, axis: int = -1, eps: float = NORM_EPS) -> jnp.ndarray:
  """x / max(||x||, eps) along `axis` (torch.nn.functional.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def _inv_norm(x: jnp.ndarray, keepdims: bool) -> jnp.ndarray:
  return jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=keepdims),
                                   SQUARED_NORM_FLOOR))


def unit_rows(x: jnp.ndarray) -> jnp.ndarray:
  """Rows of `x` (last axis) scaled to unit length in float32 or wider; 0 stays 0 with a
  finite gradient."""
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x * _inv_norm(x, keepdims=True)


def cosine_rows(u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Cosine along the last axis; 0 (with a finite gradient) where either vector is 0."""
  return jnp.sum(u * v, axis=-1) * _inv_norm(u, keepdims=False) * _inv_norm(v, keepdims=False)
