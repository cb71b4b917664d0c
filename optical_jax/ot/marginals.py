"""Token marginals: the weight each token of a set carries (uniform over real tokens, idf,
vector norm, [CLS] attention); padding weighs exactly 0."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax.errors import InputError


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
