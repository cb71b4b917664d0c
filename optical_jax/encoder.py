"""Flax BERT / XLM-RoBERTa encoder (post-LN transformer), projection head and pooling.

One module family covers BERT, mBERT, MiniLM, LaBSE, multilingual-e5 (BERT layout)
and XLM-R (RoBERTa layout: position ids start after the padding id). Parameters are
float32; the compute dtype is a config field (float32 or bfloat16). Everything is a
pure function of (params, input_ids, attention_mask[, rng]):

    model = TextEncoder(cfg)
    tokens = model.apply({"params": params}, ids, mask)                 # eval
    tokens = model.apply({"params": params}, ids, mask, deterministic=False,
                         rngs={"dropout": key})                         # train

The parameter tree mirrors Hugging Face names (`embeddings/word_embeddings`,
`layer_0/attention/query`, ...) so that `optical_jax.weights` converts checkpoints
with a fixed, checkable name map.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from optical_jax import norms

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION = ("einsum", "fused")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of a BERT-family encoder. Defaults are BERT-base's.

  Attributes:
    position_style: 'bert' (position ids 0..L-1) or 'roberta' (XLM-R: ids of real
      tokens count up from pad_token_id + 1; padding positions get pad_token_id).
    head_dim: output size of an optional linear projection head on the token
      embeddings (ColBERT-style, e.g. 128); None for no head.
    pooler: whether the params hold BERT's pooler (`pooler`: dense hidden -> hidden, then
      tanh, on the first token), which pooling 'pooler' uses (LaBSE's sentence
      embedding). The token embeddings are the same with or without it; it cannot be
      combined with a head (the pooler maps hidden states).
    dtype: compute dtype ('float32' or 'bfloat16'); parameters stay float32.
    attention: 'einsum' (explicit softmax in float32: attention dropout and the [CLS]
      attention intermediates; the default, whose outputs every committed result was
      made with) or 'fused' (`jax.nn.dot_product_attention`, which takes the cuDNN /
      TPU fused kernels where present; no dropout on attention probabilities, so it
      needs attention_dropout=0, and no [CLS] attention marginals).
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  position_style: str = "bert"
  hidden_act: str = "gelu"
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  head_dim: Optional[int] = None
  pooler: bool = False
  dtype: str = "float32"
  attention: str = "einsum"

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
    if self.position_style not in ("bert", "roberta"):
      raise ValueError(f"position_style must be 'bert' or 'roberta', got {self.position_style!r}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
    if self.attention not in ATTENTION:
      raise ValueError(f"attention must be one of {ATTENTION}, got {self.attention!r}")
    if self.attention == "fused" and self.attention_dropout:
      raise ValueError("attention='fused' has no dropout on attention probabilities: set "
                       "attention_dropout=0")
    if self.pooler and self.head_dim:
      raise ValueError("pooler and head_dim cannot be combined (the BERT pooler maps hidden states)")

  @property
  def output_dim(self) -> int:
    return self.head_dim or self.hidden_size

  def replace(self, **kwargs) -> "EncoderConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "EncoderConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown encoder config keys: {unknown}")
    return cls(**d)


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF 'gelu' is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def position_ids(input_ids: jnp.ndarray, cfg: EncoderConfig) -> jnp.ndarray:
  """Position ids per the architecture: BERT counts from 0; XLM-R from pad_id + 1."""
  if cfg.position_style == "roberta":
    real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
  return jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)


def _dense(features: int, cfg: EncoderConfig, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=_DTYPES[cfg.dtype], param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(cfg: EncoderConfig, name: str) -> nn.LayerNorm:
  # LayerNorm statistics in float32 whatever the compute dtype.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      name=name)


class Embeddings(nn.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool, word_vectors=None):
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    if word_vectors is None:
      word = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                      name="word_embeddings")(input_ids)
    else:   # read by the caller from a row view of the table (optical_jax.sparse_rows)
      word = word_vectors
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                   name="position_embeddings")(position_ids(input_ids, cfg))
    typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                   name="token_type_embeddings")(token_type_ids)
    x = _layer_norm(cfg, "LayerNorm")(word + pos + typ)
    x = nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)
    return x.astype(_DTYPES[cfg.dtype])


class SelfAttention(nn.Module):
  """Multi-head self-attention over real tokens (padding keys masked out)."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    cfg = self.cfg
    b, l, _ = x.shape
    h, dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    # Heads-major [b, h, l, d]: XLA:CPU lowers the two attention matmuls on this layout to
    # fast batched GEMMs (1.45-1.7x faster forward at length 128-256 than on [b, l, h, d];
    # see docs/performance.md); the outputs are the same.
    if cfg.attention == "fused":   # [b, l, h, d] is dot_product_attention's layout
      q, k, v = (_dense(cfg.hidden_size, cfg, n)(x).reshape(b, l, h, dh)
                 for n in ("query", "key", "value"))
      keep = jnp.broadcast_to(attention_mask[:, None, None, :] > 0, (b, h, l, l))
      ctx = jax.nn.dot_product_attention(q, k, v, mask=keep)
      return ctx.reshape(b, l, cfg.hidden_size)
    split = lambda t: t.reshape(b, l, h, dh).transpose(0, 2, 1, 3)
    q = split(_dense(cfg.hidden_size, cfg, "query")(x))
    k = split(_dense(cfg.hidden_size, cfg, "key")(x))
    v = split(_dense(cfg.hidden_size, cfg, "value")(x))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(dh)
    big_neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(attention_mask[:, None, None, :] > 0, logits, big_neg)
    probs = jax.nn.softmax(logits, axis=-1)
    # Kept only when the caller asks for the 'intermediates' collection (`apply_with`);
    # otherwise a no-op that XLA removes: default outputs and speed are unchanged.
    self.sow("intermediates", "cls_attention", jnp.mean(probs[:, :, 0, :], axis=1))
    probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
    return ctx.transpose(0, 2, 1, 3).reshape(b, l, cfg.hidden_size)


class Layer(nn.Module):
  """One post-LN transformer layer: attention + residual + LN, FFN + residual + LN."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    cfg = self.cfg
    dt = _DTYPES[cfg.dtype]
    ctx = SelfAttention(cfg, name="attention")(x, attention_mask, deterministic)
    attn = _dense(cfg.hidden_size, cfg, "attention_output")(ctx)
    attn = nn.Dropout(cfg.hidden_dropout)(attn, deterministic=deterministic)
    x = _layer_norm(cfg, "attention_LayerNorm")(attn + x).astype(dt)
    hid = _ACTIVATIONS[cfg.hidden_act](_dense(cfg.intermediate_size, cfg, "intermediate")(x))
    out = _dense(cfg.hidden_size, cfg, "output")(hid)
    out = nn.Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
    return _layer_norm(cfg, "output_LayerNorm")(out + x).astype(dt)


class Encoder(nn.Module):
  """The transformer body: token ids -> last-layer token embeddings [B, L, hidden]."""

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True,
               word_vectors=None):
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = Embeddings(self.cfg, name="embeddings")(input_ids, token_type_ids, deterministic,
                                                word_vectors)
    self.sow("intermediates", "hidden", x)
    for i in range(self.cfg.num_layers):
      x = Layer(self.cfg, name=f"layer_{i}")(x, attention_mask, deterministic)
      self.sow("intermediates", "hidden", x)
    return x


class TextEncoder(nn.Module):
  """Encoder plus the optional projection head: token ids -> token embeddings (float32).

  Params: {'encoder': ..., 'head': {'kernel'}} (head only when cfg.head_dim is set).
  Padding positions are returned as they come; pooling and scoring use the mask.
  """

  cfg: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic: bool = True,
               word_vectors=None):
    x = Encoder(self.cfg, name="encoder")(input_ids, attention_mask, token_type_ids, deterministic,
                                          word_vectors)
    if self.cfg.head_dim:
      x = _dense(self.cfg.head_dim, self.cfg, "head", use_bias=False)(x)
    return x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(cfg: EncoderConfig, rng: jax.Array, seq_len: int = 8) -> Dict[str, Any]:
  """Random parameters (BERT initialisation: normal(0.02), LayerNorm 1/0); one compilation.

  With `cfg.pooler`, also `pooler` (from a key folded off `rng`: the encoder's params are
  the same as without it).
  """
  ids = jnp.ones((1, seq_len), jnp.int32) * (cfg.pad_token_id + 3)
  params = TextEncoder(cfg).init(rng, ids, jnp.ones_like(ids))["params"]
  if cfg.pooler:
    params = {**params, "pooler": init_pooler(cfg, jax.random.fold_in(rng, 2))}
  return params


def init_pooler(cfg: EncoderConfig, rng: jax.Array) -> Dict[str, Any]:
  """Fresh BERT pooler params: kernel [hidden, hidden] normal(0.02), bias 0."""
  kernel = nn.initializers.normal(0.02)(rng, (cfg.hidden_size, cfg.hidden_size), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((cfg.hidden_size,), jnp.float32)}


def init_head(cfg: EncoderConfig, rng: jax.Array) -> Dict[str, Any]:
  """Fresh projection-head params (for adding a head on top of converted weights)."""
  assert cfg.head_dim, "config has no head_dim"
  kernel = nn.initializers.normal(0.02)(rng, (cfg.hidden_size, cfg.head_dim), jnp.float32)
  return {"kernel": kernel}


def apply(params, input_ids, attention_mask, *, cfg: EncoderConfig, deterministic: bool = True,
          rng: Optional[jax.Array] = None, token_type_ids=None, word_vectors=None) -> jnp.ndarray:
  """Pure-function form: (params, ids, mask[, rng]) -> token embeddings [B, L, D] float32.

  Dropout is active only when `deterministic=False`, driven by `rng`. `word_vectors`
  [B, L, hidden]: the ids' word embeddings, read by the caller (a row-sparse step,
  `optical_jax.sparse_rows`); the table in `params` is then not read.
  """
  rngs = None if deterministic else {"dropout": rng}
  return TextEncoder(cfg).apply({"params": params}, input_ids, attention_mask, token_type_ids,
                                deterministic, word_vectors, rngs=rngs)


def apply_with(params, input_ids, attention_mask, *, cfg: EncoderConfig, hidden: bool = False,
               cls_attention: bool = False, deterministic: bool = True,
               rng: Optional[jax.Array] = None, token_type_ids=None, word_vectors=None):
  """`apply` that also returns internal states: (tokens [B, L, D], extras).

  extras: 'hidden' (when asked): tuple of num_layers + 1 arrays [B, L, hidden] —
  the embeddings, then every layer's output (before any projection head);
  'cls_attention' (when asked): [B, L] float32, the last layer's attention
  probabilities from the first token ([CLS] / <s>) to every token, averaged over
  heads (before dropout). With neither asked it is exactly `apply` (and `{}`).
  """
  if cls_attention and cfg.attention == "fused":
    raise ValueError("[CLS] attention marginals need attention='einsum' (the fused kernel "
                     "does not return attention probabilities)")
  if not (hidden or cls_attention):
    return apply(params, input_ids, attention_mask, cfg=cfg, deterministic=deterministic,
                 rng=rng, token_type_ids=token_type_ids, word_vectors=word_vectors), {}
  rngs = None if deterministic else {"dropout": rng}
  tokens, state = TextEncoder(cfg).apply({"params": params}, input_ids, attention_mask,
                                         token_type_ids, deterministic, word_vectors, rngs=rngs,
                                         mutable=["intermediates"])
  inter = state["intermediates"]["encoder"]
  extras = {}
  if hidden:
    extras["hidden"] = tuple(inter["hidden"])
  if cls_attention:
    last = inter[f"layer_{cfg.num_layers - 1}"]["attention"]["cls_attention"][0]
    extras["cls_attention"] = jax.lax.stop_gradient(last.astype(jnp.float32))
  return tokens, extras


# --- pooling and normalisation: small separate pieces on top of the token embeddings ---

def masked_mean(values: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """Mean of `values` where `valid` is true (0 when none is): e.g. a loss over real pairs."""
  return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def mean_pool(tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean of the real tokens' embeddings: [B, L, D], [B, L] -> [B, D]."""
  dtype = jnp.promote_types(tokens.dtype, jnp.float32)  # float32, or float64 when given
  m = mask.astype(dtype)[..., None]
  return jnp.sum(tokens.astype(dtype) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def cls_pool(tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """The first token's embedding ([CLS] or <s>)."""
  del mask
  return tokens[:, 0].astype(jnp.float32)


def pooler_pool(tokens: jnp.ndarray, mask: jnp.ndarray, pooler: Optional[Dict[str, Any]]
                ) -> jnp.ndarray:
  """BERT's pooler output: tanh(first token @ kernel + bias) (LaBSE's sentence embedding).

  `pooler` is the params' `pooler` entry (`EncoderConfig.pooler`), in float32.
  """
  del mask
  if pooler is None:
    raise ValueError("pooling 'pooler' needs the encoder's pooler params (EncoderConfig.pooler)")
  first = tokens[:, 0].astype(jnp.float32)
  return jnp.tanh(first @ jnp.asarray(pooler["kernel"], jnp.float32)
                  + jnp.asarray(pooler["bias"], jnp.float32))



POOLING = {"mean": lambda tokens, mask, pooler: mean_pool(tokens, mask),
           "cls": lambda tokens, mask, pooler: cls_pool(tokens, mask),
           "pooler": pooler_pool}


def pool(tokens: jnp.ndarray, mask: jnp.ndarray, pooling: str, normalize: bool,
         pooler: Optional[Dict[str, Any]] = None) -> jnp.ndarray:
  """Sentence embedding by name ('mean', 'cls' or 'pooler'), optionally L2-normalised.

  `pooler`: the params' `pooler` entry, which 'pooler' needs (`params.get('pooler')`).
  """
  if pooling not in POOLING:
    raise ValueError(f"pooling must be one of {sorted(POOLING)}, got {pooling!r}")
  out = POOLING[pooling](tokens, mask, pooler)
  return norms.unit(out) if normalize else out
