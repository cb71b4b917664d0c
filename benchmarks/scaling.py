"""The distillation step on 1, 2, 4 and 8 (fake CPU) devices: one compile each, same loss and params.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --quick

JAX is started with `jax_num_cpu_devices=8`, so the host's cores are presented as 8 CPU
devices. For each device count N the same global batches (32 pairs, 32 tokens each side,
random ids, variable real lengths) go through `optical_jax.step.make_distill_step` on
a 1-D mesh of the first N devices (each device holds 32/N pairs; gradients, loss and
metrics are averaged with `lax.pmean` over the mesh), starting from the same student
params and optimizer state. Dropout is 0 here: with dropout the per-device random
streams (`fold_in(rng, axis_index)`) differ by design between device counts, so the
runs could not be compared number for number. Sinkhorn is the default adaptive solver.

Reported per N: compilations of the step (`_cache_size()` and backend-compile events;
goal: 1), max |loss - loss(N=1)| over the steps, max |param - param(N=1)| after the
last step, and step times. Times are informative only: the 8 fake devices share the
same physical cores, so more devices means the same work split into more, smaller
pieces that compete for those cores (plus the all-reduce copies).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

SMALL = dict(vocab_size=30522, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
             hidden_dropout=0.0, attention_dropout=0.0)
TINY = dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
            hidden_dropout=0.0, attention_dropout=0.0)


def main():
  p = C.parser("scaling", __doc__)
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--length", type=int, default=32)
  args = p.parse_args()
  counts = [int(x) for x in args.devices.split(",")]
  args.steps = args.steps or (3 if args.quick else 6)
  arch = TINY if args.quick else SMALL

  out = C.header(args, "scaling")
  out["load"] = C.wait_for_quiet(args)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", max(counts))
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, losses, step as step_lib  # pylint: disable=g-import-not-at-top
  if jax.device_count() < max(counts):
    raise SystemExit(f"only {jax.device_count()} devices (JAX initialised too early?)")
  out["machine"] = C.machine_info()
  out["settings"] = {"devices": counts, "steps": args.steps, "batch": args.batch,
                     "length": args.length, "encoder": arch}
  print(f"machine: {out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores, "
        f"{jax.device_count()} fake CPU devices; load {out['load']['at_start']}")

  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda e, d, **k: events.append(d) if e == "/jax/core/compile/backend_compile_duration" else None)
  cfg = enc.EncoderConfig(**arch)
  student = jax.tree.map(np.asarray, enc.init_params(cfg, jax.random.PRNGKey(1)))
  teacher = jax.tree.map(np.asarray, enc.init_params(cfg, jax.random.PRNGKey(2)))
  spec = step_lib.DistillSpec(student=cfg, teacher=cfg, loss=losses.DistillConfig())
  tx = step_lib.make_optimizer(student, lr=1e-3, steps=100, warmup_steps=2, weight_decay=0.01,
                               clip_norm=1.0)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(args.steps):
    b = {}
    for side in ("src", "tgt"):
      lens = rng.integers(4, args.length + 1, size=args.batch)
      mask = (np.arange(args.length)[None] < lens[:, None]).astype(np.int32)
      ids = rng.integers(1000 if arch["vocab_size"] > 2000 else 3, arch["vocab_size"],
                         size=(args.batch, args.length)).astype(np.int32)
      b[f"{side}_ids"] = np.where(mask > 0, ids, 0).astype(np.int32)
      b[f"{side}_mask"] = mask
    batches.append(b)

  rows, ref = [], None
  for n in counts:
    mesh = step_lib.make_mesh(jax.devices()[:n])
    state, frozen = C.distill_state(student, teacher, tx, mesh)
    fn = step_lib.make_distill_step(spec, tx, mesh)
    e0 = len(events)
    losses_seen, times = [], []
    with C.Contention() as cont:
      for b in batches:
        t = time.perf_counter()
        state, m = fn(state, frozen, step_lib.shard_batch(b, mesh))
        losses_seen.append(float(np.asarray(jax.device_get(m["loss"]))))
        times.append(time.perf_counter() - t)
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    metrics = step_lib.host_metrics(m)
    row = {"devices": n, "per_device_batch": args.batch // n, "cache_size": fn._cache_size(),  # pylint: disable=protected-access
           "compile_events": len(events) - e0, "compile_s": float(sum(events[e0:])),
           "first_step_s": times[0], "median_step_s": float(np.median(times[1:])) if len(times) > 1
           else None, "losses": losses_seen, "final_loss": losses_seen[-1],
           "sinkhorn_iterations": metrics.get("iterations"), **cont.summary()}
    if ref is None:
      ref = (losses_seen, params)
    row["max_loss_diff"] = float(np.max(np.abs(np.array(losses_seen) - np.array(ref[0]))))
    row["max_param_diff"] = float(max(np.max(np.abs(a - b)) for a, b in zip(
        jax.tree.leaves(params), jax.tree.leaves(ref[1]))))
    rows.append(row)
    print(f"  {n} device(s): cache {row['cache_size']}, loss diff {row['max_loss_diff']:.2e}, "
          f"param diff {row['max_param_diff']:.2e}, median step {row['median_step_s']:.3f} s")
    del state, frozen, fn
  out["rows"] = rows
  out["load"]["at_end"] = C.load_avg()
  print(C.table(rows, ["devices", "per_device_batch", "cache_size", "compile_events", "compile_s",
                       "first_step_s", "median_step_s", "final_loss", "max_loss_diff",
                       "max_param_diff", "load1", "others_cores"]))
  C.write(args.out or C.default_out("scaling", args.quick), out)


if __name__ == "__main__":
  main()
