"""The training loop behind `train.py`: wires models, data, the step, checkpoints and logging.

`run(config, workdir)` trains in 'distill' mode (OPTICAL: the student query encoder
learns from bitext against the frozen teacher) or 'teacher' mode (contrastive English
retrieval training). Rerunning with the same workdir resumes from the latest complete
checkpoint (params, optimizer state, step, rng and data position), so a killed run
continues exactly where its last checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from optical_jax import adversarial, assets, checkpoint, chunked, fileio, losses, models, ot, paths
from optical_jax import step as step_lib, validation
from optical_jax import mesh as mesh_lib
from optical_jax import teacher_cache
from optical_jax.config import check as check_config, config_changes, to_json
from optical_jax.data import bitext as bitext_lib
from optical_jax.data import codeswitch
from optical_jax.data import pipeline, retrieval_train
from optical_jax.errors import InputError, Interrupted
from optical_jax.fileio import write_json, write_text
from optical_jax.monitor import CompileCounter, MetricWriter, Progress

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Loss or gradients became NaN/inf (and the config does not skip such updates)."""


@dataclasses.dataclass
class Result:
  """Where a run ended. `finished`: it reached `train.steps` and its export exists;
  `stopped_by`: the signal (SIGTERM, SIGINT) that stopped it after a checkpoint, else None."""

  workdir: str
  step: int
  export_dir: str
  last_metrics: Dict[str, float]
  resumed_from: Optional[int]
  compilations: int
  finished: bool = False
  stopped_by: Optional[int] = None
  checkpoint_dir: str = ""


def _cache_dir(config) -> str:
  return config.data.cache_dir or os.path.join(assets.cache_dir(), "tokens")


@dataclasses.dataclass
class Setup:
  """What a training mode needs: the trained model, the step's static spec and its
  factory, the batches, the frozen step inputs, an optional validation function and
  optional auxiliary trained params (never exported) with their peak learning rate."""

  model: models.Model
  spec: Any
  make_step: Callable
  batches: Any
  frozen: Dict[str, Any]
  validate: Optional[Callable[[Any], Dict[str, float]]] = None
  aux_params: Optional[Dict[str, Any]] = None
  aux_lr: float = 0.0


def distill_loss_config(config, student: models.Model, teacher: models.Model) -> losses.DistillConfig:
  """The loss settings of `config.loss`, with the tokenizers' special-token ids and the
  models' poolings (the sentence and ranking terms pool as retrieval does)."""
  settings = config.loss.to_dict()
  settings.pop("temperature")   # teacher mode's contrastive temperature
  return losses.DistillConfig.from_dict(dict(
      settings, src_special=tuple(student.tokenizer.special_ids),
      tgt_special=tuple(teacher.tokenizer.special_ids),
      student_pooling=student.spec.pooling, teacher_pooling=teacher.spec.pooling))


# fold_in index of the discriminator's initialisation key in the init stream (the
# student's new head uses 1, see models.load_model).
_DISCRIMINATOR_INIT = 2


def adversarial_config(config) -> Optional[adversarial.AdversarialConfig]:
  """The discriminator settings of `config.adversarial`, or None when its weight is 0 (off);
  `ramp_steps=0` becomes `train.steps`."""
  settings = config.adversarial.to_dict()
  if not settings["weight"]:
    return None
  settings["ramp_steps"] = int(settings["ramp_steps"]) or int(config.train.steps)
  return adversarial.AdversarialConfig.from_dict(settings)


def _data_seed(config) -> int:
  seed = int(config.data.bitext.seed)
  return int(config.seed) if seed < 0 else seed


def _build_distill(config, init_key: jax.Array, log_fn=print, mesh=None) -> Setup:
  # This host's devices of the run: the token means and validation encode their chunks
  # over them (the teacher cache over the whole run's, `teacher_cache.teacher_tokens`).
  local = chunked.local_part(mesh) if mesh is not None else chunked.local_mesh()
  teacher = models.load_model(config.teacher, where="teacher")
  student = models.load_model(config.student, rng=init_key, where="student")
  if student.cfg.output_dim != teacher.cfg.output_dim:
    raise InputError(
        f"student embedding size {student.cfg.output_dim} != teacher's {teacher.cfg.output_dim}: "
        f"set --config.student.head_dim={teacher.cfg.output_dim} to add a projection head")
  loss_cfg = distill_loss_config(config, student, teacher)
  cached = bool(config.data.teacher_cache)
  if cached and (loss_cfg.needs_hidden or loss_cfg.needs_cls_attention):
    # The cache holds the teacher's output tokens only; it is a speed setting (on in the
    # shipped distillation configs), so a loss that needs more runs the teacher instead.
    log_fn(f"data.teacher_cache={config.data.teacher_cache} not used: this loss needs the "
           "teacher's hidden states or attention, so the step runs the teacher")
    cached = False
  adv = adversarial_config(config)
  spec = step_lib.DistillSpec(student=student.cfg, teacher=teacher.cfg, loss=loss_cfg,
                              skip_nonfinite=bool(config.train.skip_nonfinite),
                              teacher_from_batch=cached, adversarial=adv,
                              freeze=tuple(config.optim.freeze),
                              sparse_embeddings=bool(config.optim.sparse_embeddings))
  mixture = bitext_lib.load_mixture(dict(sources=list(config.data.bitext.sources),
                                         ratios=config.data.bitext.ratios))
  mixture = codeswitch.switch_mixture(mixture, config.data.code_switch.to_dict(),
                                     _data_seed(config))
  pcfg = pipeline.PipelineConfig(
      global_batch=int(config.data.global_batch),
      src_max_length=student.max_len("query"), tgt_max_length=teacher.max_len("query"),
      buckets=tuple(config.data.buckets), src_prefix=student.prefix("query"),
      tgt_prefix=teacher.prefix("query"), remainder="drop",
      seed=_data_seed(config), cache_dir=_cache_dir(config),
      host_shards=bool(config.data.host_shards))
  batches = pipeline.BitextBatches(mixture, student.tokenizer, teacher.tokenizer, pcfg,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  if cached:
    teacher_cache.teacher_tokens(teacher, batches, str(config.data.teacher_cache),
                                 os.path.join(_cache_dir(config), "teacher"), log=log_fn,
                                 mesh=mesh if mesh is not None else local)
  frozen: Dict[str, Any] = {} if cached else {"teacher": teacher.params}
  if cached and spec.loss.teacher_pooling == "pooler":   # sentence terms pool its cached tokens
    frozen["teacher_pooler"] = teacher.params["pooler"]
  if spec.loss.marginals == "idf":
    frozen["src_idf"] = ot.compute_idf(batches.src.rows(), student.cfg.vocab_size)
    frozen["tgt_idf"] = ot.compute_idf(batches.tgt.rows(), teacher.cfg.vocab_size)
  if spec.loss.ot.center and spec.loss.ot.center_source == "bitext":
    frozen["src_mean"] = _token_mean(student, batches.src.rows(), spec.loss, local)
    frozen["tgt_mean"] = _token_mean(teacher, batches.tgt.rows(), spec.loss, local)
  aux_params = None
  if adv is not None:
    key = jax.random.fold_in(init_key, _DISCRIMINATOR_INIT)
    aux_params = {adversarial.NAME: jax.tree.map(
        np.asarray, adversarial.init_params(adv, student.cfg.output_dim, key))}
  return Setup(student, spec, step_lib.make_distill_step, batches, frozen,
               _make_validation(config, student, teacher, local), aux_params=aux_params,
               aux_lr=adv.lr if adv is not None else 0.0)


def _token_mean(model: models.Model, rows, loss_cfg: losses.DistillConfig, mesh,
                batch_size: int = 64) -> np.ndarray:
  """Mean token vector (of the representation the OT cost compares) over every real
  token of the tokenised bitext side `rows`, with `model`'s current params (chunks of
  similar lengths split over `mesh`: `chunked.apply`)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc  # pylint: disable=g-import-not-at-top

  @jax.jit
  def sums(params, ids, mask):
    tokens, aux = enc.apply_with(params, ids, mask, cfg=model.cfg, hidden=loss_cfg.needs_hidden)
    feats = losses.token_features(tokens, aux.get("hidden"), loss_cfg)
    keep = (mask > 0)[..., None]
    return jnp.sum(jnp.where(keep, feats, 0.0), axis=(0, 1)), jnp.sum(mask)

  rows = sorted(rows, key=len)

  def padded(lo, hi):
    part = list(rows[lo:hi])
    length = -(-max(len(r) for r in part) // 16) * 16  # few shapes, few compilations
    return model.tokenizer.pad(part, length)

  total, count = 0.0, 0
  for _, (s, n) in chunked.apply(sums, model.params, len(rows), padded, chunk=batch_size,
                                 mesh=mesh, per_row=False):
    total, count = total + np.asarray(s, np.float64), count + int(n)
  return (total / max(count, 1)).astype(np.float32)


def _make_validation(config, student: models.Model, teacher: models.Model, mesh=None):
  """A function params -> val_* metrics on held-out bitext, or None when none is configured."""
  sources = list(config.validation.sources or [])
  if not sources:
    return None
  pairs = [p for s in sources for p in bitext_lib.load_source(dict(s)).pairs()]
  src = student.tokenizer.pad(*_tokenized(student, [f for f, _ in pairs]))
  tgt = teacher.tokenizer.pad(*_tokenized(teacher, [e for _, e in pairs]))
  return validation.Validator(student, teacher, src, tgt, mesh=mesh)


def _tokenized(model: models.Model, texts):
  ids = model.tokenize_fn("query")(texts)
  return ids, max(len(x) for x in ids)


def _build_teacher(config, init_key: jax.Array) -> Setup:
  if config.adversarial.weight:
    raise InputError("adversarial.weight applies to distill mode only (teacher mode has no "
                     "foreign side); set --config.adversarial.weight=0")
  model = models.load_model(config.teacher, rng=init_key, where="teacher")
  spec = step_lib.TeacherSpec(encoder=model.cfg, scoring=model.spec.scoring,
                              pooling=model.spec.pooling, temperature=float(config.loss.temperature),
                              skip_nonfinite=bool(config.train.skip_nonfinite),
                              freeze=tuple(config.optim.freeze),
                              sparse_embeddings=bool(config.optim.sparse_embeddings))
  data = config.data.retrieval.to_dict()
  sources = data.get("sources") or []
  if not sources:
    raise InputError("teacher mode needs data.retrieval.sources")
  examples = [retrieval_train.load_retrieval_source(s) for s in sources]
  q_max = model.max_len("query")
  rcfg = retrieval_train.RetrievalConfig(
      global_batch=int(config.data.global_batch), q_max_length=q_max,
      p_max_length=model.max_len("doc"),
      q_buckets=tuple(b for b in config.data.buckets if b <= q_max) or (q_max,),
      p_buckets=tuple(config.data.doc_buckets), q_prefix=model.prefix("query"),
      p_prefix=model.prefix("doc"), num_negatives=int(config.data.num_negatives),
      remainder="drop", seed=int(config.seed), cache_dir=_cache_dir(config),
      host_shards=bool(config.data.host_shards))
  batches = retrieval_train.RetrievalBatches(examples, model.tokenizer, rcfg, ratios=data.get("ratios"),
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count())
  return Setup(model, spec, step_lib.make_teacher_step, batches, {})


def _check_resume(config, workdir: str, log_fn) -> None:
  """Stops a resume whose config changes the math (see `config.config_changes`)."""
  saved_path = paths.join(workdir, "config.json")
  ckpt_dir = paths.join(workdir, "checkpoints")
  has_steps = paths.isdir(ckpt_dir) and any(n.isdigit() for n in paths.listdir(ckpt_dir))
  if not (has_steps and paths.isfile(saved_path)):
    return
  try:
    with paths.open(saved_path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"cannot read the saved config of this run: {e}", saved_path) from None
  math, harmless = config_changes(saved, config)
  if harmless:
    log_fn("resuming with changed settings: " + "; ".join(harmless))
  if math and not config.train.allow_config_change:
    raise InputError(
        f"this workdir holds a run with another config ({'; '.join(math)}); use a new "
        "workdir, or pass --config.train.allow_config_change=True to resume anyway", workdir)
  if math:
    log_fn("resuming with a changed config (allowed): " + "; ".join(math))


def _setup(config, init_key: jax.Array, log_fn=print, mesh=None) -> Setup:
  if config.mode == "distill":
    return _build_distill(config, init_key, log_fn, mesh)
  if config.mode == "teacher":
    return _build_teacher(config, init_key)
  raise InputError(f"mode must be 'distill' or 'teacher', got {config.mode!r}")


def run(config, workdir: str, *, max_steps: Optional[int] = None, log_fn=print) -> Result:
  """Trains (or resumes) per `config` in `workdir`; returns where it ended.

  The workdir is held by this run alone (`fileio.hold_directory`: a second run on it
  stops at once naming the holder). Models and data are loaded and checked before
  anything is written: a run that fails on bad input leaves no workdir it created
  behind. Resuming with a config that changes the math stops with the differences.

  Args:
    max_steps: stop after this many steps of this invocation (tests; preemption drills).
  """
  check_config(config)
  mesh_lib.initialize_distributed(config.distributed)
  primary = jax.process_index() == 0
  workdir = paths.resolve(workdir)
  hold = fileio.hold_directory(workdir, "workdir", report=log_fn) if primary else None
  try:
    _check_resume(config, workdir, log_fn)
    n_dev = int(config.train.devices)
    if n_dev and jax.process_count() > 1:
      raise InputError("train.devices must be 0 (all devices) when running on several processes")
    mesh = step_lib.make_mesh(jax.devices()[:n_dev] if n_dev else None)
    if int(config.data.global_batch) % mesh.size:
      raise InputError(f"data.global_batch {config.data.global_batch} is not divisible by the "
                       f"{mesh.size} devices")
    # Separate streams: the student's initialisation (random weights, a new head) and
    # the training randomness (dropout), so changing one never changes the other.
    init_key, train_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    setup = _setup(config, init_key, log_fn, mesh)
  except BaseException:
    if hold is not None:
      hold.release()
      if hold.created:
        paths.rmtree(workdir)
    raise
  try:
    if primary:
      write_text(paths.join(workdir, "config.json"), to_json(config) + "\n")
    return _train(config, workdir, setup, mesh, train_key, max_steps=max_steps, log_fn=log_fn)
  finally:
    if hold is not None:
      hold.release()


def _train(config, workdir: str, setup: Setup, mesh, train_key, *, max_steps, log_fn) -> Result:
  """The training loop of `run` (workdir held, config written)."""
  primary = jax.process_index() == 0
  mode = config.mode
  model, spec, batches = setup.model, setup.spec, setup.batches
  log_fn(f"{mode}: {jax.device_count()} device(s) on {jax.process_count()} process(es); "
         f"{batches.batches_per_epoch(0)} batches/epoch of {config.data.global_batch}; "
         f"data {batches.stats().get('sources', '')}")

  steps = int(config.train.steps)
  o = config.optim
  tx = step_lib.make_optimizer(model.params, lr=o.lr, steps=steps, warmup_steps=o.warmup_steps,
                               weight_decay=o.weight_decay, clip_norm=o.clip_norm, b1=o.b1,
                               b2=o.b2, eps=o.eps, freeze=tuple(o.freeze))
  aux = {}   # auxiliary trained parts (the discriminator): their own AdamW, same shape
  if setup.aux_params is not None:
    aux["aux_tx"] = step_lib.make_optimizer(
        setup.aux_params, lr=setup.aux_lr, steps=steps, warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay, clip_norm=o.clip_norm, b1=o.b1, b2=o.b2, eps=o.eps)
  state, frozen = step_lib.replicated_state(model.params, tx, train_key, setup.frozen, mesh,
                                            aux_params=setup.aux_params, **aux)
  ckpt = checkpoint.Checkpointer(paths.join(workdir, "checkpoints"),
                                 max_to_keep=int(config.train.keep_checkpoints))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def check_meta(step_saved, meta):
    if meta.get("step") != step_saved:
      raise ValueError(f"its meta records step {meta.get('step')!r}")
    batches.check_state(meta.get("data"))

  restored = ckpt.restore_latest(checkpoint.abstract_like(state, replicated), report=log_fn,
                                 check_meta=check_meta)
  resumed_from = None
  export_dir = paths.join(workdir, "student" if mode == "distill" else "teacher")
  if restored is not None:
    resumed_from, state, meta = restored
    final = _finished(workdir, export_dir, resumed_from, steps)
    if final is not None:   # a rerun of a finished run: nothing to do, nothing rewritten
      ckpt.close()
      log_fn(f"already finished at step {resumed_from}; model in {export_dir}")
      return Result(workdir=workdir, step=resumed_from, export_dir=export_dir,
                    last_metrics=final, resumed_from=resumed_from, compilations=0,
                    finished=True, checkpoint_dir=ckpt.directory)
    batches.restore(meta["data"])
    log_fn(f"resumed from step {resumed_from} ({ckpt.directory})")
  writer = MetricWriter(workdir, enabled=primary)
  writer.truncate_after(int(resumed_from or 0))
  guard = checkpoint.PreemptionGuard(signals=(signal.SIGTERM, signal.SIGINT))
  compiles = CompileCounter().start()
  start = int(np.asarray(jax.device_get(state.step)))
  end = steps if max_steps is None else min(steps, start + max_steps)
  progress = Progress(steps, start, enabled=bool(config.train.progress) and primary, desc=mode)
  loop = _Loop(config, setup, mesh, state, frozen, setup.make_step(spec, tx, mesh, **aux), ckpt,
               writer, progress, resumed_from, log_fn)
  try:
    step, metrics = loop.run(start, end, guard)
  finally:
    guard.restore()
    writer.close()
    compiles.stop()
  progress.close(step)
  if step >= steps and primary:
    _export(config, workdir, export_dir, model, loop.state, step, metrics)
  ckpt.close()
  # The train step's compilations in this invocation (from disk or not): once per bucket.
  step_name = "distill_step_local" if mode == "distill" else "teacher_step_local"
  compilations = compiles.total_compiled(step_name) + compiles.total_loaded(step_name)
  return Result(workdir=workdir, step=step, export_dir=export_dir, last_metrics=metrics,
                resumed_from=resumed_from, compilations=compilations,
                finished=step >= steps, stopped_by=guard.received,
                checkpoint_dir=ckpt.directory)


def _export(config, workdir: str, export_dir: str, model, state, step: int,
            metrics: Dict[str, float]) -> None:
  """The trained model's export (with its provenance) and `final_metrics.json`."""
  mode = config.mode
  distill = mode == "distill"
  params = jax.device_get(state.params)
  models.export_model(export_dir, model.cfg, params, model.spec, model.tokenizer,
                      extra={"mode": mode, "step": step, "lang": config.lang,
                             "teacher": config.teacher.to_dict() if distill else None,
                             "loss": config.loss.to_dict() if distill else None,
                             "bitext": list(config.data.bitext.sources) if distill else None})
  write_json(paths.join(workdir, "final_metrics.json"), {"step": step, **metrics})


class _Loop:
  """The step loop of `_train` and the state it carries: the train state, the last
  checkpointed step, and the non-finite watch.

  The first non-finite step stays on the device (`NonfiniteWatch`) and is read at log
  steps and before every checkpoint and validation, never after each step: the host does
  not wait for the device between steps (asynchronous dispatch). Nothing after a
  non-finite step is saved, so the run stops as it did when it synced every step: naming
  the first bad step and the last good checkpoint.
  """

  def __init__(self, config, setup: Setup, mesh, state, frozen, train_step, ckpt, writer,
               progress, resumed_from: Optional[int], log_fn):
    self.config, self.setup, self.mesh = config, setup, mesh
    self.state, self.frozen, self.train_step = state, frozen, train_step
    self.ckpt, self.writer, self.progress, self.log_fn = ckpt, writer, progress, log_fn
    self.last_saved = resumed_from
    self.primary = jax.process_index() == 0
    self.watch = None if setup.spec.skip_nonfinite else NonfiniteWatch()

  def save(self, step: int) -> None:
    self.check_finite()
    if self.last_saved != step:
      self.ckpt.save(step, self.state, {"data": self.setup.batches.state, "step": step})
      self.last_saved = step

  def validate(self, step: int) -> Dict[str, float]:
    if self.setup.validate is None or not self.primary:
      return {}
    val = self.setup.validate(jax.device_get(self.state.params))
    self.writer.write(step, val)
    self.log_fn(f"validation at step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
    return val

  def check_finite(self) -> None:
    if self.watch is None:
      return
    bad, loss_at = (int(v) if i == 0 else float(v)
                    for i, v in enumerate(jax.device_get(self.watch.state)))
    if bad:
      kept = (f"last checkpoint (step {self.last_saved}) kept in {self.ckpt.directory}"
              if self.last_saved is not None else "no checkpoint was saved yet")
      raise NonFiniteError(f"non-finite loss or gradients at step {bad} "
                           f"(loss={loss_at}); {kept}")

  def run(self, start: int, end: int, guard) -> Tuple[int, Dict[str, float]]:
    """Steps `start` to `end` (or to a signal); returns (the step reached, its metrics)."""
    c = self.config
    steps, o = int(c.train.steps), c.optim
    log_every, ckpt_every = int(c.train.log_every), int(c.train.checkpoint_every)
    val_every = int(c.validation.every)
    it = iter(self.setup.batches)
    metrics: Dict[str, float] = {}
    step = start
    t_last, step_last = time.time(), start
    if start == 0:
      self.validate(0)
    while step < end:
      local = next(it)
      local.pop("valid")  # always 1: training drops an epoch's incomplete batches
      self.state, m = self.train_step(self.state, self.frozen, step_lib.shard_batch(local, self.mesh))
      step += 1
      if self.watch is not None:
        self.watch.update(m["finite"], m["loss"], step)
      if step % log_every == 0 or step == end:
        self.check_finite()
        metrics = step_lib.host_metrics(m)
        now = time.time()
        metrics["steps_per_s"] = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        metrics["lr"] = float(step_lib.make_schedule(o.lr, steps, o.warmup_steps)(step - 1))
        self.writer.write(step, metrics)
        self.progress.update(step, {k: metrics[k] for k in ("loss", "converged_fraction",
                                                            "sentence_cosine") if k in metrics})
      if step % ckpt_every == 0 and step < end:
        self.save(step)
      if val_every and step % val_every == 0 and step < end:
        self.check_finite()
        self.validate(step)
      # Several processes agree on a stop with a collective: only at log steps, so that
      # they do not wait for each other after every step.
      if (jax.process_count() == 1 or step % log_every == 0) and guard.should_stop():
        self.save(step)
        self.log_fn(f"stopped by {guard.signal_name()} at step {step}; checkpoint saved in "
                    f"{self.ckpt.directory}")
        return step, metrics
    self.save(step)
    if step >= steps and step > start:
      metrics.update(self.validate(step))
    return step, metrics


class NonfiniteWatch:
  """The first non-finite step of a run and its loss, kept on the device: `update` is a
  jitted function dispatched asynchronously after each step (no host transfer); the
  trainer reads `state` only when it checks (log steps, checkpoints)."""

  def __init__(self):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.state = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def update(state, finite, loss, step):
      bad, loss_at = state
      first = (bad == 0) & (finite < 1.0)
      return (jnp.where(first, step, bad), jnp.where(first, loss.astype(jnp.float32), loss_at))
    self._update = jax.jit(update, donate_argnums=0)

  def update(self, finite, loss, step: int) -> None:
    self.state = self._update(self.state, finite, loss, np.int32(step))


def check_complete(result: Result, config) -> None:
  """Raises `errors.Interrupted` (one line: where to resume) unless `result` is a finished
  run with its export; the programs exit non-zero on it."""
  if result.finished:
    return
  signum = result.stopped_by or signal.SIGTERM
  how = f"by {signal.Signals(signum).name}" if result.stopped_by else "early"
  raise Interrupted(signum, f"training stopped {how} at step {result.step} of "
                    f"{config.train.steps}; checkpoint in {result.checkpoint_dir}; rerun the "
                    "same command to resume")


def _finished(workdir: str, export_dir: str, step: int, steps: int) -> Optional[Dict[str, float]]:
  """The final metrics of a run that finished earlier (its last checkpoint at `steps`, its
  export and `final_metrics.json` written), else None."""
  if step < steps or not paths.isfile(paths.join(export_dir, models.SPEC_FILE)):
    return None
  final = fileio.read_json(paths.join(workdir, "final_metrics.json"))
  exported = fileio.read_json(paths.join(export_dir, models.SPEC_FILE))
  # Both must be of this step: a run resumed to more steps whose export then failed
  # still has the shorter run's export and metrics, which are not this run's.
  if not isinstance(final, dict) or final.get("step") != step or not isinstance(
      exported, dict) or exported.get("step") != step:
    return None
  return {k: v for k, v in final.items() if k != "step"}
