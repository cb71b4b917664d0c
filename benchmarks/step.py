"""Distillation step throughput (pairs/s, tokens/s, MFU) of optical_jax vs the same step in PyTorch eager.

    python benchmarks/step.py            # full grid (~10 min on 2 cores)
    python benchmarks/step.py --quick    # MiniLM size, batch 8: a smoke run
    python benchmarks/step.py --models minilm-l6,e5-small --batches 32 --out R.json  # a subset
    python benchmarks/step.py --models e5-small --batches 32 --no-torch --teacher cached \
        --freeze word_embeddings --out R.json      # JAX with frozen word embeddings
    python benchmarks/step.py --models e5-small --batches 32 --no-torch --teacher cached \
        --sparse-embeddings --out R.json           # row-sparse (lazy AdamW) word embeddings

What is timed: one full OPTICAL update, `optical_jax.step.make_distill_step` on a
1-device mesh (teacher forward, student forward + backward with dropout, cosine cost,
Sinkhorn, envelope gradient, AdamW with clipping; train state donated), compiled
ahead of time; after one warm-up step, the median of several timed steps, each
ending with `block_until_ready`. Student and teacher have the same architecture and
random weights; every query has exactly `--length` real tokens on both sides.

`--teacher run,cached` (the default) times each float32 configuration twice: with the
teacher run inside the step, and with its token embeddings read from the batch
(`data.teacher_cache`: `DistillSpec(teacher_from_batch=True)`, bfloat16 vectors as the
cache stores them by default, cast to float32 in the step); the PyTorch `cached` step
likewise takes precomputed teacher tokens, as sentence-transformers' multilingual
distillation precomputes its teacher's embeddings. Cached rows count no teacher FLOPs.

Sinkhorn runs a fixed number of iterations (`OTConfig(fixed_iterations=True,
max_iterations=--sinkhorn-iters)`) so that JAX and PyTorch do identical work.

The PyTorch step (`--torch`, on by default) is what a PyTorch user would write:
transformers `BertModel` (same config, random init, default attention implementation),
eager mode; teacher under `torch.no_grad()`; batched log-domain Sinkhorn with the
same epsilon and iteration count (`benchmarks/_torch_ot.py`); loss <T, C> with the plan
detached; `torch.optim.AdamW` + `clip_grad_norm_(1.0)` + a warm-up LR schedule.
bfloat16 in PyTorch means `torch.autocast('cpu', torch.bfloat16)` around both encoders.

Model FLOPs per step (the MFU numerator; see docs/performance.md):
  encoder forward of one length-L sequence:
      F(L) = layers * (8 L H^2 + 4 L H F_ffn + 4 L^2 H)  [+ 2 L H head]
    (Q, K, V, output projections; FFN; attention scores and context; embeddings,
    LayerNorm, softmax, GELU and other element-wise work not counted)
  student forward + backward = 3 F(Ls); teacher forward = F(Lt);
  OT per pair: cosine cost 2 n m d forward + 2 n m d backward (student side only),
    Sinkhorn iters * 10 n m (two log-sum-exp updates of ~5 FLOPs per entry, exp = 1 FLOP)
  total = B * (3 F(Ls) + F(Lt) + 4 n m d + 10 iters n m).
MFU = total / step time / peak, where peak is the best float32 FLOP/s of a large
jitted square matmul measured in the same run (at the start and at the end).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

ARCH = {
    # name: (vocab, hidden, layers, heads, ffn)
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12,
                      intermediate_size=3072),
    "minilm-l6": dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                      intermediate_size=1536),
    "e5-small": dict(vocab_size=250037, hidden_size=384, num_layers=12, num_heads=12,
                     intermediate_size=1536),
}


def encoder_flops(arch, length: int) -> float:
  h, f, n = arch["hidden_size"], arch["intermediate_size"], arch["num_layers"]
  return float(n * (8 * length * h * h + 4 * length * h * f + 4 * length * length * h))


def step_flops(arch, batch: int, ls: int, lt: int, iters: int, cached: bool = False) -> dict:
  d = arch["hidden_size"]
  student = 3 * encoder_flops(arch, ls)
  teacher = 0.0 if cached else encoder_flops(arch, lt)
  cost = 4.0 * ls * lt * d
  sink = 10.0 * iters * ls * lt
  per_pair = student + teacher + cost + sink
  return {"total": batch * per_pair, "student_fwd_bwd": batch * student, "teacher_fwd": batch * teacher,
          "ot_cost": batch * cost, "sinkhorn": batch * sink}


# ----------------------------------------------------------------------------- peak


def measure_peak(sizes, dtype_name: str, repeats: int = 3) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  best = {"flops_per_s": 0.0}
  per_size = {}
  f = jax.jit(lambda a, b: a @ b)
  for n in sizes:
    rng = np.random.default_rng(n)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32), dt)
    b = jnp.asarray(rng.standard_normal((n, n), np.float32), dt)
    f(a, b).block_until_ready()
    with C.Contention() as cont:
      times = C.time_calls(lambda: f(a, b).block_until_ready(), repeats)
    rate = 2.0 * n ** 3 / min(times)
    per_size[n] = {"gflops_per_s": rate / 1e9, "min_s": min(times), **cont.summary()}
    if rate > best["flops_per_s"]:
      best = {"flops_per_s": rate, "size": n, **cont.summary()}
    del a, b
  best["per_size"] = per_size
  return best


# ----------------------------------------------------------------------------- JAX


def make_batch(rng, batch: int, length: int, vocab: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for side in ("src", "tgt"):
    ids = rng.integers(1000, vocab, size=(batch, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    out[f"{side}_ids"] = ids
    out[f"{side}_mask"] = np.ones((batch, length), np.int32)
  return out


def run_jax(model: str, batch: int, dtype: str, args, data, profile: bool = False,
            cached: bool = False) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, losses, ot, step as step_lib  # pylint: disable=g-import-not-at-top

  arch = ARCH[model]
  cfg = enc.EncoderConfig(**arch, dtype=dtype)
  init = jax.jit(lambda k: enc.init_params(cfg, k))
  student = jax.tree.map(np.asarray, init(jax.random.PRNGKey(1)))
  teacher = jax.tree.map(np.asarray, init(jax.random.PRNGKey(2)))
  loss_cfg = losses.DistillConfig(loss="ot", ot=ot.OTConfig(
      epsilon=args.epsilon, max_iterations=args.sinkhorn_iters, fixed_iterations=True))
  freeze = tuple(x for x in (args.freeze or "").split(",") if x)
  spec = step_lib.DistillSpec(student=cfg, teacher=cfg, loss=loss_cfg, teacher_from_batch=cached,
                              freeze=freeze, sparse_embeddings=args.sparse_embeddings)
  tx = step_lib.make_optimizer(student, lr=5e-5, steps=100000, warmup_steps=10,
                               weight_decay=0.01, clip_norm=1.0, freeze=freeze)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  if cached:   # what teacher_cache stores: the teacher's output tokens, 16-bit
    tokens = jax.jit(lambda p, i, m: enc.apply(p, i, m, cfg=cfg))(
        teacher, data["tgt_ids"], data["tgt_mask"])
    data = dict(data, tgt_tokens=np.asarray(tokens, np.float32).astype(ml_dtypes.bfloat16))
  state, frozen = C.distill_state(student, None if cached else teacher, tx, mesh)
  fn = step_lib.make_distill_step(spec, tx, mesh)
  b = step_lib.shard_batch(data, mesh)
  t0 = time.perf_counter()
  lowered = fn.lower(state, frozen, b)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  xla_flops = None
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    xla_flops = float(ca.get("flops")) if ca and ca.get("flops") is not None else None
  except Exception:  # pylint: disable=broad-except
    pass
  holder = {"state": state}

  def one():
    holder["state"], m = compiled(holder["state"], frozen, b)
    jax.block_until_ready((holder["state"], m))
    holder["m"] = m

  warm = C.time_calls(one, 1)[0]
  reps = C.repeats_for(warm, args.time_budget, 1 if warm > args.long_step else args.min_steps,
                       args.max_steps)
  with C.Contention() as cont:
    times = C.time_calls(one, reps)
  m = step_lib.host_metrics(holder["m"])
  prof = None
  if profile:
    import _profile  # pylint: disable=g-import-not-at-top
    prof = _profile.profile(one, steps=1)
    print("    profile (ms/step): " + ", ".join(
        f"{k} {v:.0f}" for k, v in prof.get("ms_per_step", {}).items()), flush=True)
  del holder, state, frozen, compiled, lowered, fn, student, teacher
  gc.collect()
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "warmup_s": warm, "xla_flops": xla_flops,
          "profile": prof,
          **C.stats(times), **cont.summary(), "loss": m["loss"],
          "converged_fraction": m.get("converged_fraction"), "sinkhorn_iterations": m.get("iterations")}


# ----------------------------------------------------------------------------- PyTorch


def run_torch(model: str, batch: int, dtype: str, args, data, cached: bool = False) -> dict:
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import BertConfig, BertModel  # pylint: disable=g-import-not-at-top
  import _torch_ot  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  arch = ARCH[model]
  tcfg = BertConfig(vocab_size=arch["vocab_size"], hidden_size=arch["hidden_size"],
                    num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
                    intermediate_size=arch["intermediate_size"], max_position_embeddings=512,
                    type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12)
  student = BertModel(tcfg, add_pooling_layer=False).train()
  teacher = BertModel(tcfg, add_pooling_layer=False).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  attn_impl = getattr(student.config, "_attn_implementation", None)
  opt = torch.optim.AdamW(student.parameters(), lr=5e-5, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.01)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
  t = {k: torch.from_numpy(v.astype("int64")) for k, v in data.items()}
  a = t["src_mask"].float() / t["src_mask"].sum(1, keepdim=True)
  bw = t["tgt_mask"].float() / t["tgt_mask"].sum(1, keepdim=True)
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else (
      contextlib.nullcontext)
  out = {}
  if cached:   # precomputed once, as sentence-transformers' distillation does
    with torch.no_grad(), autocast():
      fixed = teacher(input_ids=t["tgt_ids"], attention_mask=t["tgt_mask"]).last_hidden_state

  def one():
    if cached:
      y = fixed
    else:
      with torch.no_grad(), autocast():
        y = teacher(input_ids=t["tgt_ids"], attention_mask=t["tgt_mask"]).last_hidden_state
    with autocast():
      x = student(input_ids=t["src_ids"], attention_mask=t["src_mask"]).last_hidden_state
    cost = _torch_ot.cosine_cost(x.float(), y.float())
    plan, _, _ = _torch_ot.sinkhorn_log(cost.detach(), a, bw, args.epsilon, args.sinkhorn_iters)
    loss = (plan * cost).sum(dim=(1, 2)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    sched.step()
    out["loss"] = float(loss.detach())

  warm = C.time_calls(one, 1)[0]
  reps = C.repeats_for(warm, args.time_budget, 1 if warm > args.long_step else args.min_steps,
                       args.max_steps)
  with C.Contention() as cont:
    times = C.time_calls(one, reps)
  del student, teacher, opt
  gc.collect()
  return {"warmup_s": warm, **C.stats(times), **cont.summary(), "loss": out["loss"],
          "attn_implementation": attn_impl, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- main


def _base_row(model, batch, dtype, fw, teacher, args):
  import numpy as np  # pylint: disable=g-import-not-at-top
  data = make_batch(np.random.default_rng(batch), batch, args.length, ARCH[model]["vocab_size"])
  fl = step_flops(ARCH[model], batch, args.length, args.length, args.sinkhorn_iters,
                  cached=teacher == "cached")
  row = {"model": model, "batch": batch, "dtype": dtype, "framework": fw, "teacher": teacher,
         "model_flops": fl["total"], "flops_breakdown": fl}
  print(f"[{fw}] {model} batch {batch} {dtype} teacher {teacher} ...", flush=True)
  return row, data


def _report(row):
  print(f"    {row['median_s']:.3f} s/step over {row['n']} steps "
        f"({row['batch'] / row['median_s']:.1f} pairs/s; load {row['load1']}, others "
        f"{row['others_cores']} cores)", flush=True)
  return row


def jax_row(model, batch, dtype, teacher, args, profile=False):
  row, data = _base_row(model, batch, dtype, "jax", teacher, args)
  row.update(run_jax(model, batch, dtype, args, data, profile=profile, cached=teacher == "cached"))
  return _report(row)


def torch_row(model, batch, dtype, teacher, args):
  row, data = _base_row(model, batch, dtype, "torch", teacher, args)
  row.update(run_torch(model, batch, dtype, args, data, cached=teacher == "cached"))
  return _report(row)


def main():
  p = C.parser("step", __doc__)
  p.add_argument("--models", default=None, help="comma list of " + ",".join(ARCH))
  p.add_argument("--batches", default=None, help="comma list of global batch sizes")
  p.add_argument("--grid", choices=("standard", "all"), default="standard",
                 help="standard: float32 everywhere, bfloat16 at the smallest batch (PyTorch "
                      "bfloat16 for the first model only); all: every model x batch x dtype for "
                      "both frameworks")
  p.add_argument("--length", type=int, default=32, help="tokens per query (both sides)")
  p.add_argument("--sinkhorn-iters", type=int, default=100)
  p.add_argument("--epsilon", type=float, default=0.05)
  p.add_argument("--no-torch", dest="torch", action="store_false")
  p.add_argument("--teacher", default="run,cached",
                 help="comma list: run (the teacher inside the step) and/or cached (its tokens "
                      "precomputed; float32 configurations only)")
  p.add_argument("--time-budget", type=float, default=None,
                 help="seconds of timed steps per configuration (after one warm-up step)")
  p.add_argument("--min-steps", type=int, default=2,
                 help="timed steps at least (1 when the warm-up step took > --long-step s)")
  p.add_argument("--long-step", type=float, default=25.0)
  p.add_argument("--max-steps", type=int, default=None)
  p.add_argument("--peak-sizes", default=None, help="square matmul sizes for the peak")
  p.add_argument("--freeze", default="",
                 help="comma list of param-path regexes frozen in the JAX rows (optim.freeze), "
                      "e.g. word_embeddings")
  p.add_argument("--sparse-embeddings", action="store_true",
                 help="JAX rows update only the batch's word-embedding rows "
                      "(optim.sparse_embeddings)")
  p.add_argument("--profile", default=None,
                 help="comma list of MODEL:BATCH:DTYPE to trace with jax.profiler ('' = none)")
  args = p.parse_args()
  q = args.quick
  models = (args.models or ("minilm-l6" if q else "minilm-l6,e5-small,bert-base")).split(",")
  batches = [int(x) for x in (args.batches or ("8" if q else "32,128")).split(",")]
  args.time_budget = args.time_budget if args.time_budget is not None else (2.0 if q else 8.0)
  args.max_steps = args.max_steps or (3 if q else 10)
  peak_sizes = [int(x) for x in (args.peak_sizes or ("1024,2048" if q else "2048,4096")).split(",")]
  prof = args.profile if args.profile is not None else (
      "minilm-l6:8:float32" if q else "minilm-l6:32:float32,bert-base:32:float32")
  profile_set = {tuple(x.split(":")) for x in prof.split(",") if x}
  for m in models:
    if m not in ARCH:
      p.error(f"unknown model {m!r}; known: {', '.join(ARCH)}")
  teachers = args.teacher.split(",")
  if not teachers or any(t not in ("run", "cached") for t in teachers):
    p.error(f"--teacher takes run and/or cached, got {args.teacher!r}")
  plan = []  # (model, batch, framework, dtype, teacher)
  for model in models:
    for batch in batches:
      for fw in ("jax", "torch") if args.torch else ("jax",):
        for dtype in ("float32", "bfloat16"):
          if args.grid == "standard" and dtype == "bfloat16" and (
              batch != min(batches) or (fw == "torch" and model != models[0])):
            continue
          for teacher in teachers:
            if not (teacher == "cached" and dtype != "float32"):
              plan.append((model, batch, fw, dtype, teacher))

  if args.worker == "torch":  # child process: the PyTorch rows only
    import numpy as np  # pylint: disable=g-import-not-at-top
    rows = []
    for model, batch, fw, dtype, teacher in plan:
      if fw == "torch":
        rows.append(torch_row(model, batch, dtype, teacher, args))
    import torch  # pylint: disable=g-import-not-at-top
    C.worker_done(args, {"rows": rows, "torch_threads": torch.get_num_threads()})
    return

  out = C.header(args, "step")
  out["load"] = C.wait_for_quiet(args)
  torch_rows, torch_threads = [], None
  if args.torch:
    print("PyTorch steps (in a separate process):", flush=True)
    res = C.run_worker("torch")
    torch_rows, torch_threads = res["rows"], res["torch_threads"]
  import jax  # pylint: disable=g-import-not-at-top  (after the wait: import costs CPU)
  import numpy as np  # pylint: disable=g-import-not-at-top
  out["machine"] = C.machine_info()
  out["machine"]["torch_threads"] = torch_threads
  out["settings"] = {"models": models, "batches": batches, "grid": args.grid, "plan": plan,
                     "teacher": teachers, "freeze": args.freeze,
                     "sparse_embeddings": args.sparse_embeddings,
                     "length": args.length, "sinkhorn_iters": args.sinkhorn_iters,
                     "epsilon": args.epsilon, "time_budget_s": args.time_budget,
                     "min_steps": args.min_steps, "long_step_s": args.long_step,
                     "max_steps": args.max_steps, "archs": {m: ARCH[m] for m in models}}
  print(f"machine: {out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores; "
        f"load {out['load']['at_start']}")
  peak = measure_peak(peak_sizes, "float32")
  peak_bf16 = measure_peak(peak_sizes[-1:], "bfloat16")
  print(f"peak float32 matmul: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (n={peak['size']}); "
        f"bfloat16: {peak_bf16['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for model, batch, fw, dtype, teacher in plan:
    if fw == "jax":
      rows.append(jax_row(model, batch, dtype, teacher, args,
                          profile=(model, str(batch), dtype) in profile_set and teacher == "run"))
  rows += torch_rows
  peak_end = measure_peak(peak_sizes[-1:], "float32")
  best_peak = max(peak["flops_per_s"], peak_end["flops_per_s"])
  L = args.length
  for r in rows:
    t = r["median_s"]
    r["pairs_per_s"] = r["batch"] / t
    r["tokens_per_s"] = r["batch"] * 2 * L / t
    r["model_tflops_per_s"] = r["model_flops"] / t / 1e12
    r["mfu"] = r["model_flops"] / t / best_peak
    if r.get("xla_flops"):
      r["xla_over_analytic"] = r["xla_flops"] / r["model_flops"]
  by_key = {(r["model"], r["batch"], r["dtype"], r["framework"], r["teacher"]): r for r in rows}
  for r in rows:
    if r["framework"] == "jax":
      tr = by_key.get((r["model"], r["batch"], r["dtype"], "torch", r["teacher"]))
      if tr:
        r["jax_over_torch"] = r["pairs_per_s"] / tr["pairs_per_s"]
      tf = by_key.get((r["model"], r["batch"], "float32", "torch", r["teacher"]))
      if tf:
        r["jax_over_torch_f32"] = r["pairs_per_s"] / tf["pairs_per_s"]
  out["peak"] = {"float32": peak, "float32_end": peak_end, "bfloat16": peak_bf16,
                 "used_flops_per_s": best_peak}
  out["rows"] = rows
  out["load"]["at_end"] = C.load_avg()
  cols = ["model", "batch", "dtype", "framework", "teacher", "median_s", "n", "pairs_per_s", "tokens_per_s",
          "mfu", "jax_over_torch", "jax_over_torch_f32", "compile_s", "xla_over_analytic", "load1", "others_cores"]
  print()
  print(C.table(rows, cols))
  print(f"\npeak float32 {best_peak / 1e9:.1f} GFLOP/s; load at start {out['load']['at_start']}, "
        f"at end {out['load']['at_end']}")
  C.write(args.out or C.default_out("step", q), out)


if __name__ == "__main__":
  main()
