"""Compile time of the distillation step, and compilations over 1,000 steps of real bucketed bitext.

    python benchmarks/compile.py           # 1,000 steps (tiny encoder) + MiniLM-L6 compile times
    python benchmarks/compile.py --quick   # 100 steps, no MiniLM-size compile

Part 1 (the loop): the step the trainer runs (`optical_jax.step.make_distill_step` on a
1-device mesh, default adaptive Sinkhorn) with a small encoder (hidden 64, 2 layers),
fed by `BitextBatches` over `optical_jax.config.bitext_sources('swa')` (AfriQA swa
train/dev questions + NTREX swa/eng, test queries excluded), MiniLM tokenizer on both
sides, global batch 32, buckets (16, 32, 64), remainder 'drop' -- exactly how the
trainer builds its pipeline -- for `--steps` steps, reading the `finite` flag back each
step like the trainer does. Compilations are counted three ways:
  * `train_step._cache_size()` (entries in the jitted step's cache);
  * `jax.monitoring` backend-compile events ('/jax/core/compile/backend_compile_duration'),
    which count every XLA compilation in the process (helpers included);
  * `jax_log_compiles` log records, which name the compiled function.
Goal: one compilation of the step per bucket and none after warm-up (after every
bucket has been seen once).

Part 2 (compile time): ahead-of-time `lower()` and `compile()` wall time of the step
for all-MiniLM-L6-v2-sized student and teacher (random weights, batch 32) at each
bucket length (the configuration of configs/swa_minilm.py).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

TINY = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
            max_position_embeddings=128)
MINILM = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
              intermediate_size=1536)


class CompileCounter(logging.Handler):
  """Collects jax's compile events (monitoring) and the names from jax_log_compiles records."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.events = []    # (time, seconds) of backend compiles
    self.names = []     # function names from "Finished XLA compilation of NAME"
    self._pat = re.compile(r"Finished XLA compilation of (\S+) in")

  def listener(self, event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      self.events.append((time.perf_counter(), float(duration)))

  def emit(self, record):
    m = self._pat.search(record.getMessage())
    if m:
      self.names.append(m.group(1))


def run_loop(args, log=print):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, losses, step as step_lib  # pylint: disable=g-import-not-at-top
  from optical_jax.config import bitext_sources  # pylint: disable=g-import-not-at-top
  from optical_jax.data import bitext, pipeline  # pylint: disable=g-import-not-at-top
  from optical_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from optical_jax import assets  # pylint: disable=g-import-not-at-top

  counter = CompileCounter()
  jax.monitoring.register_event_duration_secs_listener(counter.listener)
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(counter)
  jax_logger.propagate_before = jax_logger.propagate
  jax.config.update("jax_log_compiles", True)
  jax_logger.propagate = False  # keep the compile log off the console

  t0 = time.perf_counter()
  tok = Tokenizer(assets.resolve("asset:minilm/tokenizer.json"))
  mixture = bitext.load_mixture({"sources": bitext_sources("swa")})
  pcfg = pipeline.PipelineConfig(global_batch=args.batch, src_max_length=64, tgt_max_length=64,
                                 buckets=(16, 32, 64), remainder="drop", seed=0, cache_dir=None)
  batches = pipeline.BitextBatches(mixture, tok, tok, pcfg)
  data_s = time.perf_counter() - t0
  stats = batches.stats()
  log(f"data: {[ (s['name'], s.get('pairs', s.get('kept'))) for s in stats['sources']]} "
      f"bucket pairs {stats['bucket_pairs']}, {stats['batches_per_epoch']} batches/epoch "
      f"({data_s:.1f} s to read and tokenise)")

  cfg = enc.EncoderConfig(vocab_size=tok.vocab_size, **TINY)
  student = enc.init_params(cfg, jax.random.PRNGKey(1))
  teacher = enc.init_params(cfg, jax.random.PRNGKey(2))
  spec = step_lib.DistillSpec(student=cfg, teacher=cfg, loss=losses.DistillConfig(
      src_special=tuple(tok.special_ids), tgt_special=tuple(tok.special_ids)))
  tx = step_lib.make_optimizer(student, lr=5e-5, steps=args.steps, warmup_steps=30,
                               weight_decay=0.01, clip_norm=1.0)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  state, frozen = C.distill_state(student, teacher, tx, mesh)
  train_step = step_lib.make_distill_step(spec, tx, mesh)

  it = iter(batches)
  seen = set()
  per_step = []
  warm_done_at = None
  n_buckets = len(batches.shapes())
  ev0, names0 = len(counter.events), len(counter.names)
  with C.Contention() as cont:
    for i in range(args.steps):
      local = next(it)
      local.pop("valid")
      shape = (local["src_ids"].shape[1], local["tgt_ids"].shape[1])
      e0, n0 = len(counter.events), len(counter.names)
      t = time.perf_counter()
      state, m = train_step(state, frozen, step_lib.shard_batch(local, mesh))
      finite = float(np.asarray(jax.device_get(m["finite"])))
      dt = time.perf_counter() - t
      new_names = counter.names[n0:]
      per_step.append({"step": i, "shape": shape, "s": dt, "compiles": len(counter.events) - e0,
                       "compile_s": sum(d for _, d in counter.events[e0:]), "names": new_names,
                       "finite": finite})
      seen.add(shape)
      if warm_done_at is None and len(seen) == n_buckets:
        warm_done_at = i
  loop_s = cont.wall_s
  metrics = step_lib.host_metrics(m)
  jax.config.update("jax_log_compiles", False)
  jax_logger.removeHandler(counter)
  jax_logger.propagate = True

  after = per_step[warm_done_at + 1:] if warm_done_at is not None else []
  by_shape = collections.OrderedDict()
  for r in per_step:
    d = by_shape.setdefault(r["shape"], {"steps": 0, "compiles": 0, "first_step_s": None,
                                         "compile_s": 0.0, "times": []})
    d["steps"] += 1
    d["compiles"] += r["compiles"]
    d["compile_s"] += r["compile_s"]
    if d["first_step_s"] is None:
      d["first_step_s"] = r["s"]
    else:
      d["times"].append(r["s"])
  bucket_rows = []
  for (ls, lt), d in sorted(by_shape.items()):
    times = sorted(d["times"])
    bucket_rows.append({"src_len": ls, "tgt_len": lt, "steps": d["steps"],
                        "compilations": d["compiles"], "compile_s": d["compile_s"],
                        "first_step_s": d["first_step_s"],
                        "median_step_s": times[len(times) // 2] if times else None})
  names_all = [n for r in per_step for n in r["names"]]
  return {
      "steps": args.steps, "global_batch": args.batch, "encoder": TINY,
      "data": {"sources": stats["sources"], "bucket_pairs": stats["bucket_pairs"],
               "batches_per_epoch": stats["batches_per_epoch"], "read_tokenise_s": data_s},
      "cache_size": train_step._cache_size(),  # pylint: disable=protected-access
      "compile_events_total": len(counter.events) - ev0,
      "compile_events_after_warmup": sum(r["compiles"] for r in after),
      "steps_after_warmup": len(after), "warmup_ends_at_step": warm_done_at,
      "compiled_functions": dict(collections.Counter(names_all)),
      "compiled_before_loop": dict(collections.Counter(counter.names[:names0])),
      "buckets": bucket_rows, "loop_s": loop_s, **cont.summary(),
      "steps_per_s": args.steps / loop_s, "final_loss": metrics["loss"],
      "final_converged_fraction": metrics.get("converged_fraction"),
      "final_sinkhorn_iterations": metrics.get("iterations"),
  }


def minilm_compile_times(args, log=print):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, losses, step as step_lib  # pylint: disable=g-import-not-at-top

  cfg = enc.EncoderConfig(**MINILM)
  init = jax.jit(lambda k: enc.init_params(cfg, k))
  student = jax.tree.map(np.asarray, init(jax.random.PRNGKey(1)))
  teacher = jax.tree.map(np.asarray, init(jax.random.PRNGKey(2)))
  spec = step_lib.DistillSpec(student=cfg, teacher=cfg, loss=losses.DistillConfig())
  tx = step_lib.make_optimizer(student, lr=5e-5, steps=1000, warmup_steps=30, weight_decay=0.01,
                               clip_norm=1.0)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  state, frozen = C.distill_state(student, teacher, tx, mesh)
  rows = []
  for length in args.minilm_buckets:
    fn = step_lib.make_distill_step(spec, tx, mesh)  # a fresh jit: nothing cached in memory
    ids = np.full((args.batch, length), 1000, np.int32)
    batch = step_lib.shard_batch({"src_ids": ids, "src_mask": np.ones_like(ids),
                                  "tgt_ids": ids, "tgt_mask": np.ones_like(ids)}, mesh)
    with C.Contention() as cont:
      t0 = time.perf_counter()
      lowered = fn.lower(state, frozen, batch)
      t1 = time.perf_counter()
      lowered.compile()
      t2 = time.perf_counter()
    rows.append({"model": "minilm-l6", "batch": args.batch, "length": length,
                 "lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0, **cont.summary()})
    log(f"  minilm-l6 batch {args.batch} length {length}: lower {t1 - t0:.1f} s, "
        f"compile {t2 - t1:.1f} s")
  return rows


def persistent_cache_worker(args):
  """Child process: compile the MiniLM step twice with a persistent cache in an empty temp dir."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="bench-xla-cache-")
  jax.config.update("jax_compilation_cache_dir", tmp)
  try:
    args.minilm_buckets = [32, 32]  # first: miss (writes the entry); second: a fresh jit -> hit
    rows = minilm_compile_times(args)
    rows[0]["persistent_cache"] = "miss (entry written)"
    rows[1]["persistent_cache"] = "hit"
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    C.worker_done(args, {"rows": rows, "cache_bytes": size})
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main():
  p = C.parser("compile", __doc__)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--minilm-buckets", default=None, help="lengths for the MiniLM compile times")
  args = p.parse_args()
  args.steps = args.steps or (100 if args.quick else 1000)
  mb = args.minilm_buckets if args.minilm_buckets is not None else ("" if args.quick else "16,32,64")
  args.minilm_buckets = [int(x) for x in mb.split(",") if x]

  if args.worker == "pcache":
    persistent_cache_worker(args)
    return

  out = C.header(args, "compile")
  out["load"] = C.wait_for_quiet(args)
  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  out["machine"] = C.machine_info()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    print("note: a persistent compilation cache is configured; compile times may be cache hits")
  out["persistent_cache_dir"] = jax.config.jax_compilation_cache_dir
  print(f"machine: {out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores; "
        f"load {out['load']['at_start']}")
  print(f"{args.steps} steps of the distillation step on bucketed swa bitext:")
  loop = run_loop(args)
  out["loop"] = loop
  print(C.table(loop["buckets"], ["src_len", "tgt_len", "steps", "compilations", "compile_s",
                                  "first_step_s", "median_step_s"]))
  print(f"jitted step cache size {loop['cache_size']}; backend compilations in the loop "
        f"{loop['compile_events_total']} ({loop['compiled_functions']}); after warm-up "
        f"(step {loop['warmup_ends_at_step']}): {loop['compile_events_after_warmup']} in "
        f"{loop['steps_after_warmup']} steps; {loop['steps_per_s']:.1f} steps/s "
        f"(load {loop['load1']}, others {loop['others_cores']} cores)")
  if args.minilm_buckets:
    print("compile time of the step, MiniLM-L6 student and teacher:")
    out["minilm"] = minilm_compile_times(args)
    print("with a persistent compilation cache (jax_compilation_cache_dir), in a fresh process:",
          flush=True)
    pc = C.run_worker("pcache")
    out["minilm"] += pc["rows"]
    out["persistent_cache_bytes"] = pc["cache_bytes"]
    print(C.table(out["minilm"], ["model", "batch", "length", "persistent_cache", "lower_s",
                                  "compile_s", "total_s", "load1", "others_cores"]))
  out["load"]["at_end"] = C.load_avg()
  C.write(args.out or C.default_out("compile", args.quick), out)


if __name__ == "__main__":
  main()
