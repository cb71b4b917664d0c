"""Training losses: OPTICAL distillation (OT, sentence, hard alignment), teacher contrastive loss.

Distillation compares, for each parallel sentence pair, the student's token
embeddings of the foreign sentence with the frozen teacher's token embeddings of
its English translation:

  * 'ot': entropic optimal transport between the two token sets (`optical_jax.ot`);
  * 'sentence': distance between mean-pooled sentence embeddings (Reimers &
    Gurevych 2020: MSE; or 1 - cosine);
  * 'hard': each student token is aligned to its most similar teacher token
    (a hard argmax alignment) and pays that cost;
  * 'ot+sentence': the OT loss plus `sentence_weight` times the sentence loss.

A pair in which either side has no real token (a padded batch row) is left out
of every average. Teacher token embeddings are treated as constants.

`contrastive_loss` trains the English teacher retriever: softmax cross-entropy of
each query against a document set holding its positive and everyone else's
documents (in-batch and hard negatives), with dense or ColBERT MaxSim scores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from optical_jax import ot as ot_lib
from optical_jax import scoring as scoring_lib
from optical_jax.encoder import masked_mean, mean_pool
from optical_jax.errors import InputError, build

LOSSES = ("ot", "sentence", "hard", "ot+sentence")
SENTENCE_DISTANCES = ("mse", "cosine")
MARGINALS = ("uniform", "idf")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """The distillation loss and all its settings; frozen and hashable (a jit-static argument).

  Attributes:
    loss: 'ot' | 'sentence' | 'hard' | 'ot+sentence'. 'ot' is OPTICAL.
    sentence_weight: weight of the sentence term in 'ot+sentence' (ignored
      otherwise).
    sentence_distance: 'mse' (mean squared error of the mean-pooled embeddings,
      as Reimers & Gurevych 2020) or 'cosine' (1 - cosine).
    hard_symmetric: 'hard' loss in both directions (also each teacher token
      to its nearest student token), averaged.
    marginals: token weights of the OT and 'hard' losses: 'uniform' over real tokens
      or 'idf'-weighted (then the step passes idf tables, see `batch_loss`).
    include_special: whether [CLS]/[SEP] (<s>/</s>) carry mass.
    src_special / tgt_special: the special-token ids of the student / teacher
      tokenizer (set by the trainer from the tokenizers).
    ot: OT settings; `ot.cost` (and `ot.scale_cost`) are also the ground cost of
      the 'hard' loss.
  """

  loss: str = "ot"
  sentence_weight: float = 1.0
  sentence_distance: str = "mse"
  hard_symmetric: bool = False
  marginals: str = "uniform"
  include_special: bool = True
  src_special: Tuple[int, ...] = ()
  tgt_special: Tuple[int, ...] = ()
  ot: ot_lib.OTConfig = ot_lib.OTConfig()

  def __post_init__(self):
    problems = []
    if self.loss not in LOSSES:
      problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
    if self.sentence_distance not in SENTENCE_DISTANCES:
      problems.append(f"sentence_distance must be one of {SENTENCE_DISTANCES}, "
                      f"got {self.sentence_distance!r}")
    if self.marginals not in MARGINALS:
      problems.append(f"marginals must be one of {MARGINALS}, got {self.marginals!r}")
    w = self.sentence_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
      problems.append(f"sentence_weight must be a finite number >= 0, got {w!r}")
    for name in ("hard_symmetric", "include_special"):
      if not isinstance(getattr(self, name), bool):
        problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
    for name in ("src_special", "tgt_special"):
      ids = getattr(self, name)
      if isinstance(ids, (str, bytes)) or not all(
          isinstance(i, int) and not isinstance(i, bool) for i in ids):
        problems.append(f"{name} must be token ids, got {ids!r}")
    if not isinstance(self.ot, ot_lib.OTConfig):
      problems.append(f"ot must be an OTConfig, got {type(self.ot).__name__}")
    if problems:
      raise InputError("invalid distillation config: " + "; ".join(problems))
    object.__setattr__(self, "sentence_weight", float(w))
    for name in ("src_special", "tgt_special"):  # lists from JSON -> hashable tuples
      object.__setattr__(self, name, tuple(getattr(self, name)))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DistillConfig":
    """Builds a config from a mapping whose 'ot' entry may be a mapping (OTConfig fields).

    Raises:
      InputError: unknown keys, wrong types or invalid values.
    """
    return build(cls, d, "loss config")


# ----------------------------------------------------------------------------- helpers


def _pair_valid(s_mask: jnp.ndarray, t_mask: jnp.ndarray) -> jnp.ndarray:
  return jnp.any(s_mask > 0, axis=-1) & jnp.any(t_mask > 0, axis=-1)


def _cosine(u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Row-wise cosine [B, D], [B, D] -> [B]; 0 (with a finite gradient) for a zero vector."""
  floor = 1e-12
  dot = jnp.sum(u * v, axis=-1)
  return dot * jax.lax.rsqrt(jnp.maximum(jnp.sum(u * u, axis=-1), floor)) * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(v * v, axis=-1), floor))


# ----------------------------------------------------------------------------- sentence level


def sentence_loss(student_tokens: jnp.ndarray, s_mask: jnp.ndarray, teacher_tokens: jnp.ndarray,
                  t_mask: jnp.ndarray, distance: str = "mse") -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Distance between mean-pooled student and teacher embeddings.

  Args:
    student_tokens: [B, Ls, D]; s_mask [B, Ls] (1 = real token).
    teacher_tokens: [B, Lt, D]; t_mask [B, Lt].
    distance: 'mse' = mean over pairs and dimensions of (s - t)^2 (torch's
      MSELoss, as Reimers & Gurevych 2020); 'cosine' = mean of 1 - cos(s, t).

  Returns:
    (loss, mean cosine between the pooled embeddings), averaged over pairs with
    real tokens on both sides.
  """
  s = mean_pool(student_tokens, s_mask)
  t = mean_pool(teacher_tokens, t_mask)
  valid = _pair_valid(s_mask, t_mask)
  cos = _cosine(s, t)
  if distance == "mse":
    per_pair = jnp.mean(jnp.square(s - t), axis=-1)
  elif distance == "cosine":
    per_pair = 1.0 - cos
  else:
    raise ValueError(f"unknown sentence distance {distance!r}; expected one of "
                     f"{SENTENCE_DISTANCES}")
  return masked_mean(per_pair, valid), masked_mean(cos, valid)


# ----------------------------------------------------------------------------- hard alignment


def hard_alignment_loss(x: jnp.ndarray, x_weights: jnp.ndarray, y: jnp.ndarray,
                        y_weights: jnp.ndarray, cost: str = "cosine", *, symmetric: bool = False,
                        scale_cost: float = 1.0) -> jnp.ndarray:
  """Token distillation with a hard argmax alignment (no transport plan).

  Direction: each student token i (x, weight a_i > 0) is aligned to the teacher
  token j with weight b_j > 0 that is most similar to it, i.e. of least cost
  C_ij, and the pair's loss is sum_i a_i min_j C_ij. With `symmetric`, the
  teacher-to-student direction sum_j b_j min_i C_ij is added and the two are
  averaged. The gradient flows through the chosen cost entries.

  Args:
    x: student tokens [B, n, d]; x_weights [B, n] (rows summing to 1).
    y: teacher tokens [B, m, d]; y_weights [B, m].
    cost: 'cosine' or 'sqeuclidean' (as `optical_jax.ot.cost_matrix`).
    scale_cost: the cost is divided by it (as in the OT loss).

  Returns:
    mean over pairs with weight on both sides (float32 scalar).
  """
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  a = x_weights.astype(dtype)
  b = y_weights.astype(dtype)
  sa, sb = a > 0, b > 0
  valid = jnp.any(sa, axis=-1) & jnp.any(sb, axis=-1)
  x = jnp.where(sa[..., None], x.astype(dtype), 0.0)
  y = jnp.where(sb[..., None], y.astype(dtype), 0.0)
  c = ot_lib.cost_matrix(x, y, cost) / scale_cost
  big = jnp.asarray(jnp.finfo(dtype).max, dtype)
  row_min = jnp.min(jnp.where(sb[:, None, :], c, big), axis=2)   # best teacher per student token
  per_pair = jnp.sum(jnp.where(sa & valid[:, None], a * row_min, 0.0), axis=1)
  if symmetric:
    col_min = jnp.min(jnp.where(sa[:, :, None], c, big), axis=1)  # best student per teacher token
    per_pair = 0.5 * (per_pair + jnp.sum(jnp.where(sb & valid[:, None], b * col_min, 0.0), axis=1))
  return masked_mean(per_pair, valid)


# ----------------------------------------------------------------------------- dispatcher


def distillation_loss(student_tokens: jnp.ndarray, s_mask: jnp.ndarray, s_weights: jnp.ndarray,
                      teacher_tokens: jnp.ndarray, t_mask: jnp.ndarray, t_weights: jnp.ndarray,
                      cfg: DistillConfig = DistillConfig()
                      ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The distillation loss selected by `cfg.loss`, and its metrics.

  Args:
    student_tokens: [B, Ls, D] student embeddings of the foreign sentences.
    s_mask: [B, Ls] real-token mask (for mean pooling); s_weights [B, Ls]
      marginal weights (`optical_jax.ot.token_weights`; for OT and 'hard').
    teacher_tokens: [B, Lt, D] teacher embeddings of the English sentences
      (held constant: stop_gradient).
    t_mask, t_weights: as for the student.
    cfg: static loss settings.

  Returns:
    (loss, metrics): float32 scalars. Metrics always hold 'sentence_cosine'
    (mean cosine of the mean-pooled embeddings) and the loss's components
    ('ot_loss', 'sentence_loss', 'hard_loss' as used); with OT also its
    diagnostics (converged_fraction, iterations, plan_entropy, mean_cost,
    marginal_error, reg_ot_cost, valid_fraction).
  """
  teacher_tokens = jax.lax.stop_gradient(teacher_tokens)
  metrics: Dict[str, jnp.ndarray] = {}
  distance = cfg.sentence_distance
  sent, cos = sentence_loss(student_tokens, s_mask, teacher_tokens, t_mask, distance)
  metrics["sentence_cosine"] = jax.lax.stop_gradient(cos)
  if cfg.loss == "sentence":
    loss = sent
    metrics["sentence_loss"] = jax.lax.stop_gradient(sent)
  elif cfg.loss == "hard":
    loss = hard_alignment_loss(student_tokens, s_weights, teacher_tokens, t_weights, cfg.ot.cost,
                               symmetric=cfg.hard_symmetric, scale_cost=cfg.ot.scale_cost)
    metrics["hard_loss"] = jax.lax.stop_gradient(loss)
  elif cfg.loss in ("ot", "ot+sentence"):
    ot_value, diagnostics = ot_lib.ot_loss(student_tokens, s_weights, teacher_tokens, t_weights,
                                           cfg.ot)
    metrics.update(diagnostics)
    metrics["ot_loss"] = jax.lax.stop_gradient(ot_value)
    loss = ot_value
    if cfg.loss == "ot+sentence":
      metrics["sentence_loss"] = jax.lax.stop_gradient(sent)
      loss = ot_value + cfg.sentence_weight * sent
  else:
    raise ValueError(f"unknown distillation loss {cfg.loss!r}; expected one of {LOSSES}")
  loss = loss.astype(jnp.float32)
  return loss, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def batch_loss(student_tokens: jnp.ndarray, teacher_tokens: jnp.ndarray, batch: Mapping[str, Any],
               cfg: DistillConfig, idf: Optional[Mapping[str, jnp.ndarray]] = None
               ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The distillation loss of a bitext batch: token marginals per `cfg`, then `distillation_loss`.

  Args:
    student_tokens: [B, Ls, D] student embeddings of `batch['src_ids']` (foreign side).
    teacher_tokens: [B, Lt, D] teacher embeddings of `batch['tgt_ids']` (English side).
    batch: 'src_ids', 'src_mask', 'tgt_ids', 'tgt_mask' ([B, L] int arrays).
    cfg: the loss and its marginals (`marginals`, `include_special`, special ids).
    idf: for `marginals='idf'`: {'src_idf': [student vocab], 'tgt_idf': [teacher vocab]}
      (`optical_jax.ot.compute_idf` over the bitext).
  """
  use_idf = cfg.marginals == "idf"
  if use_idf and not idf:
    raise ValueError("marginals='idf' needs the idf tables (src_idf, tgt_idf)")
  s_w = ot_lib.token_weights(batch["src_mask"], batch["src_ids"], special_ids=cfg.src_special,
                             include_special=cfg.include_special,
                             idf=idf["src_idf"] if use_idf else None)
  t_w = ot_lib.token_weights(batch["tgt_mask"], batch["tgt_ids"], special_ids=cfg.tgt_special,
                             include_special=cfg.include_special,
                             idf=idf["tgt_idf"] if use_idf else None)
  return distillation_loss(student_tokens, batch["src_mask"], s_w, teacher_tokens,
                           batch["tgt_mask"], t_w, cfg)


# ----------------------------------------------------------------------------- teacher ranking


def contrastive_loss(q: jnp.ndarray, d: jnp.ndarray, positive_index: Optional[jnp.ndarray] = None,
                     *, scoring: str = "dense", q_mask: Optional[jnp.ndarray] = None,
                     d_mask: Optional[jnp.ndarray] = None, temperature: float = 1.0,
                     q_valid: Optional[jnp.ndarray] = None, d_valid: Optional[jnp.ndarray] = None
                     ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """In-batch-negative softmax cross-entropy of queries against a shared document set.

  Each query is scored against every document of `d`; the loss is the mean over
  queries of -log softmax(scores / temperature)[positive]. Documents are
  typically [positives of the queries, then hard negatives]: query i's positive
  is document i (the default `positive_index`). Because the whole document set
  is an input, a caller can all-gather documents over a named device axis and
  pass the global positions of its queries' positives (e.g.
  `rank * local_docs + arange(local_queries)`).

  Args:
    q: queries, [Q, D] ('dense') or [Q, Lq, D] ('maxsim', with q_mask [Q, Lq]).
    d: documents, [N, D] or [N, Ld, D] (with d_mask [N, Ld]).
    positive_index: [Q] int, index in d of each query's positive; default arange(Q).
    scoring: 'dense' (dot product; cosine for normalised inputs) or 'maxsim'
      (ColBERT late interaction), from `optical_jax.scoring`.
    temperature: scores are divided by it (1.0 = raw scores, as ColBERT/DPR).
    q_valid: optional [Q] bool; invalid (padding) queries are left out of the mean.
    d_valid: optional [N] bool; invalid (padding) documents are not candidates.

  Returns:
    (loss, metrics) float32 scalars; metrics: 'accuracy' (top-1 is the
    positive), 'positive_score' and 'mean_score' (raw scores over valid docs).
  """
  scores = scoring_lib.scores(q, q_mask, d, d_mask, scoring)
  scores = scores.astype(jnp.float32)
  n_q, n_d = scores.shape
  if positive_index is None:
    positive_index = jnp.arange(n_q)
  positive_index = jnp.asarray(positive_index, jnp.int32)
  doc_ok = jnp.ones((n_d,), bool) if d_valid is None else jnp.asarray(d_valid, bool)
  # The positive always stays a candidate, even if flagged invalid.
  candidate = doc_ok[None, :] | (jnp.arange(n_d)[None, :] == positive_index[:, None])
  logits = jnp.where(candidate, scores / temperature, -jnp.inf)
  pos_logit = jnp.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
  per_query = jax.nn.logsumexp(logits, axis=1) - pos_logit
  valid = jnp.ones((n_q,), bool) if q_valid is None else jnp.asarray(q_valid, bool)
  loss = masked_mean(per_query, valid)
  fixed = jax.lax.stop_gradient(scores)
  best = jnp.argmax(jnp.where(candidate, fixed, -jnp.inf), axis=1)
  pos_score = jnp.take_along_axis(fixed, positive_index[:, None], axis=1)[:, 0]
  mean_score = jnp.sum(jnp.where(candidate, fixed, 0.0), axis=1) / jnp.sum(candidate, axis=1)
  metrics = {
      "accuracy": masked_mean((best == positive_index).astype(jnp.float32), valid),
      "positive_score": masked_mean(pos_score, valid),
      "mean_score": masked_mean(mean_score, valid),
  }
  return loss, metrics
