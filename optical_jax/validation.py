"""Held-out bitext validation: how well the student's foreign embeddings land on the teacher's English ones.

For tuning without test queries: given held-out (foreign, English) pairs, embed the
foreign side with the student query encoder and the English side with the teacher's
query encoder (both pooled and normalised as for retrieval), then report

  * `val_cosine`: mean cosine between each pair's two embeddings;
  * `val_p@1` / `val_mrr`: translation retrieval, each foreign sentence ranking all
    English sentences of the held-out set (its own translation is the one relevant).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optical_jax import encoder as enc


def embed(params, cfg: enc.EncoderConfig, ids: np.ndarray, mask: np.ndarray, pooling: str,
          batch_size: int = 64) -> np.ndarray:
  """Pooled, L2-normalised embeddings in fixed-size batches (one compilation per length)."""
  f = jax.jit(lambda p, i, m: enc.pool(enc.apply(p, i, m, cfg=cfg), m, pooling, True))
  out = []
  n = len(ids)
  for lo in range(0, n, batch_size):
    i, m = ids[lo:lo + batch_size], mask[lo:lo + batch_size]
    pad = batch_size - len(i)
    if pad:
      i, m = np.pad(i, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))
    out.append(np.asarray(f(params, i, m))[: batch_size - pad])
  return np.concatenate(out) if out else np.zeros((0, cfg.output_dim), np.float32)


def translation_metrics(student_emb: np.ndarray, teacher_emb: np.ndarray) -> Dict[str, float]:
  """Cosine of aligned pairs and translation-retrieval P@1 / MRR (rows aligned)."""
  s = jnp.asarray(student_emb)
  t = jnp.asarray(teacher_emb)
  sims = np.asarray(s @ t.T)
  own = np.diag(sims)
  rank = 1 + (sims > own[:, None]).sum(axis=1)
  return {"val_cosine": float(own.mean()), "val_p@1": float((rank == 1).mean()),
          "val_mrr": float((1.0 / rank).mean())}


def validate(student_params, student_cfg, teacher_params, teacher_cfg, src: Sequence[Any],
             tgt: Sequence[Any], pooling: str = "mean") -> Dict[str, float]:
  """`src`/`tgt` are (ids, mask) arrays of the held-out foreign / English sentences."""
  s = embed(student_params, student_cfg, *src, pooling=pooling)
  t = embed(teacher_params, teacher_cfg, *tgt, pooling=pooling)
  return translation_metrics(s, t)
