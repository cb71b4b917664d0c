"""The frozen teacher's token cache: the step reading cached tokens equals the step running the teacher."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from optical_jax import losses, models, step as step_lib, teacher_cache
from optical_jax.data import bitext, pipeline
from optical_jax.errors import InputError

from test_train import tiny  # pylint: disable=g-bad-import-order

ARCH = dict(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def setup(minilm_dir):
  del minilm_dir
  spec = lambda seed: models.model_spec(weights="random", tokenizer="asset:minilm/tokenizer.json",  # pylint: disable=unnecessary-lambda-assignment
                                        arch=ARCH, query_max_len=32)
  teacher = models.load_model(spec(0), rng=jax.random.PRNGKey(2))
  student = models.load_model(spec(1), rng=jax.random.PRNGKey(1))
  words = ["habari", "dunia", "ya", "leo", "na", "kesho", "mji", "mkubwa", "sana"]
  eng = ["hello", "world", "of", "today", "and", "tomorrow", "city", "big", "very"]
  rng = np.random.default_rng(0)
  pairs = [(" ".join(rng.choice(words, n)), " ".join(rng.choice(eng, n + 2)))
           for n in rng.integers(1, 20, 48)]
  bt = bitext.Bitext("toy", [f for f, _ in pairs], [e for _, e in pairs])
  cfg = pipeline.PipelineConfig(global_batch=8, src_max_length=32, tgt_max_length=32,
                                buckets=(8, 16, 32), remainder="drop", seed=0, cache_dir=None)
  return teacher, student, bt, cfg


def _run(teacher, student, batches, cached: bool, steps: int = 4):
  loss_cfg = losses.DistillConfig(loss="ot", src_special=tuple(student.tokenizer.special_ids),
                                  tgt_special=tuple(teacher.tokenizer.special_ids))
  spec = step_lib.DistillSpec(student=student.cfg, teacher=teacher.cfg, loss=loss_cfg,
                              teacher_from_batch=cached)
  tx = step_lib.make_optimizer(student.params, lr=1e-2, steps=steps, warmup_steps=1,
                               weight_decay=0.01, clip_norm=1.0)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  frozen = {} if cached else {"teacher": teacher.params}
  state, frozen = step_lib.replicated_state(student.params, tx, jax.random.PRNGKey(0), frozen, mesh)
  fn = step_lib.make_distill_step(spec, tx, mesh)
  it = iter(batches)
  seen = []
  for _ in range(steps):
    b = next(it)
    b.pop("valid")
    state, m = fn(state, frozen, step_lib.shard_batch(b, mesh))
    seen.append(float(m["loss"]))
  return seen, jax.device_get(state.params)


def test_float32_cache_reproduces_the_uncached_step(setup):
  teacher, student, bt, cfg = setup
  plain = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  cached = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  vectors = teacher_cache.teacher_tokens(teacher, cached, "float32", None, log=lambda *_: None)
  assert len(vectors) == len(bt) and vectors.flat.dtype == np.float32
  peek = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  peek.attach_teacher_tokens(vectors)
  b = next(iter(peek))
  assert b["tgt_tokens"].shape == b["tgt_ids"].shape + (32,)
  assert not b["tgt_tokens"][b["tgt_mask"] == 0].any()      # zero past each row's end
  l0, p0 = _run(teacher, student, plain, cached=False)
  l1, p1 = _run(teacher, student, cached, cached=True)
  np.testing.assert_allclose(l1, l0, rtol=0, atol=1e-6)
  for a, c in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-6)


def test_cache_is_stored_once_and_reused(setup, tmp_path):
  teacher, student, bt, cfg = setup
  logs = []
  for _ in range(2):
    batches = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
    v = teacher_cache.teacher_tokens(teacher, batches, "bfloat16", str(tmp_path), log=logs.append)
  assert "from cache" not in logs[0] and "from cache" in logs[1]
  fresh = teacher_cache.compute(teacher, batches, "bfloat16", log=lambda *_: None)
  np.testing.assert_array_equal(np.asarray(v.flat, np.float32), np.asarray(fresh.flat, np.float32))
  # Another storage precision is another entry.
  assert teacher_cache.cache_key(teacher, batches, "float16") != teacher_cache.cache_key(
      teacher, batches, "bfloat16")


def test_damaged_cache_entry_is_detected_and_recomputed(setup, tmp_path):
  """Issue 27's silent case: a flat.npy overwritten with finite values of the same shape
  trained students on garbage. Now the entry fails its checksum, is named in one warning,
  moved aside and recomputed: the vectors equal a fresh computation."""
  teacher, student, bt, cfg = setup
  batches = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  teacher_cache.teacher_tokens(teacher, batches, "float16", str(tmp_path), log=lambda *_: None)
  entry = next(p for p in tmp_path.iterdir() if p.name.startswith("teacher-"))
  npy = entry / "0.npy"
  garbage = np.full_like(np.load(npy), 0.25)
  np.save(npy, garbage)
  logs = []
  batches = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  v = teacher_cache.teacher_tokens(teacher, batches, "float16", str(tmp_path), log=logs.append)
  warned = [m for m in logs if m.startswith("warning:")]
  assert len(warned) == 1 and "checksum mismatch" in warned[0] and str(entry) in warned[0]
  assert not any("from cache" in m for m in logs)
  fresh = teacher_cache.compute(teacher, batches, "float16", log=lambda *_: None)
  np.testing.assert_array_equal(np.asarray(v.flat), np.asarray(fresh.flat))


def test_cache_entry_is_shared_across_seeds_and_students_not_teachers(setup):
  """A study's cells over seeds or students (same teacher, same English rows and lengths)
  share one entry; another teacher, or other English rows, is another entry."""
  teacher, student, bt, cfg = setup
  key = lambda t, s, c, b=bt: teacher_cache.cache_key(  # pylint: disable=unnecessary-lambda-assignment
      t, pipeline.BitextBatches(b, s.tokenizer, t.tokenizer, c), "float16")
  base = key(teacher, student, cfg)
  assert key(teacher, student, dataclasses.replace(cfg, seed=7)) == base
  assert key(teacher, teacher, cfg) == base          # another student, same tokenizer
  assert key(student, student, cfg) != base          # another (random) teacher
  assert key(teacher, student, dataclasses.replace(cfg, buckets=(32,))) != base  # lengths
  other = bitext.Bitext("toy", bt.foreign, bt.english[:-1] + ["very big city"])
  assert key(teacher, student, cfg, other) != base


def test_float16_cache_refuses_values_beyond_its_range(setup):
  teacher, student, bt, cfg = setup
  params = jax.tree.map(np.array, teacher.params)
  params["encoder"]["layer_1"]["output_LayerNorm"]["bias"][:] = 1e5   # > float16 max 65504
  big = dataclasses.replace(teacher, params=params)
  batches = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg)
  with pytest.raises(InputError, match="float16.*bfloat16 or float32"):
    teacher_cache.compute(big, batches, "float16", log=lambda *_: None)
  v = teacher_cache.compute(big, batches, "bfloat16", log=lambda *_: None)
  assert np.isfinite(np.asarray(v.flat, np.float32)).all()


def test_host_shards_cache_only_each_hosts_rows(setup, tmp_path):
  teacher, student, bt, cfg = setup
  full = teacher_cache.compute(teacher, pipeline.BitextBatches(
      bt, student.tokenizer, teacher.tokenizer, cfg), "float32", log=lambda *_: None)
  cfg = dataclasses.replace(cfg, host_shards=True)
  keys = set()
  for p in range(2):
    batches = pipeline.BitextBatches(bt, student.tokenizer, teacher.tokenizer, cfg,
                                     process_index=p, process_count=2)
    v = teacher_cache.teacher_tokens(teacher, batches, "float32", str(tmp_path), log=lambda *_: None)
    keys.add(teacher_cache.cache_key(teacher, batches, "float32"))
    mine = batches.host_rows()
    stored = np.flatnonzero(np.diff(v.offsets) > 0)
    assert stored.tolist() == mine.tolist() and len(mine) == len(bt) // 2
    assert len(v.flat) == sum(full.offsets[i + 1] - full.offsets[i] for i in mine)
    for i in mine:     # the same vectors as the whole cache's
      np.testing.assert_array_equal(v.flat[v.offsets[i]:v.offsets[i + 1]],
                                    full.flat[full.offsets[i]:full.offsets[i + 1]])
    for batch in batches.epoch(0):   # every row this host is given is in its shard
      assert batch["tgt_tokens"].shape[:2] == batch["tgt_ids"].shape
    with pytest.raises(ValueError, match="not in this host's shard"):
      v.gather(np.array([1 - p]), 8)
  assert len(keys) == 2 and len(os.listdir(tmp_path)) == 2


@pytest.mark.slow
def test_pooler_models_distil_through_their_pooler_cached_or_not(tmp_path):
  """LaBSE-style models (pooling 'pooler'): the sentence term pools through each side's
  pooler; from a float32 teacher cache the teacher's pooler still applies."""
  run = __import__("optical_jax.trainer", fromlist=["run"]).run
  losses_of = {}
  for name, over in [("plain", {}), ("cached", {"data.teacher_cache": "float32"}),
                     ("mean", {"teacher.pooling": "mean", "student.pooling": "mean"})]:
    base = {"train.devices": 1, "train.steps": 4, "loss.loss": "sentence",
            "teacher.pooling": "pooler", "student.pooling": "pooler",
            "data.cache_dir": str(tmp_path / "cache")}
    r = run(tiny(**dict(base, **over)), str(tmp_path / name), log_fn=lambda *_: None)
    losses_of[name] = r.last_metrics["loss"]
  np.testing.assert_allclose(losses_of["cached"], losses_of["plain"], rtol=1e-5)
  assert abs(losses_of["mean"] - losses_of["plain"]) > 1e-4


@pytest.mark.slow  # default-run budget (measured 10:51 idle with it)
def test_trainer_with_a_16_bit_cache_trains_and_runs_the_teacher_for_losses_needing_its_internals(
    tmp_path):
  run = __import__("optical_jax.trainer", fromlist=["run"]).run
  logs = []
  r = run(tiny(**{"train.devices": 1, "data.teacher_cache": "float16",
                  "data.cache_dir": str(tmp_path / "cache")}), str(tmp_path / "w"), log_fn=logs.append)
  assert r.step == 12 and np.isfinite(r.last_metrics["loss"])
  assert any(str(m).startswith("teacher tokens:") for m in logs)
  logs.clear()
  r = run(tiny(**{"train.devices": 1, "data.teacher_cache": "float16", "loss.marginals": "cls_attention",
                  "data.cache_dir": str(tmp_path / "cache")}), str(tmp_path / "w2"), log_fn=logs.append)
  assert r.step == 12 and np.isfinite(r.last_metrics["loss"])
  assert any("teacher_cache=float16 not used" in str(m) for m in logs)
  assert not any(str(m).startswith("teacher tokens:") for m in logs)
