"""Adversarial language invariance: a discriminator on pooled embeddings behind a gradient-reversal layer.

A small MLP (`Discriminator`) reads one pooled sentence embedding and says whether it is
the student's embedding of a foreign sentence (label 1) or the frozen teacher's
embedding of an English sentence (label 0). Within the distillation step (DANN, Ganin
et al. 2016) the total loss is

    distillation loss + weight * BCE(D(GRL(student pooled)), 1) + weight * BCE(D(teacher pooled), 0)

where the gradient-reversal layer GRL is the identity going forward and multiplies the
gradient by -scale(step) going back. So the discriminator descends the BCE (it learns to
tell the two apart) while the student ascends it (it learns to make its foreign
embeddings look like the teacher's English ones). `scale` follows `schedule`: 'constant'
(1) or 'dann', 2 / (1 + exp(-10 p)) - 1 with p = step / ramp_steps (0 at the start,
about 1 after `ramp_steps`), so the student meets the adversary only once it has had time
to learn.

The discriminator's params are auxiliary train-state params (`step.TrainState.aux_params`
under 'discriminator', with their own optimizer state): checkpointed, never exported.
The teacher side carries no gradient (the teacher is frozen).

Telling the languages of a multilingual mixture apart (one class per language) is not
built: the bitext batches carry no language id (their sources are not languages).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from optical_jax import encoder as enc
from optical_jax import norms
from optical_jax.errors import InputError, build, field_problems

SCHEDULES = ("constant", "dann")
POOLINGS = tuple(sorted(enc.POOLING))
NAME = "discriminator"   # its key in `TrainState.aux_params`

_RULES = (
    ("weight", "number", dict(low=0)),
    ("hidden_size", "int", dict(low=1)),
    ("num_layers", "int", dict(low=0)),
    ("lr", "number", dict(low=0, open_low=True)),
    ("schedule", "choice", dict(choices=SCHEDULES)),
    ("ramp_steps", "int", dict(low=1)),
    ("pooling", "choice", dict(choices=POOLINGS)),
    ("normalize", "bool", {}),
)


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
  """The adversary and its schedule; frozen and hashable (part of the jit-static step spec).

  Attributes:
    weight: weight of the discriminator BCE in the total loss (> 0 when built; the
      trainer builds no discriminator for 0).
    hidden_size: width of each hidden layer of the MLP.
    num_layers: hidden layers (0 = a logistic regression on the embedding).
    lr: the discriminator's peak learning rate (its own AdamW, same warm-up and decay
      shape, weight decay and clipping as the student's).
    schedule: the reversed gradient's scale over training, 'constant' (1) or 'dann'.
    ramp_steps: 'dann': the steps over which the scale ramps from 0 towards 1.
    pooling: 'mean' or 'cls' pooling of both sides' token embeddings.
    normalize: L2-normalise the pooled embeddings before the discriminator (the
      retrieval geometry is cosine).
  """

  weight: float = 0.0
  hidden_size: int = 256
  num_layers: int = 1
  lr: float = 1e-3
  schedule: str = "constant"
  ramp_steps: int = 1000
  pooling: str = "mean"
  normalize: bool = True

  def __post_init__(self):
    problems = field_problems(self, _RULES)
    if problems:
      raise InputError("invalid adversarial config: " + "; ".join(problems))
    object.__setattr__(self, "weight", float(self.weight))
    object.__setattr__(self, "lr", float(self.lr))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "AdversarialConfig":
    """Builds a config from a mapping; InputError for unknown keys or bad values."""
    return build(cls, d, "adversarial config")


class Discriminator(nn.Module):
  """MLP [B, D] -> [B] logits (foreign student = positive): `num_layers` x (Dense, GELU), Dense(1)."""

  hidden_size: int
  num_layers: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))   # float32 (float64 in checks)
    for i in range(self.num_layers):
      x = nn.gelu(nn.Dense(self.hidden_size, name=f"hidden_{i}")(x))
    return nn.Dense(1, name="out")(x)[:, 0]


def discriminator(cfg: AdversarialConfig) -> Discriminator:
  return Discriminator(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers)


def init_params(cfg: AdversarialConfig, dim: int, rng: jax.Array) -> Dict[str, Any]:
  """Fresh discriminator params for `dim`-sized embeddings (float32)."""
  return discriminator(cfg).init(rng, jnp.zeros((1, dim), jnp.float32))["params"]


@jax.custom_vjp
def reverse_gradient(x: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """Gradient reversal: `x` going forward; the cotangent times -scale going back (none to `scale`)."""
  del scale
  return x


def _reverse_fwd(x, scale):
  return x, scale


def _reverse_bwd(scale, g):
  return (-scale * g).astype(g.dtype), jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def reversal_scale(cfg: AdversarialConfig, step: jnp.ndarray) -> jnp.ndarray:
  """The GRL's scale at `step` (a traced int: one compilation for every step)."""
  if cfg.schedule == "constant":
    return jnp.ones((), jnp.float32)
  p = jnp.asarray(step, jnp.float32) / cfg.ramp_steps
  return 2.0 / (1.0 + jnp.exp(-10.0 * p)) - 1.0


def _pooled(tokens: jnp.ndarray, mask: jnp.ndarray, cfg: AdversarialConfig) -> jnp.ndarray:
  """[B, L, D] -> [B, D]; normalised with a finite gradient for an empty (all-padding) row."""
  pooled = enc.pool(tokens, mask, cfg.pooling, False)
  return norms.unit_rows(pooled) if cfg.normalize else pooled


def _bce(logits: jnp.ndarray, label: float) -> jnp.ndarray:
  """Per-row binary cross-entropy of logits against a constant label."""
  return jnp.logaddexp(0.0, logits) - label * logits


def adversarial_loss(params: Any, student_tokens: jnp.ndarray, s_mask: jnp.ndarray,
                     teacher_tokens: jnp.ndarray, t_mask: jnp.ndarray, cfg: AdversarialConfig,
                     step: jnp.ndarray) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
  """The discriminator's BCE over the batch's pooled student (foreign) and teacher (English) embeddings.

  The student's embeddings pass through `reverse_gradient` at `reversal_scale(step)`; the
  teacher's are constants. Rows whose side has no real token (padding rows) are left out.

  Returns:
    (loss: mean BCE over the valid rows of both sides (the two sides weigh the same),
    metrics: 'adv_loss', 'adv_accuracy' (fraction of valid embeddings classified right at
    logit 0), 'adv_scale' (the reversal scale)).
  """
  scale = reversal_scale(cfg, step)
  s, t = _pooled(student_tokens, s_mask, cfg), jax.lax.stop_gradient(_pooled(teacher_tokens, t_mask, cfg))
  s = reverse_gradient(s, scale)
  s_valid, t_valid = jnp.any(s_mask > 0, axis=-1), jnp.any(t_mask > 0, axis=-1)
  logits = discriminator(cfg).apply({"params": params}, jnp.concatenate([s, t], axis=0))
  n = s.shape[0]
  s_logits, t_logits = logits[:n], logits[n:]
  loss = 0.5 * (enc.masked_mean(_bce(s_logits, 1.0), s_valid)
                + enc.masked_mean(_bce(t_logits, 0.0), t_valid))
  right = jnp.concatenate([s_logits > 0, t_logits <= 0]).astype(jnp.float32)
  accuracy = enc.masked_mean(right, jnp.concatenate([s_valid, t_valid]))
  metrics = {"adv_loss": jax.lax.stop_gradient(loss), "adv_accuracy": accuracy, "adv_scale": scale}
  return loss, metrics
