"""The train loop with and without a host sync after every step (issue 25).

    python benchmarks/sync.py           # MiniLM-L6 size, batch 32, 20 steps per loop
    python benchmarks/sync.py --quick   # batch 8, 8 steps

The same compiled distillation step (`step.make_distill_step`, MiniLM-L6-size student
and teacher with random weights, cached teacher tokens as the shipped configs use, OT
with a fixed 50 Sinkhorn iterations) is run in two loops over `--steps` steps:
  * `sync`: after each step the host reads the finiteness flag (`jax.device_get`), as
    the trainer did before: the host waits for the step to finish before it can
    dispatch the next one;
  * `watch`: the trainer's loop now: after each step the first non-finite step is
    updated on the device (`trainer.NonfiniteWatch`, dispatched asynchronously) and read
    once at the end.
Each loop ends with `block_until_ready`; the median of `--repeats` loops is reported,
with the steps per second and the ratio. On a CPU the device is the host's own cores, so
there is little for asynchronous dispatch to overlap; on an accelerator the `sync` loop
leaves the device idle while Python prepares each next batch.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top
from step import ARCH, make_batch  # noqa: E402  pylint: disable=g-import-not-at-top


def main():
  p = C.parser("sync", __doc__)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  args.batch = args.batch or (8 if args.quick else 32)
  args.steps = args.steps or (8 if args.quick else 20)
  out = C.header(args, "sync")
  out["load"] = C.wait_for_quiet(args)
  out["machine"] = C.machine_info()
  out["settings"] = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats,
                     "model": "minilm-l6", "sinkhorn_iterations": 50, "teacher": "cached"}

  import jax  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, losses, ot, step as step_lib, trainer  # pylint: disable=g-import-not-at-top

  cfg = enc.EncoderConfig(**ARCH["minilm-l6"])
  init = jax.jit(lambda k: enc.init_params(cfg, k))
  student = jax.tree.map(np.asarray, init(jax.random.PRNGKey(1)))
  teacher = jax.tree.map(np.asarray, init(jax.random.PRNGKey(2)))
  spec = step_lib.DistillSpec(student=cfg, teacher=cfg, teacher_from_batch=True,
                              loss=losses.DistillConfig(loss="ot", ot=ot.OTConfig(
                                  max_iterations=50, fixed_iterations=True)))
  tx = step_lib.make_optimizer(student, lr=1e-5, steps=100000, warmup_steps=10,
                               weight_decay=0.01, clip_norm=1.0)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  data = make_batch(np.random.default_rng(0), args.batch, 32, ARCH["minilm-l6"]["vocab_size"])
  tokens = jax.jit(lambda p, i, m: enc.apply(p, i, m, cfg=cfg))(teacher, data["tgt_ids"],
                                                                 data["tgt_mask"])
  data["tgt_tokens"] = np.asarray(tokens, np.float32).astype(ml_dtypes.bfloat16)
  fn = step_lib.make_distill_step(spec, tx, mesh)
  batch = step_lib.shard_batch(data, mesh)

  def loop(kind):
    state, frozen = C.distill_state(student, None, tx, mesh)
    watch = trainer.NonfiniteWatch()
    state, m = fn(state, frozen, batch)   # warm-up (compiled once, reused below)
    jax.block_until_ready(state)

    def run():
      nonlocal state
      for i in range(args.steps):
        state, m = fn(state, frozen, batch)
        if kind == "sync":
          float(np.asarray(jax.device_get(m["finite"])))
        else:
          watch.update(m["finite"], m["loss"], i + 1)
      jax.block_until_ready((state, watch.state))
      jax.device_get(watch.state)
    times = C.time_calls(run, args.repeats)
    return C.stats(times)

  rows = []
  for kind in ("sync", "watch"):
    s = loop(kind)
    rows.append({"loop": kind, "median_s": s["median_s"],
                 "steps_per_s": args.steps / s["median_s"], "n": s["n"]})
  rows[1]["speedup_vs_sync"] = rows[0]["median_s"] / rows[1]["median_s"]
  out["rows"] = rows
  print(C.table(rows, ["loop", "median_s", "steps_per_s", "n", "speedup_vs_sync"]))
  C.write(args.out or C.default_out("sync", args.quick), out)


if __name__ == "__main__":
  main()
