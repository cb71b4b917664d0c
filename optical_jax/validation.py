"""Held-out bitext validation: how well the student's foreign embeddings land on the teacher's English ones.

For tuning without test queries: given held-out (foreign, English) pairs, embed the
foreign side with the student query encoder and the English side with the teacher's
query encoder (both pooled and normalised as for retrieval), then report

  * `val_cosine`: mean cosine between each pair's two embeddings;
  * `val_p@1` / `val_mrr`: translation retrieval, each foreign sentence ranking all
    English sentences of the held-out set (its own translation is the one relevant).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import chunked, encoder as enc


def pooled_embed_fn(cfg: enc.EncoderConfig, pooling: str) -> Callable:
  """A jitted (params, ids, mask) -> pooled, L2-normalised embeddings [B, D]; make it once
  and reuse it (it compiles once per batch shape)."""
  return jax.jit(lambda p, i, m: enc.pool(enc.apply(p, i, m, cfg=cfg), m, pooling, True,
                                          p.get("pooler")))


def embed(params, embed_fn: Callable, ids: np.ndarray, mask: np.ndarray,
          batch_size: int = 64, mesh: Optional[jax.sharding.Mesh] = None) -> np.ndarray:
  """`embed_fn` over fixed-size batches (the last one padded) split over `mesh`'s devices
  (`chunked.apply`): one compilation per length."""
  parts = chunked.apply(embed_fn, params, len(ids), lambda lo, hi: (ids[lo:hi], mask[lo:hi]),
                        chunk=batch_size, mesh=mesh)
  return np.concatenate([out for _, out in parts])


def translation_metrics(student_emb: np.ndarray, teacher_emb: np.ndarray) -> Dict[str, float]:
  """Cosine of aligned pairs and translation-retrieval P@1 / MRR (rows aligned)."""
  s = jnp.asarray(student_emb)
  t = jnp.asarray(teacher_emb)
  sims = np.asarray(s @ t.T)
  own = np.diag(sims)
  rank = 1 + (sims > own[:, None]).sum(axis=1)
  return {"val_cosine": float(own.mean()), "val_p@1": float((rank == 1).mean()),
          "val_mrr": float((1.0 / rank).mean())}


class Validator:
  """Held-out pairs -> `val_*` metrics of the student's current params.

  The teacher is frozen, so its English embeddings are computed once; the student's
  embedding function is jitted once and reused at every validation.

  Args:
    student, teacher: loaded models (`optical_jax.models.Model`); pooling is the
      student's (`student.spec.pooling`).
    src, tgt: (ids, mask) arrays of the foreign / English sentences, rows aligned.
  """

  def __init__(self, student, teacher, src: Sequence[np.ndarray], tgt: Sequence[np.ndarray],
               mesh: Optional[jax.sharding.Mesh] = None):
    if len(src[0]) == 0:
      raise ValueError("validation needs at least one pair")
    pooling = student.spec.pooling
    self._src = src
    self._mesh = mesh
    self._student_fn = pooled_embed_fn(student.cfg, pooling)
    self._teacher_emb = embed(teacher.params, pooled_embed_fn(teacher.cfg, pooling), *tgt,
                              mesh=mesh)

  def __call__(self, student_params) -> Dict[str, float]:
    return translation_metrics(embed(student_params, self._student_fn, *self._src,
                                     mesh=self._mesh), self._teacher_emb)
