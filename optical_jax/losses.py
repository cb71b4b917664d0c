"""Training losses: OPTICAL distillation (OT, sentence, hard alignment), teacher contrastive loss.

One concept, the loss a training step minimises, in one module of about 600 lines: the
distillation config, its named terms and their sum, the batch plumbing that feeds them,
and the contrastive loss of teacher mode; the OT machinery itself is `optical_jax.ot`.

Distillation compares, for each parallel sentence pair, the student's token
embeddings of the foreign sentence with the frozen teacher's token embeddings of
its English translation:

  * 'ot': entropic optimal transport between the two token sets (`optical_jax.ot`);
  * 'sentence': distance between the pooled sentence embeddings (Reimers &
    Gurevych 2020: MSE; or 1 - cosine), each side pooled as its model pools for
    retrieval (`student_pooling`, `teacher_pooling`: mean, [CLS], or LaBSE's pooler);
  * 'hard': each student token is aligned to its most similar teacher token
    (a hard argmax alignment) and pays that cost;
  * 'ot+sentence': the OT loss plus `sentence_weight` times the sentence loss;
  * 'divergence': the debiased Sinkhorn divergence OT(s,t) - OT(s,s)/2 - OT(t,t)/2
    (`optical_jax.ot.divergence_loss`);
  * 'barycentric': each student token regresses onto its OT-mapped teacher target
    sum_j T_ij y_j / a_i (`optical_jax.ot.barycentric_loss`, `token_distance`);
  * 'ranking': in-batch translation ranking, KL(teacher English-English similarity
    rows || student foreign-English rows) at `ranking_temperature` (`ranking_loss`);
  * 'ot+ranking', 'divergence+ranking', 'barycentric+ranking': the token-level loss
    plus `ranking_weight` times the ranking term.

Every OT-family loss takes the settings of `ot` (cost, epsilon and its schedule or
relative scaling, unbalanced marginals, centring) and the token marginals
(`marginals`: uniform, idf, token norms or the [CLS] attention row), on the encoder
output or on chosen hidden layers (`layers`).

A pair in which either side has no real token (a padded batch row) is left out
of every average. Teacher token embeddings are treated as constants.

`contrastive_loss` trains the English teacher retriever: softmax cross-entropy of
each query against a document set holding its positive and everyone else's
documents (in-batch and hard negatives), with dense or ColBERT MaxSim scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from optical_jax import ot as ot_lib
from optical_jax import scoring as scoring_lib
from optical_jax import encoder as enc
from optical_jax import norms
from optical_jax.encoder import masked_mean, mean_pool
from optical_jax.errors import InputError, build, field_problems

LOSSES = ("ot", "sentence", "hard", "ot+sentence", "divergence", "barycentric", "ranking",
          "ot+ranking", "divergence+ranking", "barycentric+ranking")
SENTENCE_DISTANCES = ("mse", "cosine")
TOKEN_DISTANCES = ot_lib.BARYCENTRIC_DISTANCES
MARGINALS = ("uniform", "idf", "norm", "cls_attention")
LAYER_COMBINE = ("mean", "sum")


_RULES = (
    ("loss", "choice", dict(choices=LOSSES)),
    ("sentence_distance", "choice", dict(choices=SENTENCE_DISTANCES)),
    ("marginals", "choice", dict(choices=MARGINALS)),
    ("token_distance", "choice", dict(choices=TOKEN_DISTANCES)),
    ("layer_combine", "choice", dict(choices=LAYER_COMBINE)),
    (("student_pooling", "teacher_pooling"), "choice", dict(choices=tuple(enc.POOLING))),
    (("sentence_weight", "ranking_weight"), "number", dict(low=0)),
    ("ranking_temperature", "number", dict(low=0, open_low=True)),
    ("ranking_scoring", "choice", dict(choices=scoring_lib.SCORINGS)),
    (("hard_symmetric", "include_special"), "bool", {}),
    (("src_special", "tgt_special"), "ids", dict(note=" (token ids)")),
    ("layers", "ids", dict(note=" (hidden-state indices)")),
)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """The distillation loss and all its settings; frozen and hashable (a jit-static argument).

  Attributes:
    loss: one of `LOSSES` (see the module docstring). 'ot' is OPTICAL.
    sentence_weight: weight of the sentence term in 'ot+sentence' (ignored
      otherwise).
    sentence_distance: 'mse' (mean squared error of the mean-pooled embeddings,
      as Reimers & Gurevych 2020) or 'cosine' (1 - cosine).
    hard_symmetric: 'hard' loss in both directions (also each teacher token
      to its nearest student token), averaged.
    marginals: token weights of the OT-family and 'hard' losses: 'uniform' over
      real tokens, 'idf'-weighted (then the step passes idf tables, see
      `batch_loss`), 'norm' (proportional to each token vector's norm, of the
      representation transported; no gradient) or 'cls_attention' (each
      encoder's last-layer attention from [CLS] (<s>) to every token, averaged
      over heads; no gradient).
    include_special: whether [CLS]/[SEP] (<s>/</s>) carry mass.
    src_special / tgt_special: the special-token ids of the student / teacher
      tokenizer (set by the trainer from the tokenizers).
    ot: OT settings; `ot.cost` (and `ot.scale_cost`) are also the ground cost of
      the 'hard' loss.
    ranking_weight: weight of the ranking term in '...+ranking' losses.
    ranking_temperature: temperature of both similarity softmaxes of the ranking
      term (cosine similarities of the pooled embeddings).
    ranking_scoring: the ranking term's similarity: 'dense' (pooled cosines) or 'maxsim'
      (per-token-normalised MaxSim over the token vectors; `ranking_loss`).
    token_distance: 'barycentric': 'cosine' (1 - cos) or 'mse' per token.
    layers: () = the token-level terms use the encoder output (after any head);
      otherwise indices of hidden states (0 = embeddings, num_layers = last
      layer before the head; negative from the end, e.g. (-1, -2) = the last
      two), combined by `layer_combine`. Sentence and ranking terms always use
      the output.
    layer_combine: 'mean' or 'sum' of the chosen hidden states.
    student_pooling / teacher_pooling: how the sentence and ranking terms pool each
      side: as the model pools for retrieval ('mean', 'cls', or 'pooler': BERT's
      dense + tanh on the first token, LaBSE; set by the trainer from the model specs).
      'pooler' needs that model's pooler params (`batch_loss(poolers=...)`).
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
  ranking_weight: float = 1.0
  ranking_temperature: float = 0.05
  ranking_scoring: str = "dense"
  token_distance: str = "cosine"
  layers: Tuple[int, ...] = ()
  layer_combine: str = "mean"
  student_pooling: str = "mean"
  teacher_pooling: str = "mean"

  def __post_init__(self):
    problems = field_problems(self, _RULES)
    if not isinstance(self.ot, ot_lib.OTConfig):
      problems.append(f"ot must be an OTConfig, got {type(self.ot).__name__}")
    if (self.loss.startswith("divergence") and isinstance(self.ot, ot_lib.OTConfig)
        and self.ot.grad != "envelope"):
      problems.append("loss 'divergence' needs ot.grad='envelope'")
    if (self.loss.startswith("divergence") and isinstance(self.ot, ot_lib.OTConfig)
        and not self.ot.balanced):
      problems.append("loss 'divergence' needs balanced OT (ot.tau_a = ot.tau_b = 1)")
    if problems:
      raise InputError("invalid distillation config: " + "; ".join(problems))
    object.__setattr__(self, "sentence_weight", float(self.sentence_weight))
    object.__setattr__(self, "ranking_weight", float(self.ranking_weight))
    object.__setattr__(self, "ranking_temperature", float(self.ranking_temperature))
    object.__setattr__(self, "layers", tuple(self.layers))
    for name in ("src_special", "tgt_special"):  # lists from JSON -> hashable tuples
      object.__setattr__(self, name, tuple(getattr(self, name)))

  @property
  def token_term(self) -> Optional[str]:
    """The token-level part of the loss ('ot', 'divergence', 'barycentric', 'hard') or None."""
    head = self.loss.split("+")[0]
    return head if head in ("ot", "divergence", "barycentric", "hard") else None

  @property
  def needs_hidden(self) -> bool:
    """Whether the step must return the encoders' hidden states (`layers`)."""
    return bool(self.layers) and self.token_term is not None

  @property
  def needs_cls_attention(self) -> bool:
    """Whether the step must return the encoders' last-layer [CLS] attention rows."""
    return self.marginals == "cls_attention" and self.token_term is not None

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



# ----------------------------------------------------------------------------- sentence level


def sentence_loss(student_tokens: jnp.ndarray, s_mask: jnp.ndarray, teacher_tokens: jnp.ndarray,
                  t_mask: jnp.ndarray, distance: str = "mse",
                  pooled: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None
                  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Distance between the pooled student and teacher embeddings (mean-pooled by default).

  Args:
    student_tokens: [B, Ls, D]; s_mask [B, Ls] (1 = real token).
    teacher_tokens: [B, Lt, D]; t_mask [B, Lt].
    distance: 'mse' = mean over pairs and dimensions of (s - t)^2 (torch's
      MSELoss, as Reimers & Gurevych 2020); 'cosine' = mean of 1 - cos(s, t).
    pooled: (student [B, D], teacher [B, D]) sentence embeddings to use instead of
      the mean-pooled tokens (`pooled_embeddings`).

  Returns:
    (loss, mean cosine between the pooled embeddings), averaged over pairs with
    real tokens on both sides.
  """
  s, t = pooled if pooled is not None else (mean_pool(student_tokens, s_mask),
                                              mean_pool(teacher_tokens, t_mask))
  valid = _pair_valid(s_mask, t_mask)
  cos = norms.cosine_rows(s, t)
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


# ----------------------------------------------------------------------------- ranking


def ranking_loss(student_tokens: jnp.ndarray, s_mask: jnp.ndarray, teacher_tokens: jnp.ndarray,
                 t_mask: jnp.ndarray, temperature: float = 0.05, axis_name: Optional[str] = None,
                 pooled: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
                 scoring: str = "dense") -> Tuple[jnp.ndarray, jnp.ndarray]:
  """In-batch translation ranking distillation (as PLAID-X translate-distill, PyLate).

  With sim(a, b) the similarity of two sentences, the teacher's distribution over the
  batch's English sentences for row i is p_i = softmax_j(sim(e_i, e_j) / temp) and the
  student's q_i = softmax_j(sim(s_i, e_j) / temp), where s_i is the student's encoding
  of foreign sentence i and e_j the teacher's of English sentence j; the loss is
  mean_i KL(p_i || q_i). `scoring`:
    'dense': sim = cosine of the pooled embeddings (mean-pooled tokens unless `pooled`
      gives the sentence embeddings);
    'maxsim': sim = ColBERT MaxSim over L2-normalised token vectors divided by the first
      sentence's number of real tokens (the mean over its tokens of the best cosine with
      the other's), so that it lies in [-1, 1] like a cosine and the temperature means
      the same: the late-interaction rows PLAID-X distils for MaxSim retrievers.
  Teacher encodings are constants. With `axis_name` (inside a device map) the candidate
  English sentences are those of the whole global batch (all-gathered), so the result
  does not depend on the device count.

  Returns:
    (loss, accuracy: fraction of rows whose student top-1 is its own translation),
    over pairs with real tokens on both sides.
  """
  scoring_lib.check(scoring, "ranking scoring")
  valid = _pair_valid(s_mask, t_mask)
  gather = ((lambda x: jax.lax.all_gather(x, axis_name, tiled=True)) if axis_name is not None
            else (lambda x: x))
  valid_all = gather(valid)
  own = jnp.arange(valid.shape[0])
  if axis_name is not None:
    own = own + jax.lax.axis_index(axis_name) * valid.shape[0]
  if scoring == "dense":
    s, e = pooled if pooled is not None else (mean_pool(student_tokens, s_mask),
                                                mean_pool(teacher_tokens, t_mask))
    s, e = norms.unit_rows(s), jax.lax.stop_gradient(norms.unit_rows(e))
    e_all = gather(e)
    sim_t, sim_s = e @ e_all.T, s @ e_all.T
  else:
    s = norms.unit_rows(student_tokens)
    e = jax.lax.stop_gradient(norms.unit_rows(teacher_tokens))
    e_all, t_mask_all = gather(e), gather(t_mask)
    per_token = lambda q, q_mask: (scoring_lib.maxsim_scores(q, q_mask, e_all, t_mask_all)
                                   / jnp.maximum(jnp.sum(q_mask > 0, -1), 1)[:, None])
    sim_t, sim_s = per_token(e, t_mask), per_token(s, s_mask)
  big_neg = -1e9
  logits_t = jnp.where(valid_all[None, :], sim_t / temperature, big_neg)
  logits_s = jnp.where(valid_all[None, :], sim_s / temperature, big_neg)
  log_p = jax.nn.log_softmax(logits_t, axis=-1)
  log_q = jax.nn.log_softmax(logits_s, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  best = jnp.argmax(jax.lax.stop_gradient(logits_s), axis=-1)
  return masked_mean(kl, valid), masked_mean((best == own).astype(jnp.float32), valid)



# ----------------------------------------------------------------------------- the terms
# A distillation loss is a sum of named terms (`LOSSES`: 'ot', 'ot+ranking', ...): the
# first with weight 1, each later one with its weight field. Each term is a function of
# the batch's inputs and the config returning (value, metrics); `distillation_loss` sums
# them. A new term is one entry in `TERMS` (and, to combine it, `TERM_WEIGHTS`).


@dataclasses.dataclass(frozen=True)
class TermInputs:
  """What the terms read: the token vectors the token-level terms compare (x, y: the
  outputs or `cfg.layers`) with their marginal weights, the output tokens and masks, the
  pooled embeddings, the sentence term (computed once: it gives `sentence_cosine`), the
  OT solve's extra arguments and the mapped device axis."""

  x: jnp.ndarray
  s_weights: jnp.ndarray
  y: jnp.ndarray
  t_weights: jnp.ndarray
  student_tokens: jnp.ndarray
  s_mask: jnp.ndarray
  teacher_tokens: jnp.ndarray
  t_mask: jnp.ndarray
  pooled: Optional[Tuple[jnp.ndarray, jnp.ndarray]]
  sentence: jnp.ndarray
  ot_kw: Dict[str, Any]
  axis_name: Optional[str]


def _sg(v: jnp.ndarray) -> jnp.ndarray:
  return jax.lax.stop_gradient(v)


def _ot_term(i: TermInputs, cfg: DistillConfig):
  value, diagnostics = ot_lib.ot_loss(i.x, i.s_weights, i.y, i.t_weights, cfg.ot, **i.ot_kw)
  return value, {**diagnostics, "ot_loss": _sg(value)}


def _divergence_term(i: TermInputs, cfg: DistillConfig):
  value, diagnostics = ot_lib.divergence_loss(i.x, i.s_weights, i.y, i.t_weights, cfg.ot,
                                              **i.ot_kw)
  return value, {**diagnostics, "divergence_loss": _sg(value)}


def _barycentric_term(i: TermInputs, cfg: DistillConfig):
  value, diagnostics = ot_lib.barycentric_loss(i.x, i.s_weights, i.y, i.t_weights, cfg.ot,
                                               distance=cfg.token_distance, **i.ot_kw)
  return value, {**diagnostics, "barycentric_loss": _sg(value)}


def _hard_term(i: TermInputs, cfg: DistillConfig):
  value = hard_alignment_loss(i.x, i.s_weights, i.y, i.t_weights, cfg.ot.cost,
                              symmetric=cfg.hard_symmetric, scale_cost=cfg.ot.scale_cost)
  return value, {"hard_loss": _sg(value)}


def _sentence_term(i: TermInputs, cfg: DistillConfig):
  del cfg
  return i.sentence, {"sentence_loss": _sg(i.sentence)}


def _ranking_term(i: TermInputs, cfg: DistillConfig):
  rank, acc = ranking_loss(i.student_tokens, i.s_mask, i.teacher_tokens, i.t_mask,
                           cfg.ranking_temperature, i.axis_name, i.pooled, cfg.ranking_scoring)
  return rank, {"ranking_loss": _sg(rank), "ranking_accuracy": acc}


TERMS: Dict[str, Callable[[TermInputs, DistillConfig], Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]] = {
    "ot": _ot_term, "divergence": _divergence_term, "barycentric": _barycentric_term,
    "hard": _hard_term, "sentence": _sentence_term, "ranking": _ranking_term}
# The weight of a term that follows the first one.
TERM_WEIGHTS: Dict[str, Callable[[DistillConfig], float]] = {
    "sentence": lambda cfg: cfg.sentence_weight, "ranking": lambda cfg: cfg.ranking_weight}


def loss_terms(loss: str) -> Tuple[str, ...]:
  """The terms a loss name sums, in order: 'ot+ranking' -> ('ot', 'ranking')."""
  return tuple(loss.split("+"))


def distillation_loss(student_tokens: jnp.ndarray, s_mask: jnp.ndarray, s_weights: jnp.ndarray,
                      teacher_tokens: jnp.ndarray, t_mask: jnp.ndarray, t_weights: jnp.ndarray,
                      cfg: DistillConfig = DistillConfig(), *,
                      student_features: Optional[jnp.ndarray] = None,
                      teacher_features: Optional[jnp.ndarray] = None,
                      epsilon: Optional[jnp.ndarray] = None,
                      centers: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
                      axis_name: Optional[str] = None,
                      pooled: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None
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
    student_features / teacher_features: the token vectors of the token-level
      terms when they are not the outputs (`cfg.layers`); default the tokens.
    epsilon: traced epsilon of the OT solves (`optical_jax.ot.scheduled_epsilon`).
    centers: (student mean, teacher mean) vectors subtracted before the OT cost.
    axis_name: the mapped device axis, for batch-wide terms (ranking candidates).
    pooled: (student, teacher) sentence embeddings [B, D] of the sentence and ranking
      terms (`pooled_embeddings`); default the mean-pooled tokens.

  Returns:
    (loss, metrics): float32 scalars. Metrics always hold 'sentence_cosine'
    (mean cosine of the pooled embeddings) and the loss's components
    ('ot_loss', 'divergence_loss', 'barycentric_loss', 'sentence_loss',
    'hard_loss', 'ranking_loss' as used); with OT also its diagnostics
    (converged_fraction, iterations, plan_entropy, mean_cost, marginal_error,
    reg_ot_cost, plan_mass, epsilon, valid_fraction).
  """
  if cfg.loss not in LOSSES:
    raise ValueError(f"unknown distillation loss {cfg.loss!r}; expected one of {LOSSES}")
  teacher_tokens = jax.lax.stop_gradient(teacher_tokens)
  x = student_tokens if student_features is None else student_features
  y = teacher_tokens if teacher_features is None else jax.lax.stop_gradient(teacher_features)
  x_center, y_center = (None, None) if centers is None else centers
  metrics: Dict[str, jnp.ndarray] = {}
  distance = cfg.sentence_distance
  if pooled is not None:
    pooled = (pooled[0], jax.lax.stop_gradient(pooled[1]))
  sent, cos = sentence_loss(student_tokens, s_mask, teacher_tokens, t_mask, distance, pooled)
  metrics["sentence_cosine"] = jax.lax.stop_gradient(cos)
  inputs = TermInputs(x=x, s_weights=s_weights, y=y, t_weights=t_weights,
                      student_tokens=student_tokens, s_mask=s_mask,
                      teacher_tokens=teacher_tokens, t_mask=t_mask, pooled=pooled, sentence=sent,
                      ot_kw=dict(epsilon=epsilon, x_center=x_center, y_center=y_center),
                      axis_name=axis_name)
  loss = None
  for i, name in enumerate(loss_terms(cfg.loss)):
    value, term_metrics = TERMS[name](inputs, cfg)
    metrics.update(term_metrics)
    loss = value if i == 0 else loss + TERM_WEIGHTS[name](cfg) * value
  loss = loss.astype(jnp.float32)
  return loss, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def token_features(tokens: jnp.ndarray, hidden: Optional[Sequence[jnp.ndarray]],
                   cfg: DistillConfig) -> jnp.ndarray:
  """The token vectors the token-level terms compare: the output tokens, or the
  mean/sum of the hidden states `cfg.layers` (`hidden`: embeddings + every layer)."""
  if not cfg.layers:
    return tokens
  if hidden is None:
    raise ValueError("loss.layers needs the encoders' hidden states")
  n = len(hidden)
  for i in cfg.layers:
    if not -n <= i < n:
      raise ValueError(f"loss.layers index {i} out of range for {n} hidden states "
                       f"(0 = embeddings ... {n - 1} = last layer)")
  chosen = jnp.stack([hidden[i].astype(jnp.float32) for i in cfg.layers])
  return jnp.sum(chosen, axis=0) if cfg.layer_combine == "sum" else jnp.mean(chosen, axis=0)


def _importance(cfg: DistillConfig, features: jnp.ndarray, aux: Optional[Mapping[str, Any]],
                side: str) -> Optional[jnp.ndarray]:
  if cfg.marginals == "norm":
    return jnp.linalg.norm(jax.lax.stop_gradient(features).astype(jnp.float32), axis=-1)
  if cfg.marginals == "cls_attention":
    if not aux or aux.get("cls_attention") is None:
      raise ValueError(f"marginals='cls_attention' needs the {side} encoder's [CLS] attention")
    return aux["cls_attention"]
  return None


def batch_loss(student_tokens: jnp.ndarray, teacher_tokens: jnp.ndarray, batch: Mapping[str, Any],
               cfg: DistillConfig, idf: Optional[Mapping[str, jnp.ndarray]] = None, *,
               step: Optional[jnp.ndarray] = None,
               student_aux: Optional[Mapping[str, Any]] = None,
               teacher_aux: Optional[Mapping[str, Any]] = None,
               axis_name: Optional[str] = None,
               poolers: Optional[Mapping[str, Any]] = None
               ) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The distillation loss of a bitext batch: token marginals per `cfg`, then `distillation_loss`.

  Args:
    student_tokens: [B, Ls, D] student embeddings of `batch['src_ids']` (foreign side).
    teacher_tokens: [B, Lt, D] teacher embeddings of `batch['tgt_ids']` (English side).
    batch: 'src_ids', 'src_mask', 'tgt_ids', 'tgt_mask' ([B, L] int arrays).
    cfg: the loss and its marginals (`marginals`, `include_special`, special ids).
    idf: the step's frozen inputs: for `marginals='idf'` {'src_idf': [student vocab],
      'tgt_idf': [teacher vocab]} (`optical_jax.ot.compute_idf` over the bitext);
      for `ot.center` with `center_source='bitext'` {'src_mean', 'tgt_mean'}
      (mean token vectors, see `optical_jax.trainer`). Other keys are ignored.
    step: the training step (a traced int): drives the epsilon schedule.
    student_aux / teacher_aux: encoder extras ('hidden': embeddings + every
      layer's states, 'cls_attention': [B, L]; `optical_jax.encoder.apply_with`)
      when `cfg.needs_hidden` / `cfg.needs_cls_attention`.
    axis_name: the mapped device axis (inside `shard_map`): batch-wide statistics
      (centring means, ranking candidates) then cover the global batch.
    poolers: {'student': ..., 'teacher': ...} pooler params (the params' `pooler`
      entry) of a side whose pooling is 'pooler'.
  """
  use_idf = cfg.marginals == "idf"
  if use_idf and not (idf and "src_idf" in idf):
    raise ValueError("marginals='idf' needs the idf tables (src_idf, tgt_idf)")
  x = token_features(student_tokens, (student_aux or {}).get("hidden"), cfg)
  y = token_features(jax.lax.stop_gradient(teacher_tokens), (teacher_aux or {}).get("hidden"), cfg)
  s_w = ot_lib.token_weights(batch["src_mask"], batch["src_ids"], special_ids=cfg.src_special,
                             include_special=cfg.include_special,
                             idf=idf["src_idf"] if use_idf else None,
                             importance=_importance(cfg, x, student_aux, "student"))
  t_w = ot_lib.token_weights(batch["tgt_mask"], batch["tgt_ids"], special_ids=cfg.tgt_special,
                             include_special=cfg.include_special,
                             idf=idf["tgt_idf"] if use_idf else None,
                             importance=_importance(cfg, y, teacher_aux, "teacher"))
  centers = None
  if cfg.ot.center and cfg.token_term in ("ot", "divergence", "barycentric"):
    if cfg.ot.center_source == "bitext":
      if not (idf and "src_mean" in idf):
        raise ValueError("ot.center_source='bitext' needs the mean vectors (src_mean, tgt_mean)")
      centers = (idf["src_mean"], idf["tgt_mean"])
    else:
      centers = (ot_lib.token_mean(x, batch["src_mask"], axis_name),
                 ot_lib.token_mean(y, batch["tgt_mask"], axis_name))
  epsilon = ot_lib.scheduled_epsilon(cfg.ot, step)
  return distillation_loss(
      student_tokens, batch["src_mask"], s_w, teacher_tokens, batch["tgt_mask"], t_w, cfg,
      student_features=None if x is student_tokens else x,
      teacher_features=None if not cfg.layers else y, epsilon=epsilon, centers=centers,
      axis_name=axis_name,
      pooled=pooled_embeddings(student_tokens, batch["src_mask"], teacher_tokens,
                               batch["tgt_mask"], cfg, poolers))


def pooled_embeddings(student_tokens: jnp.ndarray, s_mask: jnp.ndarray,
                      teacher_tokens: jnp.ndarray, t_mask: jnp.ndarray, cfg: DistillConfig,
                      poolers: Optional[Mapping[str, Any]] = None
                      ) -> Optional[Tuple[jnp.ndarray, jnp.ndarray]]:
  """(student, teacher) sentence embeddings [B, D] pooled as `cfg.student_pooling` /
  `cfg.teacher_pooling` (not normalised), or None when both are 'mean' (the sentence and
  ranking terms then mean-pool themselves)."""
  if cfg.student_pooling == cfg.teacher_pooling == "mean":
    return None
  poolers = poolers or {}
  out = []
  for side, tokens, mask, pooling in (("student", student_tokens, s_mask, cfg.student_pooling),
                                      ("teacher", teacher_tokens, t_mask, cfg.teacher_pooling)):
    if pooling == "pooler" and poolers.get(side) is None:
      raise ValueError(f"{side}_pooling='pooler' needs the {side}'s pooler params")
    out.append(enc.pool(tokens, mask, pooling, False, poolers.get(side)))
  return out[0], out[1]


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
