"""The training loop behind `train.py`: wires models, data, the step, checkpoints and logging.

`run(config, workdir)` trains in 'distill' mode (OPTICAL: the student query encoder
learns from bitext against the frozen teacher) or 'teacher' mode (contrastive English
retrieval training). Rerunning with the same workdir resumes from the latest complete
checkpoint (params, optimizer state, step, rng and data position), so a killed run
continues exactly where its last checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from optical_jax import assets, checkpoint, losses, models, ot, step as step_lib, validation
from optical_jax.config import to_json
from optical_jax.data import bitext as bitext_lib
from optical_jax.data import pipeline, retrieval_train
from optical_jax.errors import InputError
from optical_jax.fileio import write_json, write_text
from optical_jax.monitor import MetricWriter, Progress

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Loss or gradients became NaN/inf (and the config does not skip such updates)."""


@dataclasses.dataclass
class Result:
  workdir: str
  step: int
  export_dir: str
  last_metrics: Dict[str, float]
  resumed_from: Optional[int]
  compilations: int


def maybe_initialize_distributed(config) -> None:
  d = config.distributed
  if not d.initialize:
    return
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  kwargs = {}
  if d.coordinator_address:
    kwargs["coordinator_address"] = d.coordinator_address
  if d.num_processes:
    kwargs["num_processes"] = int(d.num_processes)
  if d.process_id >= 0:
    kwargs["process_id"] = int(d.process_id)
  if d.local_device_ids:
    kwargs["local_device_ids"] = [int(x) for x in str(d.local_device_ids).split(",")]
  jax.distributed.initialize(**kwargs)


def _cache_dir(config) -> str:
  return config.data.cache_dir or os.path.join(assets.cache_dir(), "tokens")


def _distill_spec(config, student: models.Model, teacher: models.Model) -> step_lib.DistillSpec:
  if student.cfg.output_dim != teacher.cfg.output_dim:
    raise InputError(
        f"student embedding size {student.cfg.output_dim} != teacher's {teacher.cfg.output_dim}: "
        f"set --config.student.head_dim={teacher.cfg.output_dim} to add a projection head")
  if config.loss.marginals not in ("uniform", "idf"):
    raise InputError(f"loss.marginals must be 'uniform' or 'idf', got {config.loss.marginals!r}")
  loss_cfg = losses.DistillConfig.from_dict(
      dict(loss=config.loss.loss, sentence_weight=config.loss.sentence_weight,
           sentence_distance=config.loss.sentence_distance, ot=config.loss.ot.to_dict()))
  return step_lib.DistillSpec(
      student=student.cfg, teacher=teacher.cfg, loss=loss_cfg,
      src_special=tuple(student.tokenizer.special_ids),
      tgt_special=tuple(teacher.tokenizer.special_ids),
      include_special=bool(config.loss.include_special), marginals=config.loss.marginals,
      skip_nonfinite=bool(config.train.skip_nonfinite))


def _build_distill(config, mesh):
  teacher = models.load_model(config.teacher, where="teacher")
  student = models.load_model(config.student, rng=jax.random.PRNGKey(config.seed), where="student")
  spec = _distill_spec(config, student, teacher)
  mixture = bitext_lib.load_mixture(config.data.bitext.to_dict())
  pcfg = pipeline.PipelineConfig(
      global_batch=int(config.data.global_batch),
      src_max_length=student.max_len("query"), tgt_max_length=teacher.max_len("query"),
      buckets=tuple(config.data.buckets), src_prefix=student.prefix("query"),
      tgt_prefix=teacher.prefix("query"), remainder="drop",
      seed=int(config.seed), cache_dir=_cache_dir(config))
  batches = pipeline.BitextBatches(mixture, student.tokenizer, teacher.tokenizer, pcfg,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  validate = _make_validation(config, student, teacher)
  frozen: Dict[str, Any] = {"teacher": teacher.params}
  if config.loss.marginals == "idf":
    frozen["src_idf"] = ot.compute_idf(_rows(batches.src), student.cfg.vocab_size)
    frozen["tgt_idf"] = ot.compute_idf(_rows(batches.tgt), teacher.cfg.vocab_size)
  return student, spec, batches, frozen, validate


def _make_validation(config, student: models.Model, teacher: models.Model):
  """A function params -> val_* metrics on held-out bitext, or None when none is configured."""
  sources = list(config.validation.sources or [])
  if not sources:
    return None
  pairs = [p for s in sources for p in bitext_lib.load_source(dict(s)).pairs()]
  src = student.tokenizer.pad(*_tokenized(student, [f for f, _ in pairs]))
  tgt = teacher.tokenizer.pad(*_tokenized(teacher, [e for _, e in pairs]))
  return lambda params: validation.validate(params, student.cfg, teacher.params, teacher.cfg,
                                            src, tgt, pooling=student.spec.pooling)


def _tokenized(model: models.Model, texts):
  ids = model.tokenize_fn("query")(texts)
  return ids, max(len(x) for x in ids)


def _rows(ragged):
  return [ragged.flat[a:b] for a, b in zip(ragged.offsets[:-1], ragged.offsets[1:])]


def _build_teacher(config, mesh):
  model = models.load_model(config.teacher, rng=jax.random.PRNGKey(config.seed), where="teacher")
  spec = step_lib.TeacherSpec(encoder=model.cfg, scoring=model.spec.scoring,
                              pooling=model.spec.pooling, temperature=float(config.loss.temperature),
                              skip_nonfinite=bool(config.train.skip_nonfinite))
  data = config.data.retrieval.to_dict()
  sources = data.get("sources") or []
  if not sources:
    raise InputError("teacher mode needs data.retrieval.sources")
  examples = [retrieval_train.load_retrieval_source(s) for s in sources]
  rcfg = retrieval_train.RetrievalConfig(
      global_batch=int(config.data.global_batch), q_max_length=model.max_len("query"),
      p_max_length=model.max_len("doc"),
      q_buckets=tuple(b for b in config.data.buckets if b <= model.max_len("query")) or (model.max_len("query"),),
      p_buckets=tuple(config.data.doc_buckets), q_prefix=model.prefix("query"),
      p_prefix=model.prefix("doc"), num_negatives=int(config.data.num_negatives),
      remainder="drop", seed=int(config.seed), cache_dir=_cache_dir(config))
  batches = retrieval_train.RetrievalBatches(examples, model.tokenizer, rcfg, ratios=data.get("ratios"),
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count())
  return model, spec, batches, {}, None


def run(config, workdir: str, *, max_steps: Optional[int] = None, log_fn=print) -> Result:
  """Trains (or resumes) per `config` in `workdir`; returns where it ended.

  Args:
    max_steps: stop after this many steps of this invocation (tests; preemption drills).
  """
  maybe_initialize_distributed(config)
  primary = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if primary:
    write_text(os.path.join(workdir, "config.json"), to_json(config) + "\n")
  n_dev = int(config.train.devices)
  if n_dev and jax.process_count() > 1:
    raise InputError("train.devices must be 0 (all devices) when running on several processes")
  mesh = step_lib.make_mesh(jax.devices()[:n_dev] if n_dev else None)
  if int(config.data.global_batch) % mesh.size:
    raise InputError(f"data.global_batch {config.data.global_batch} is not divisible by the "
                     f"{mesh.size} devices")
  mode = config.mode
  if mode == "distill":
    model, spec, batches, frozen, validate = _build_distill(config, mesh)
    make_step = step_lib.make_distill_step
  elif mode == "teacher":
    model, spec, batches, frozen, validate = _build_teacher(config, mesh)
    make_step = step_lib.make_teacher_step
  else:
    raise InputError(f"mode must be 'distill' or 'teacher', got {mode!r}")
  log_fn(f"{mode}: {jax.device_count()} device(s) on {jax.process_count()} process(es); "
         f"{batches.batches_per_epoch(0)} batches/epoch of {config.data.global_batch}; "
         f"data {batches.stats().get('sources', '')}")

  steps = int(config.train.steps)
  o = config.optim
  tx = step_lib.make_optimizer(model.params, lr=o.lr, steps=steps, warmup_steps=o.warmup_steps,
                               weight_decay=o.weight_decay, clip_norm=o.clip_norm, b1=o.b1,
                               b2=o.b2, eps=o.eps, freeze=tuple(o.freeze))
  state = step_lib.init_state(model.params, tx, jax.random.PRNGKey(int(config.seed)))
  state = jax.tree.map(np.asarray, state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=int(config.train.keep_checkpoints))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  restored = ckpt.restore_latest(checkpoint.abstract_like(state, replicated), report=log_fn)
  resumed_from = None
  if restored is not None:
    resumed_from, state, meta = restored
    batches.restore(meta["data"])
    log_fn(f"resumed from step {resumed_from} ({ckpt.directory})")
  else:
    state = step_lib.replicate(state, mesh)
  frozen = step_lib.replicate(frozen, mesh)
  writer = MetricWriter(workdir, enabled=primary)
  writer.truncate_after(int(resumed_from or 0))
  train_step = make_step(spec, tx, mesh)
  guard = checkpoint.PreemptionGuard()

  start = int(np.asarray(jax.device_get(state.step)))
  end = steps if max_steps is None else min(steps, start + max_steps)
  progress = Progress(steps, start, enabled=bool(config.train.progress) and primary, desc=mode)
  log_every, ckpt_every = int(config.train.log_every), int(config.train.checkpoint_every)
  it = iter(batches)
  metrics: Dict[str, float] = {}
  step = start
  t_last, step_last = time.time(), start

  last_saved = [resumed_from]

  def save(step_now):
    if last_saved[0] != step_now:
      ckpt.save(step_now, state, {"data": batches.state, "step": step_now})
      last_saved[0] = step_now

  val_every = int(config.validation.every)

  def run_validation(step_now):
    if validate is not None and primary:
      val = validate(jax.device_get(state.params))
      writer.write(step_now, val)
      log_fn(f"validation at step {step_now}: " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
      return val
    return {}

  if start == 0:
    run_validation(0)
  try:
    while step < end:
      local = next(it)
      local.pop("valid")  # always 1: training drops an epoch's incomplete batches
      state, m = train_step(state, frozen, step_lib.shard_batch(local, mesh))
      step += 1
      fin = float(np.asarray(jax.device_get(m["finite"])))
      if fin < 1.0 and not spec.skip_nonfinite:
        raise NonFiniteError(f"non-finite loss or gradients at step {step} "
                             f"(loss={float(np.asarray(jax.device_get(m['loss'])))}); "
                             f"last checkpoint kept in {ckpt.directory}")
      if step % log_every == 0 or step == end:
        metrics = step_lib.host_metrics(m)
        now = time.time()
        metrics["steps_per_s"] = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        metrics["lr"] = float(step_lib.make_schedule(o.lr, steps, o.warmup_steps)(step - 1))
        writer.write(step, metrics)
        progress.update(step, {k: metrics[k] for k in ("loss", "converged_fraction",
                                                       "sentence_cosine") if k in metrics})
      if step % ckpt_every == 0 and step < end:
        save(step)
      if val_every and step % val_every == 0 and step < end:
        run_validation(step)
      if guard.should_stop():
        save(step)
        log_fn(f"stopped by signal at step {step}; checkpoint saved")
        break
    else:
      save(step)
      if step >= steps and step > start:
        metrics.update(run_validation(step))
  finally:
    guard.restore()
    writer.close()
  progress.close(step)
  export_dir = os.path.join(workdir, "student" if mode == "distill" else "teacher")
  if step >= steps and primary:
    params = jax.device_get(state.params)
    models.export_model(export_dir, model.cfg, params, model.spec, model.tokenizer,
                        extra={"mode": mode, "step": step,
                               "teacher": config.teacher.to_dict() if mode == "distill" else None,
                               "loss": config.loss.to_dict(), "bitext": list(config.data.bitext.sources)})
    write_json(os.path.join(workdir, "final_metrics.json"), {"step": step, **metrics})
  ckpt.close()
  compilations = train_step._cache_size() if hasattr(train_step, "_cache_size") else -1
  return Result(workdir=workdir, step=step, export_dir=export_dir, last_metrics=metrics,
                resumed_from=resumed_from, compilations=compilations)
