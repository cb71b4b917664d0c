"""Adversarial language invariance: gradient reversal, the discriminator in the step, the
train state, the checkpoint and the export."""

import dataclasses
import json
import math
import os
import random
import subprocess

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from optical_jax import adversarial, step as step_lib, trainer
from optical_jax.errors import InputError

from test_step import _batch, _setup  # pylint: disable=g-bad-import-order
from test_train import _cmd, _env, _params, _wait_for_step, tiny  # pylint: disable=g-bad-import-order


def _fd(f, x, dirs, h=1e-4):
  return [(f(x + h * v) - f(x - h * v)) / (2 * h) for v in dirs]


# ----------------------------------------------------------------------------- config and GRL


@pytest.mark.parametrize("bad, words", [
    (dict(weight=-0.1), "weight must be"), (dict(hidden_size=0), "hidden_size must be"),
    (dict(schedule="linear"), "schedule must be one of"), (dict(ramp_steps=0), "ramp_steps"),
    (dict(pooling="max"), "pooling must be one of"), (dict(lr=0.0), "lr must be"),
    (dict(normalize=1), "normalize must be"), (dict(layers=2), "unknown keys ['layers']")])
def test_config_rejects_bad_values(bad, words):
  with pytest.raises(InputError) as err:
    adversarial.AdversarialConfig.from_dict(bad)
  assert words in str(err.value)


def test_schedules():
  dann = adversarial.AdversarialConfig(schedule="dann", ramp_steps=100)
  got = [float(adversarial.reversal_scale(dann, jnp.asarray(s))) for s in (0, 10, 50, 100, 400)]
  want = [2.0 / (1.0 + math.exp(-10.0 * s / 100)) - 1.0 for s in (0, 10, 50, 100, 400)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert got[0] == 0.0 and all(a < b for a, b in zip(got, got[1:]))
  constant = adversarial.AdversarialConfig()
  assert float(adversarial.reversal_scale(constant, jnp.asarray(7))) == 1.0


def test_gradient_reversal_is_identity_forward_and_flips_exactly_the_input_gradient():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4))
  w = rng.normal(size=(3, 4))
  with jax.enable_x64(True):
    f = lambda z: jnp.sum(jnp.sin(w * z))
    grl = lambda z, s: jnp.sum(jnp.sin(w * adversarial.reverse_gradient(z, s)))
    np.testing.assert_array_equal(adversarial.reverse_gradient(jnp.asarray(x), 0.7), x)
    dirs = [rng.normal(size=x.shape) for _ in range(3)]
    want = _fd(lambda z: float(f(jnp.asarray(z))), x, dirs)
    for s in (1.0, 0.3):
      g, gs = jax.grad(grl, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(s))
      got = [float(np.sum(np.asarray(g) * v)) for v in dirs]
      np.testing.assert_allclose(got, [-s * v for v in want], rtol=1e-7, atol=1e-10)
      assert float(gs) == 0.0


def test_adversarial_loss_reverses_only_the_student_side():
  """Through the loss: the discriminator's params and the teacher side get the plain gradient
  (finite differences), the student's tokens the reversed one, times the schedule's scale."""
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(4, 5, 6)), rng.normal(size=(4, 3, 6))
  sm = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
  tm = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  cfg = adversarial.AdversarialConfig(weight=1.0, hidden_size=8, schedule="dann", ramp_steps=10)
  step = jnp.asarray(3)
  scale = float(adversarial.reversal_scale(cfg, step))
  assert 0.0 < scale < 1.0
  with jax.enable_x64(True):
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64),
                          adversarial.init_params(cfg, 6, jax.random.key(0)))
    loss = jax.jit(lambda p, x, y: adversarial.adversarial_loss(p, x, sm, y, tm, cfg, step)[0])
    gp, gs, gt = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, jnp.asarray(s),
                                                             jnp.asarray(t))
    value = lambda p, x: float(loss(p, jnp.asarray(x), jnp.asarray(t)))
    dirs = [rng.normal(size=s.shape) * sm[..., None] for _ in range(2)]
    want = _fd(lambda z: value(params, z), s, dirs)
    got = [float(np.sum(np.asarray(gs) * v)) for v in dirs]
    np.testing.assert_allclose(got, [-scale * v for v in want], rtol=1e-6, atol=1e-10)
    assert not np.any(np.asarray(gs)[sm == 0])            # padding gets nothing
    assert not np.any(np.asarray(gt))                     # the teacher side is constant
    kernel = params["hidden_0"]["kernel"]
    kdirs = [rng.normal(size=kernel.shape) for _ in range(2)]
    with_kernel = lambda k: value({**params, "hidden_0": {**params["hidden_0"], "kernel": k}}, s)
    np.testing.assert_allclose([float(np.sum(np.asarray(gp["hidden_0"]["kernel"]) * v))
                                for v in kdirs], _fd(with_kernel, np.asarray(kernel), kdirs),
                               rtol=1e-6, atol=1e-10)
  # Metrics: BCE and accuracy over the 3 valid student rows and the 4 teacher rows, by hand.
  params = adversarial.init_params(cfg, 6, jax.random.key(0))
  _, m = adversarial.adversarial_loss(params, jnp.asarray(s, jnp.float32), sm,
                                      jnp.asarray(t, jnp.float32), tm, cfg, step)
  pool = lambda x, mask: [r / np.linalg.norm(r) for r in (
      (x * mask[..., None]).sum(1)[i] / mask[i].sum() for i in range(len(x)) if mask[i].any())]
  logit = lambda rows: np.asarray(adversarial.discriminator(cfg).apply(
      {"params": params}, jnp.asarray(np.stack(rows), jnp.float32)))
  ls, lt = logit(pool(s, sm)), logit(pool(t, tm))
  bce = 0.5 * (np.mean(np.logaddexp(0, -ls)) + np.mean(np.logaddexp(0, lt)))
  assert float(m["adv_loss"]) == pytest.approx(bce, rel=1e-5)
  assert float(m["adv_accuracy"]) == pytest.approx(((ls > 0).sum() + (lt <= 0).sum()) / 7)
  assert float(m["adv_scale"]) == pytest.approx(scale)


# ----------------------------------------------------------------------------- the step


def _adv_setup(weight, **fields):
  spec, tx, student, teacher = _setup()
  adv = adversarial.AdversarialConfig(weight=weight, hidden_size=8, **fields)
  spec = dataclasses.replace(spec, adversarial=adv)
  disc = {adversarial.NAME: adversarial.init_params(adv, 16, jax.random.key(3))}
  aux_tx = step_lib.make_optimizer(disc, lr=1e-2, steps=20, warmup_steps=2, weight_decay=0.01,
                                   clip_norm=1.0)
  return spec, tx, aux_tx, student, teacher, disc


def _run(mesh, spec, tx, student, teacher, batches, aux_tx=None, disc=None):
  state, frozen = step_lib.replicated_state(student, tx, jax.random.PRNGKey(0),
                                            {"teacher": teacher}, mesh, aux_params=disc,
                                            aux_tx=aux_tx)
  fn = step_lib.make_distill_step(spec, tx, mesh, aux_tx=aux_tx)
  seen = []
  for b in batches:
    state, m = fn(state, frozen, step_lib.shard_batch(b, mesh))
    seen.append(dict(step_lib.host_metrics(m), params=jax.device_get(state.params)))
  return jax.device_get(state), seen, fn


ROUNDING = 1e-5   # float32 noise between differently compiled steps, after three Adam updates
BATCHES = [_batch(np.random.default_rng(5), 16, 12, 10) for _ in range(3)]


@pytest.fixture(scope="module")
def plain_run():
  """The step without the adversary, on one device (shared: each run compiles)."""
  spec, tx, student, teacher = _setup()
  state, metrics, _ = _run(step_lib.make_mesh(jax.devices()[:1]), spec, tx, student, teacher,
                           BATCHES)
  return state, metrics


def test_weight_zero_matches_the_step_without_the_adversary(plain_run):
  spec, tx, aux_tx, student, teacher, disc = _adv_setup(0.0)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  with_adv, m_adv, _ = _run(mesh, spec, tx, student, teacher, BATCHES, aux_tx, disc)
  without, m_plain = plain_run
  assert isinstance(with_adv, step_lib.AuxTrainState) and type(without) is step_lib.TrainState
  for a, b in zip(m_adv, m_plain):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
    assert "adv_loss" in a and "adv_loss" not in b
  # Equal up to float32 rounding: the two programs are fused differently (and Adam
  # amplifies that on near-zero gradients over steps); far below what the adversary
  # moves (see the next test).
  for i, tol in ((0, 1e-7), (-1, ROUNDING)):
    for a, b in zip(jax.tree.leaves(m_adv[i]["params"]), jax.tree.leaves(m_plain[i]["params"])):
      np.testing.assert_allclose(a, b, rtol=0, atol=tol)
  # Weight 0: no gradient reaches the discriminator either.
  assert all(m["aux_grad_norm"] == 0.0 for m in m_adv)


@pytest.mark.slow  # default-run budget (measured 10:51 idle with it)
def test_discriminator_step_matches_on_eight_devices_and_one(plain_run):
  spec, tx, aux_tx, student, teacher, disc = _adv_setup(0.5, schedule="dann", ramp_steps=4)
  mesh1, mesh8 = step_lib.make_mesh(jax.devices()[:1]), step_lib.make_mesh(jax.devices()[:8])
  s1, m1, f1 = _run(mesh1, spec, tx, student, teacher, BATCHES, aux_tx, disc)
  s8, m8, f8 = _run(mesh8, spec, tx, student, teacher, BATCHES, aux_tx, disc)
  for a, b in zip(m1, m8):
    for k in ("loss", "adv_loss", "adv_accuracy", "adv_scale", "aux_grad_norm", "grad_norm"):
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert m1[0]["adv_scale"] == 0.0 and m1[2]["adv_scale"] > m1[1]["adv_scale"] > 0.0
  for a, b in zip(jax.tree.leaves((s1.params, s1.aux_params, s1.aux_opt_state)),
                  jax.tree.leaves((s8.params, s8.aux_params, s8.aux_opt_state))):
    np.testing.assert_allclose(a, b, atol=5e-5)
  # The discriminator trained, and the reversed gradient changed the student's update.
  assert any(np.any(np.asarray(a) != np.asarray(b))
             for a, b in zip(jax.tree.leaves(s8.aux_params), jax.tree.leaves(disc)))
  plain = plain_run[0]
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(plain.params)))
  assert moved > 100 * ROUNDING, moved
  assert f1._cache_size() == 1 and f8._cache_size() == 1  # the schedule is traced


def test_step_without_the_discriminator_state_refuses():
  spec, tx, aux_tx, student, teacher, _ = _adv_setup(0.5)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  state, frozen = step_lib.replicated_state(student, tx, jax.random.PRNGKey(0),
                                            {"teacher": teacher}, mesh)
  fn = step_lib.make_distill_step(spec, tx, mesh, aux_tx=aux_tx)
  with pytest.raises(ValueError, match="discriminator"):
    fn(state, frozen, step_lib.shard_batch(_batch(np.random.default_rng(6), 2, 4, 4), mesh))


# ----------------------------------------------------------------------------- training


def _checkpoint_state(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "meta"))
  try:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    mngr.close()


def _size(tree):
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_tiny_training_with_the_discriminator_exports_only_the_student(tmp_path):
  config = tiny(**{"adversarial.weight": 0.1, "adversarial.schedule": "dann",
                   "adversarial.hidden_size": 16, "train.steps": 4})
  result = trainer.run(config, str(tmp_path / "w"), log_fn=lambda *a: None)
  assert result.step == 4
  m = result.last_metrics
  assert all(math.isfinite(v) for v in m.values()), m
  assert 0.0 < m["adv_scale"] < 1.0 and 0.0 <= m["adv_accuracy"] <= 1.0 and m["adv_loss"] > 0
  saved = _checkpoint_state(result.workdir, 4)
  disc = saved["aux_params"][adversarial.NAME]
  assert disc["hidden_0"]["kernel"].shape == (32, 16)   # tiny: 32-d embeddings
  assert _size(saved["aux_opt_state"]) >= 2 * _size(disc)   # its own Adam moments
  exported = _params(result.workdir)
  assert sum(v.size for v in exported.values()) == _size(saved["params"])
  assert not any(adversarial.NAME in k or k.startswith(("hidden_", "out")) for k in exported)
  # weight 0 (the default): no discriminator anywhere, the state is the student's alone.
  assert trainer.adversarial_config(tiny()) is None
  params = {"w": np.zeros(3, np.float32)}
  plain = step_lib.init_state(params, step_lib.make_optimizer(
      params, lr=1.0, steps=1, warmup_steps=0, weight_decay=0.0, clip_norm=0.0), jax.random.key(0))
  assert set(flax.serialization.to_state_dict(plain)) == {"step", "params", "opt_state", "rng",
                                                          "skipped"}


def test_teacher_mode_rejects_the_adversary(tmp_path):
  config = tiny(**{"adversarial.weight": 0.1})
  config.mode = "teacher"
  with pytest.raises(InputError, match="distill mode only"):
    trainer.run(config, str(tmp_path / "t"), log_fn=lambda *a: None)


def test_resume_of_a_run_saved_before_the_adversarial_keys(tmp_path):
  """A config.json without `adversarial.*` (older runs) resumes: absent keys at their
  defaults are no change."""
  from optical_jax.config import config_changes  # pylint: disable=g-import-not-at-top
  config = tiny()
  saved = json.loads(json.dumps(config.to_dict(), default=str))
  saved.pop("adversarial")
  assert config_changes(saved, config) == ([], [])
  config.adversarial.weight = 0.1
  math_changes, _ = config_changes(saved, config)
  assert math_changes == ['adversarial.weight: "<absent>" -> 0.1']


@pytest.mark.slow
def test_cli_sigkill_then_resume_is_bitwise_with_the_discriminator(tmp_path):
  """`train.py --config.adversarial.weight=0.1`: finite losses; killed at a random step and
  resumed, the student and the discriminator (params and optimizer state) end bitwise equal
  to an uninterrupted run."""
  over = ["--config.train.devices=1", "--config.train.checkpoint_every=2",
          "--config.adversarial.weight=0.1", "--config.adversarial.schedule=dann"]
  ref = tmp_path / "ref"
  done = subprocess.run(_cmd(ref, *over), env=_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(ref / "metrics.jsonl") as f:
    rows = [json.loads(x) for x in f if x.strip()]
  train_rows = [r for r in rows if "adv_loss" in r]
  assert len(train_rows) == 12 and all(math.isfinite(r["loss"]) and math.isfinite(r["adv_loss"])
                                       for r in train_rows)
  work = tmp_path / "run"
  kill_at = random.Random(0).randint(3, 10)
  proc = subprocess.Popen(_cmd(work, *over), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  _wait_for_step(work, kill_at, proc)
  proc.kill()
  proc.wait()
  done = subprocess.run(_cmd(work, *over), env=_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "resumed from step" in done.stdout
  a, b = _checkpoint_state(str(ref), 12), _checkpoint_state(str(work), 12)
  assert jax.tree.structure(a) == jax.tree.structure(b) and _size(a["aux_params"]) > 0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)   # bitwise, discriminator and its Adam moments included
  with open(work / "metrics.jsonl") as f:
    resumed = [json.loads(x) for x in f if x.strip()]
  pick = lambda rs: [(r["step"], r.get("loss"), r.get("adv_loss"), r.get("adv_accuracy"))
                     for r in rs]
  assert pick(resumed) == pick(rows)
