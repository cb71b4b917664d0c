"""Train state, the per-device update functions (distillation, teacher training) and their device mapping.

One code path maps a per-device function over every device of a 1-D `data` mesh with
`jax.shard_map` (check_vma=False, see `map_over_devices`). The per-device function
sees its slice of the global batch, averages gradients and metrics with named-axis
collectives (`lax.pmean` over 'data'), and applies one optax update. The mapped
function is jitted once per input-shape bucket and donates the old train state.

The teacher's params are an argument of the step: never differentiated, never in
the optimizer state, never in the checkpoint. Only the student (encoder and head)
trains.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Dict, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from optical_jax import encoder as enc
from optical_jax import losses, scoring
from optical_jax.mesh import AXIS, make_mesh, replicate, shard_batch  # noqa: F401  (the step's API)

Batch = Dict[str, jnp.ndarray]


@flax.struct.dataclass
class TrainState:
  """Everything a training run checkpoints (the teacher is deliberately not here)."""

  step: jnp.ndarray          # int32 scalar
  params: Any                # student params
  opt_state: Any
  rng: jax.Array             # raw uint32 key; per-step keys are fold_in(rng, step)
  skipped: jnp.ndarray       # int32 count of updates skipped for non-finite values


# --------------------------------------------------------------------------------------
# Optimiser

def make_schedule(lr: float, steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up to `lr`, then linear decay to 0 at `steps`."""
  warmup_steps = max(0, min(warmup_steps, steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
       optax.linear_schedule(lr, 0.0, max(steps - warmup_steps, 1))],
      boundaries=[warmup_steps])


def trainable_mask(params, freeze: Sequence[str]):
  """True for params that train; a param freezes when a regex in `freeze` matches its path."""
  pats = [re.compile(p) for p in freeze]

  def keep(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return not any(p.search(name) for p in pats)

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(params, *, lr: float, steps: int, warmup_steps: int, weight_decay: float,
                   clip_norm: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   freeze: Sequence[str] = ()) -> optax.GradientTransformation:
  """AdamW with linear warm-up and decay, global-norm clipping, optional frozen params."""
  tx = optax.chain(
      optax.clip_by_global_norm(clip_norm) if clip_norm > 0 else optax.identity(),
      optax.adamw(make_schedule(lr, steps, warmup_steps), b1=b1, b2=b2, eps=eps,
                  weight_decay=weight_decay))
  if freeze:
    mask = trainable_mask(params, freeze)
    tx = optax.multi_transform({True: tx, False: optax.set_to_zero()}, mask)
  return tx


def init_state(params, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, skipped=jnp.zeros((), jnp.int32))


def replicated_state(params, tx: optax.GradientTransformation, rng: jax.Array,
                     frozen: Dict[str, Any], mesh: jax.sharding.Mesh
                     ) -> Tuple[TrainState, Dict[str, Any]]:
  """(train state, frozen inputs) replicated on `mesh`, ready for `make_distill_step` and
  `make_teacher_step`.

  The state is built on the host first: the first (donated) step would otherwise
  delete the caller's param arrays. `frozen` holds what the step reads but never
  trains, e.g. {'teacher': teacher params}.
  """
  state = jax.tree.map(np.asarray, init_state(params, tx, rng))
  return replicate(state, mesh), replicate(frozen, mesh)


# --------------------------------------------------------------------------------------
# The per-device functions

@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """Static description of a distillation step (hashable: a jit-static argument).

  Attributes:
    student, teacher: encoder architectures.
    loss: the distillation loss with all its settings (`losses.DistillConfig`: OT,
      marginals, special tokens).
    skip_nonfinite: skip (and count) an update whose loss or gradients are not finite;
      otherwise it is applied and the caller stops training on the reported flag.
    teacher_from_batch: the batch carries the teacher's token embeddings (`tgt_tokens`,
      from `optical_jax.teacher_cache`) and the step does not run the teacher.
  """

  student: enc.EncoderConfig
  teacher: enc.EncoderConfig
  loss: losses.DistillConfig = losses.DistillConfig()
  skip_nonfinite: bool = False
  teacher_from_batch: bool = False


def _finite_tree(tree) -> jnp.ndarray:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _apply_update(state: TrainState, grads, loss, metrics, tx, skip_nonfinite: bool):
  """Averaged grads -> new state; handles non-finite values; adds common metrics."""
  if jax.lax.axis_size(AXIS) > 1:  # static; on one device XLA would still copy every grad
    grads = jax.lax.pmean(grads, AXIS)
    loss = jax.lax.pmean(loss, AXIS)
    metrics = jax.lax.pmean(metrics, AXIS)
  finite = jnp.logical_and(jnp.isfinite(loss), _finite_tree(grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            skipped=state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32))
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                 finite=finite.astype(jnp.float32), skipped=new_state.skipped.astype(jnp.float32))
  return new_state, metrics


def _step_rng(state: TrainState) -> jax.Array:
  rng = jax.random.fold_in(state.rng, state.step)
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))


def distill_step_local(state: TrainState, frozen: Dict[str, Any], batch: Batch, *,
                       spec: DistillSpec, tx: optax.GradientTransformation):
  """One OPTICAL update on this device's slice of the batch.

  Args:
    state: the student's train state (replicated).
    frozen: {'teacher': teacher params, and 'src_idf'/'tgt_idf' for idf marginals,
      'src_mean'/'tgt_mean' for bitext-centred costs} (replicated; never differentiated).
    batch: src_ids/src_mask (foreign side, student) and tgt_ids/tgt_mask (English
      side, teacher), each [local_batch, bucket_len]; with `spec.teacher_from_batch`
      also tgt_tokens [local_batch, bucket_len, D].
  """
  outputs = dict(hidden=spec.loss.needs_hidden, cls_attention=spec.loss.needs_cls_attention)
  if spec.teacher_from_batch:   # cached: see optical_jax.teacher_cache
    teacher_tokens, teacher_aux = batch["tgt_tokens"].astype(jnp.float32), {}
  else:
    teacher_tokens, teacher_aux = enc.apply_with(frozen["teacher"], batch["tgt_ids"],
                                                 batch["tgt_mask"], cfg=spec.teacher, **outputs)
  teacher_tokens, teacher_aux = jax.lax.stop_gradient((teacher_tokens, teacher_aux))
  rng = _step_rng(state)

  def loss_fn(params):
    student_tokens, student_aux = enc.apply_with(params, batch["src_ids"], batch["src_mask"],
                                                 cfg=spec.student, deterministic=False, rng=rng,
                                                 **outputs)
    return losses.batch_loss(student_tokens, teacher_tokens, batch, spec.loss, idf=frozen,
                             step=state.step, student_aux=student_aux, teacher_aux=teacher_aux,
                             axis_name=AXIS)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return _apply_update(state, grads, loss, metrics, tx, spec.skip_nonfinite)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """Static description of a teacher (English retrieval) training step."""

  encoder: enc.EncoderConfig
  scoring: str = "dense"        # 'dense' (pooled, cosine) or 'maxsim' (late interaction)
  pooling: str = "mean"
  temperature: float = 0.05
  skip_nonfinite: bool = False


def teacher_step_local(state: TrainState, frozen: Dict[str, Any], batch: Batch, *,
                       spec: TeacherSpec, tx: optax.GradientTransformation):
  """Contrastive update with in-batch negatives gathered across all devices.

  Each device encodes its queries, positives and hard negatives; documents of every
  device are all-gathered so each query scores against the global set. Query i on
  device r has its positive at global index r * local_batch + i.
  """
  del frozen
  rng = _step_rng(state)
  r1, r2 = jax.random.split(rng)
  n_local = batch["q_ids"].shape[0]

  def encode(params, ids, mask, key):
    tokens = enc.apply(params, ids, mask, cfg=spec.encoder, deterministic=False, rng=key)
    return scoring.embed(tokens, mask, spec.scoring, spec.pooling, True, params.get("pooler")), mask

  def loss_fn(params):
    q, q_mask = encode(params, batch["q_ids"], batch["q_mask"], r1)
    d_ids, d_mask = batch["p_ids"], batch["p_mask"]
    if "n_ids" in batch and batch["n_ids"].shape[0]:
      # Hard negatives share the passage bucket: [local, n_neg, L] -> [local * n_neg, L].
      n_ids = batch["n_ids"].reshape(-1, batch["n_ids"].shape[-1])
      n_mask = batch["n_mask"].reshape(-1, batch["n_mask"].shape[-1])
      d_ids = jnp.concatenate([d_ids, n_ids], axis=0)
      d_mask = jnp.concatenate([d_mask, n_mask], axis=0)
    d, d_mask = encode(params, d_ids, d_mask, r2)
    # Gather documents of every device; gradients flow back to each device's own docs.
    d_all = jax.lax.all_gather(d, AXIS, tiled=True)
    d_mask_all = jax.lax.all_gather(d_mask, AXIS, tiled=True)
    n_dev_docs = d.shape[0]
    rank = jax.lax.axis_index(AXIS)
    # Positives of device r sit at r * n_dev_docs + i (positives first in each block).
    positives = rank * n_dev_docs + jnp.arange(n_local)
    loss, metrics = losses.contrastive_loss(
        q, d_all, positives, scoring=spec.scoring, q_mask=q_mask, d_mask=d_mask_all,
        temperature=spec.temperature)
    return loss, metrics

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # all_gather's transpose sums the cotangents of every device into each device's own
  # docs, so the local grads already include the cross-device terms; pmean averages.
  return _apply_update(state, grads, loss, metrics, tx, spec.skip_nonfinite)


# --------------------------------------------------------------------------------------
# Mapping over devices

def map_over_devices(local_fn: Callable, mesh: jax.sharding.Mesh, *, donate_state: bool = True):
  """Maps `local_fn(state, frozen, batch) -> (state, metrics)` over the `data` mesh, jitted.

  Why shard_map rather than pmap: in jax 0.10 `jax.pmap` is in maintenance mode and is
  itself implemented on shard_map; using shard_map directly gives one code path that
  works with global `jax.Array`s across several hosts (each host feeds its own slice)
  and composes with jit's donation and compilation cache. check_vma=False because
  ott-jax 0.6.0's Sinkhorn loop fails the varying-manual-axes check.

  The returned function compiles once per distinct batch shape (length bucket) and
  donates the incoming train state.
  """
  mapped = jax.shard_map(local_fn, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                         out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())


def make_distill_step(spec: DistillSpec, tx: optax.GradientTransformation,
                      mesh: jax.sharding.Mesh, donate_state: bool = True):
  return map_over_devices(functools.partial(distill_step_local, spec=spec, tx=tx), mesh,
                          donate_state=donate_state)


def make_teacher_step(spec: TeacherSpec, tx: optax.GradientTransformation,
                      mesh: jax.sharding.Mesh, donate_state: bool = True):
  return map_over_devices(functools.partial(teacher_step_local, spec=spec, tx=tx), mesh,
                          donate_state=donate_state)


def host_metrics(metrics: Dict[str, jax.Array]) -> Dict[str, float]:
  return {k: float(np.asarray(jax.device_get(v))) for k, v in metrics.items()}
