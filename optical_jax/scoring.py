"""Query-document relevance scores: dense dot products and ColBERT MaxSim late interaction.

The one owner of the scoring names: `SCORINGS`, `check`, the dispatch `scores`, and
`embed`, which turns encoder token outputs into what a scoring compares.
"""

from __future__ import annotations

from typing import Optional, Type

import jax.numpy as jnp

from optical_jax import encoder as enc
from optical_jax import norms

SCORINGS = ("dense", "maxsim")


def check(name: str, where: str = "scoring", error: Type[Exception] = ValueError) -> str:
  """`name` if it is a known scoring; else `error` ('<where> must be one of (...), got ...').

  Library code keeps the default ValueError; config validation passes InputError.
  """
  if name not in SCORINGS:
    raise error(f"{where} must be one of {SCORINGS}, got {name!r}")
  return name


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


def scores(q: jnp.ndarray, q_mask: Optional[jnp.ndarray], d: jnp.ndarray,
           d_mask: Optional[jnp.ndarray], scoring: str) -> jnp.ndarray:
  """[Q, N] scores by name: 'dense' (`dense_scores`; masks ignored, may be None) or
  'maxsim' (`maxsim_scores`; both masks required)."""
  check(scoring)
  if scoring == "dense":
    return dense_scores(q, d)
  if q_mask is None or d_mask is None:
    raise ValueError("maxsim scoring needs q_mask and d_mask")
  return maxsim_scores(q, q_mask, d, d_mask)


def embed(tokens: jnp.ndarray, mask: jnp.ndarray, scoring: str, pooling: str,
          normalize: bool, pooler: Optional[dict] = None) -> jnp.ndarray:
  """What `scoring` compares, from encoder outputs tokens [B, L, D] and mask [B, L].

  'maxsim': the token vectors [B, L, D] (L2-normalised if `normalize`);
  'dense': one pooled vector per text [B, D] (`encoder.pool` by `pooling`, L2-normalised
  if `normalize`; `pooler` is the params' BERT pooler, which pooling 'pooler' needs).
  """
  check(scoring)
  if scoring == "maxsim":
    return norms.unit(tokens) if normalize else tokens
  return enc.pool(tokens, mask, pooling, normalize, pooler)
