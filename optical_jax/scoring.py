"""Query-document relevance scores: dense dot products and ColBERT MaxSim late interaction."""

from __future__ import annotations

import jax.numpy as jnp


def dense_scores(q: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
  """Dot products of query and document vectors: q [Q, D], d [N, D] -> [Q, N].

  With L2-normalised inputs this is cosine similarity.
  """
  return jnp.einsum("qd,nd->qn", q, d, preferred_element_type=jnp.float32)


def maxsim_scores(q: jnp.ndarray, q_mask: jnp.ndarray, d: jnp.ndarray,
                  d_mask: jnp.ndarray) -> jnp.ndarray:
  """ColBERT late interaction: sum over real query tokens of the max over real doc tokens.

  Args:
    q: query token embeddings [Q, Lq, D]; q_mask [Q, Lq] (1 = real token).
    d: document token embeddings [N, Ld, D]; d_mask [N, Ld].

  Returns:
    scores [Q, N].
  """
  sim = jnp.einsum("qid,njd->qnij", q, d, preferred_element_type=jnp.float32)
  sim = jnp.where(d_mask[None, :, None, :] > 0, sim, -jnp.inf)
  best = jnp.max(sim, axis=-1)  # [Q, N, Lq]
  best = jnp.where(q_mask[:, None, :] > 0, best, 0.0)
  # A document with no real token scores 0 rather than -inf.
  best = jnp.where(jnp.isfinite(best), best, 0.0)
  return jnp.sum(best, axis=-1)
