"""Sinkhorn alone: batched ott-jax (optical_jax.ot.sinkhorn_batch) vs a per-pair POT loop vs batched PyTorch.

    python benchmarks/sinkhorn.py           # 64 pairs of 32x32 and of 64x180 tokens
    python benchmarks/sinkhorn.py --quick

Problems: `--pairs` (64) token-set pairs of n x m tokens, for (32, 32) (query vs
translated query) and (64, 180) (query vs passage). Token vectors (d = 384) are real
all-MiniLM-L6-v2 token embeddings (`--embeddings minilm`, the default): NTREX Swahili
sentences (n tokens) against their English translations (32x32) or against AfriQA
passages (64x180), choosing texts with at least n (m) tokens so that every pair has
exactly n x m real tokens; `--embeddings random` uses Gaussian vectors instead.

Every method starts from the token vectors, builds the cosine cost 1 - cos(x_i, y_j)
and solves the entropic problem with uniform marginals, epsilon = 0.05, tolerance
1e-3 on the column-marginal error checked every 10 iterations, at most
`--max-iterations`:

  ott      `jax.jit(optical_jax.ot.sinkhorn_batch)`: one vmapped ott-jax solve per pair
           (log domain, while loop; L1 error, the batch stops when all pairs converged)
  batched  `OTConfig(solver='batched')`: the same problems, updates and stopping rule in
           one loop over the [B, n, m] batch (`optical_jax.ot.batched_sinkhorn`); plans
           equal ott's (reported)
  batched-kernel  the same with `lse_mode=False` (scalings: no exp per iteration)
  ott-fixed  the same with `fixed_iterations=True` at the iteration count ott needed
           (a scan instead of a while loop: shows the loop's overhead)
  jax-plain  a plain batched log-domain Sinkhorn in jax.numpy (diagnostic: the same
           algorithm without ott's machinery)
  pot      a Python loop over pairs of `ot.sinkhorn(a, b, M, 0.05, method='sinkhorn_log')`
           on float64 numpy (POT's criterion is the L2 norm of the column-marginal error,
           which is never larger than the L1 norm: POT stops no later than the others)
  torch    batched log-domain Sinkhorn in PyTorch (benchmarks/_torch_ot.py), float32

Time per batch is the median of repeated calls after a warm-up (which includes jit
compilation for the JAX methods); plans are compared with POT's float64 plans.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top


def minilm_embeddings(pairs: int, n: int, m: int, passages: bool):
  """Real token embeddings [pairs, n, d], [pairs, m, d] with every token real."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import encoder as enc, models  # pylint: disable=g-import-not-at-top
  from configs.common import locate  # pylint: disable=g-import-not-at-top
  from optical_jax.data import beir  # pylint: disable=g-import-not-at-top
  from optical_jax.data.io import read_text_lines  # pylint: disable=g-import-not-at-top

  model = models.load_model(models.model_spec(weights="hf", path="asset:minilm",
                                              tokenizer="asset:minilm/tokenizer.json"))
  tok = model.tokenizer
  swa = read_text_lines(locate("ntrex", "swa.txt"))
  eng = read_text_lines(locate("ntrex", "eng.txt"))
  if passages:
    corpus = beir.load_corpus(locate("afriqa-clir", "corpus.jsonl"))
    other = corpus.full_texts(" ")
  else:
    other = eng
  full = max(n, m) + 64

  def pick(texts, length, aligned=None):
    ids = tok.encode_batch(texts, full)
    ok = [i for i, s in enumerate(ids) if len(s) >= length and (aligned is None or i in aligned)]
    return ok, ids

  ok_x, ids_x = pick(swa, n)
  if passages:
    ok_y, ids_y = pick(other, m)
    xs, ys = ok_x[:pairs], ok_y[:pairs]
  else:
    ok_y, ids_y = pick(other, m, aligned=set(ok_x))
    both = [i for i in ok_x if i in set(ok_y)]
    xs = ys = both[:pairs]
  if len(xs) < pairs or len(ys) < pairs:
    raise SystemExit(f"not enough long texts for {pairs} pairs of {n}x{m}")

  apply = jax.jit(lambda p, i, k: enc.apply(p, i, k, cfg=model.cfg))

  def embed(ids, rows, length):
    # First length-1 word pieces + [SEP]: a text truncated to `length` tokens.
    arr = np.array([ids[r][:length - 1] + [ids[r][-1]] for r in rows], np.int32)
    return np.asarray(apply(model.params, arr, np.ones_like(arr)), np.float32)

  return embed(ids_x, xs, n), embed(ids_y, ys, m)


def random_embeddings(pairs, n, m, d=384, seed=0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  centre = rng.standard_normal((pairs, 1, d)).astype(np.float32)
  x = centre + 0.7 * rng.standard_normal((pairs, n, d)).astype(np.float32)
  y = centre + 0.7 * rng.standard_normal((pairs, m, d)).astype(np.float32)
  return x, y


def jax_plain(x, a, y, b, epsilon, threshold, max_iterations, inner=10):
  """Batched log-domain Sinkhorn in jax.numpy, same update order and criterion as ott."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  xn = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  yn = y / jnp.linalg.norm(y, axis=-1, keepdims=True)
  cost = 1.0 - jnp.einsum("bnd,bmd->bnm", xn, yn)
  k = cost / epsilon
  la, lb = jnp.log(a), jnp.log(b)

  def inner_block(carry):
    u, v, it, _ = carry

    def one(_, uv):
      u, v = uv
      v = lb - jax.nn.logsumexp(u[:, :, None] - k, axis=1)
      u = la - jax.nn.logsumexp(v[:, None, :] - k, axis=2)
      return u, v

    u, v = jax.lax.fori_loop(0, inner, one, (u, v))
    col = jnp.sum(jnp.exp(u[:, :, None] + v[:, None, :] - k), axis=1)
    err = jnp.max(jnp.sum(jnp.abs(col - b), axis=-1))
    return u, v, it + inner, err

  cond = lambda c: (c[2] < max_iterations) & (c[3] >= threshold)
  u, v, it, err = jax.lax.while_loop(cond, inner_block, (jnp.zeros_like(a), jnp.zeros_like(b),
                                                         jnp.int32(0), jnp.float32(jnp.inf)))
  return jnp.exp(u[:, :, None] + v[:, None, :] - k), it, cost


def _timer(args, results, log):
  def timed(name, call, finish, budget=None):
    """Warm-up call (compiles for JAX), then repeated calls; returns the last output."""
    import time  # pylint: disable=g-import-not-at-top
    t = time.perf_counter()
    out = finish(call())
    warm = time.perf_counter() - t
    reps = C.repeats_for(warm, budget or args.time_budget, args.min_reps, args.max_reps)
    holder = {}

    def one():
      holder["o"] = finish(call())

    with C.Contention() as cont:
      times = C.time_calls(one, reps)
    results[name] = {"warmup_s": warm, **C.stats(times), **cont.summary()}
    log(f"  {name:10s} {results[name]['median_s'] * 1e3:9.2f} ms/batch  (n={reps})", flush=True)
    return holder.get("o", out)
  return timed


def jax_methods(x, y, args, log=print):
  """ott (adaptive and fixed) and plain jax.numpy: (results, plans)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import ot as ot_lib  # pylint: disable=g-import-not-at-top
  B, n, m = x.shape[0], x.shape[1], y.shape[1]
  a = np.full((B, n), 1.0 / n, np.float32)
  b = np.full((B, m), 1.0 / m, np.float32)
  eps, thr, iters = args.epsilon, args.threshold, args.max_iterations
  results, plans = {}, {}
  timed = _timer(args, results, log)
  cfg = ot_lib.OTConfig(epsilon=eps, threshold=thr, max_iterations=iters)
  ott_fn = jax.jit(lambda x, a, y, b: ot_lib.sinkhorn_batch(x, a, y, b, cfg))
  xj, aj, yj, bj = map(jnp.asarray, (x, a, y, b))
  res = timed("ott", lambda: ott_fn(xj, aj, yj, bj), jax.block_until_ready)
  plans["ott"] = np.asarray(res.plan)
  ott_iters = np.asarray(res.n_iters)
  results["ott"].update(iterations_mean=float(ott_iters.mean()), iterations_max=int(ott_iters.max()),
                        converged=float(np.asarray(res.converged).mean()))
  # the same problems in one batched loop (optical_jax.ot.batched_sinkhorn), log domain and
  # scalings (kernel mode: no exp per iteration; fine while cost / epsilon < ~80)
  for name, lse in (("batched", True), ("batched-kernel", False)):
    cfg_b = ot_lib.OTConfig(epsilon=eps, threshold=thr, max_iterations=iters, solver="batched",
                            lse_mode=lse)
    fn_b = jax.jit(lambda x, a, y, b, c=cfg_b: ot_lib.sinkhorn_batch(x, a, y, b, c))
    res_b = timed(name, lambda f=fn_b: f(xj, aj, yj, bj), jax.block_until_ready)
    plans[name] = np.asarray(res_b.plan)
    its = np.asarray(res_b.n_iters)
    results[name].update(iterations_mean=float(its.mean()), iterations_max=int(its.max()),
                         converged=float(np.asarray(res_b.converged).mean()))
  # ott with a fixed iteration count (a scan, no convergence test)
  fixed_iters = int(max(10, -(-int(ott_iters.max()) // 10) * 10))
  cfg_f = ot_lib.OTConfig(epsilon=eps, threshold=thr, max_iterations=fixed_iters,
                          fixed_iterations=True)
  ott_f = jax.jit(lambda x, a, y, b: ot_lib.sinkhorn_batch(x, a, y, b, cfg_f))
  plans["ott-fixed"] = np.asarray(timed("ott-fixed", lambda: ott_f(xj, aj, yj, bj),
                                        jax.block_until_ready).plan)
  results["ott-fixed"]["iterations"] = fixed_iters
  # plain jax.numpy
  plain = jax.jit(lambda x, a, y, b: jax_plain(x, a, y, b, eps, thr, iters))
  p_plan, p_it, _ = timed("jax-plain", lambda: plain(xj, aj, yj, bj), jax.block_until_ready)
  plans["jax-plain"] = np.asarray(p_plan)
  results["jax-plain"]["iterations"] = int(p_it)
  return results, plans


def baseline_methods(x, y, args, log=print):
  """POT per-pair loop (float64) and batched PyTorch (float32): (results, plans). No JAX here."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import ot as pot  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import _torch_ot  # pylint: disable=g-import-not-at-top
  B, n, m = x.shape[0], x.shape[1], y.shape[1]
  eps, thr, iters = args.epsilon, args.threshold, args.max_iterations
  results, plans = {}, {}
  timed = _timer(args, results, log)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  a64, b64 = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
  pot_iters = []

  def pot_loop():
    out = np.empty((B, n, m))
    pot_iters.clear()
    for i in range(B):
      xi = x64[i] / np.linalg.norm(x64[i], axis=-1, keepdims=True)
      yi = y64[i] / np.linalg.norm(y64[i], axis=-1, keepdims=True)
      M = 1.0 - xi @ yi.T
      out[i], lg = pot.sinkhorn(a64, b64, M, eps, method="sinkhorn_log", stopThr=thr,
                                numItermax=iters, log=True, warn=False)
      pot_iters.append(lg["niter"] + 1)
    return out

  plans["pot"] = timed("pot", pot_loop, lambda r: r, budget=args.time_budget * 1.5)
  results["pot"].update(iterations_mean=float(np.mean(pot_iters)), iterations_max=int(max(pot_iters)))
  a = np.full((B, n), 1.0 / n, np.float32)
  b = np.full((B, m), 1.0 / m, np.float32)
  xt, yt, at, bt = (torch.from_numpy(np.array(v)) for v in (x, y, a, b))
  t_it = {}

  def torch_call():
    cost = _torch_ot.cosine_cost(xt, yt)
    plan, it, _ = _torch_ot.sinkhorn_log(cost, at, bt, eps, iters, threshold=thr)
    t_it["it"] = it
    return plan

  with torch.no_grad():
    plans["torch"] = timed("torch", torch_call, lambda r: r.numpy())
  results["torch"]["iterations"] = t_it["it"]
  results["torch"]["threads"] = torch.get_num_threads()
  # A tightly converged float64 reference (untimed).
  plans["reference"] = np.stack([
      pot.sinkhorn(a64, b64, 1.0 - (x64[i] / np.linalg.norm(x64[i], axis=-1, keepdims=True))
                   @ (y64[i] / np.linalg.norm(y64[i], axis=-1, keepdims=True)).T,
                   eps, method="sinkhorn_log", stopThr=1e-10, numItermax=20000, warn=False)
      for i in range(B)])
  return results, plans


def compare(x, y, results, plans):
  import numpy as np  # pylint: disable=g-import-not-at-top
  B, n, m = x.shape[0], x.shape[1], y.shape[1]
  b64 = np.full(m, 1.0 / m)
  ref = plans.pop("reference")
  xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
  yn = y.astype(np.float64) / np.linalg.norm(y.astype(np.float64), axis=-1, keepdims=True)
  cost = 1.0 - np.einsum("bnd,bmd->bnm", xn, yn)
  ref_loss = np.sum(ref * cost, axis=(1, 2))
  for name, plan in plans.items():
    plan = np.asarray(plan, np.float64)
    loss = np.sum(plan * cost, axis=(1, 2))
    results[name].update(
        plan_max_abs_diff_vs_ref=float(np.max(np.abs(plan - ref))),
        plan_rel_diff_vs_ref=float(np.max(np.abs(plan - ref)) / np.max(np.abs(ref))),
        col_marginal_l1_max=float(np.max(np.sum(np.abs(plan.sum(1) - b64), axis=-1))),
        loss_max_abs_diff_vs_ref=float(np.max(np.abs(loss - ref_loss))))
  same = {f"{p}_vs_{q}": float(np.max(np.abs(np.asarray(plans[p], np.float64) - plans[q])))
          for p, q in (("ott", "batched"), ("ott", "batched-kernel"), ("ott", "torch"),
                       ("ott", "jax-plain"), ("jax-plain", "torch"))}
  pot_t = results["pot"]["median_s"]
  for name, r in results.items():
    r["speedup_vs_pot"] = pot_t / r["median_s"]
    it = r.get("iterations_max", r.get("iterations"))
    if it:
      r["ms_per_iteration"] = r["median_s"] * 1e3 / it
  for r in results.values():
    if r.get("ms_per_iteration"):
      r["per_iteration_speedup_vs_pot"] = results["pot"]["ms_per_iteration"] / r["ms_per_iteration"]
  order = ["ott", "batched", "batched-kernel", "ott-fixed", "jax-plain", "pot", "torch"]
  return {"n": n, "m": m, "pairs": B, "mean_loss": float(ref_loss.mean()),
          "plan_max_abs_diff_between_methods": same, "plan_scale_1_over_nm": 1.0 / (n * m),
          "cost_range": [float(cost.min()), float(cost.max())],
          "methods": {k: results[k] for k in order if k in results}}


def main():
  p = C.parser("sinkhorn", __doc__)
  p.add_argument("--pairs", type=int, default=64)
  p.add_argument("--sizes", default="32x32,64x180", help="comma list of NxM")
  p.add_argument("--embeddings", choices=("minilm", "random"), default="minilm")
  p.add_argument("--epsilon", type=float, default=0.05)
  p.add_argument("--threshold", type=float, default=1e-3)
  p.add_argument("--max-iterations", type=int, default=1000)
  p.add_argument("--time-budget", type=float, default=None, help="timed seconds per method")
  p.add_argument("--min-reps", type=int, default=3)
  p.add_argument("--max-reps", type=int, default=50)
  p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: default)")
  args = p.parse_args()
  if args.quick:
    args.pairs = min(args.pairs, 16)
  args.time_budget = args.time_budget or (0.5 if args.quick else 3.0)
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

  if args.worker == "baselines":  # child process: POT and PyTorch, no JAX
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    payload = {}
    with np.load(args.worker_out + ".npz") as z:
      for n, m in sizes:
        print(f"{args.pairs} pairs of {n}x{m} (POT, PyTorch):", flush=True)
        res, plans = baseline_methods(z[f"x{n}x{m}"], z[f"y{n}x{m}"], args)
        payload[f"{n}x{m}"] = res
        np.savez(args.worker_out + f".{n}x{m}.npz", **plans)
    C.worker_done(args, payload)
    return

  out = C.header(args, "sinkhorn")
  out["load"] = C.wait_for_quiet(args)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  out["machine"] = C.machine_info()
  out["settings"] = {k: getattr(args, k) for k in ("pairs", "embeddings", "epsilon", "threshold",
                                                   "max_iterations", "time_budget")}
  print(f"machine: {out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores; "
        f"load {out['load']['at_start']}")
  problems = {}
  for n, m in sizes:
    if args.embeddings == "minilm":
      problems[(n, m)] = minilm_embeddings(args.pairs, n, m, passages=(m > 2 * n))
    else:
      problems[(n, m)] = random_embeddings(args.pairs, n, m)
  # POT and PyTorch run in a fresh process (see _common.run_worker), fed the same vectors.
  import tempfile  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="bench-sinkhorn-")
  base = os.path.join(tmp, "w.json")
  np.savez(base + ".npz", **{f"{k}{n}x{m}": v for (n, m), (x, y) in problems.items()
                             for k, v in (("x", x), ("y", y))})
  sys.argv += ["--worker-out", base]  # the child finds its inputs next to its output
  import subprocess, json, shutil  # pylint: disable=g-import-not-at-top,multiple-imports
  subprocess.run([sys.executable, os.path.abspath(__file__)] + sys.argv[1:] +
                 ["--no-wait", "--worker", "baselines"], check=True)
  with open(base, encoding="utf-8") as f:
    baseline = json.load(f)
  out["sizes"] = []
  rows = []
  for n, m in sizes:
    x, y = problems[(n, m)]
    print(f"{args.pairs} pairs of {n}x{m} (JAX):", flush=True)
    results, plans = jax_methods(x, y, args)
    results.update(baseline[f"{n}x{m}"])
    with np.load(base + f".{n}x{m}.npz") as z:
      plans.update({k: z[k] for k in z.files})
    r = compare(x, y, results, plans)
    out["sizes"].append(r)
    for name, v in r["methods"].items():
      rows.append({"size": f"{n}x{m}", "method": name, "ms_per_batch": v["median_s"] * 1e3,
                   "reps": v["n"], "iterations": v.get("iterations_max", v.get("iterations")),
                   "ms_per_iter": v.get("ms_per_iteration"), "speedup_vs_pot": v["speedup_vs_pot"],
                   "per_iter_speedup": v.get("per_iteration_speedup_vs_pot"),
                   "plan_diff_vs_ref": v.get("plan_max_abs_diff_vs_ref"),
                   "marginal_err": v.get("col_marginal_l1_max"),
                   "loss_diff_vs_ref": v.get("loss_max_abs_diff_vs_ref"),
                   "load1": v["load1"], "others_cores": v["others_cores"]})
  shutil.rmtree(tmp, ignore_errors=True)
  out["rows"] = rows
  out["load"]["at_end"] = C.load_avg()
  print()
  print(C.table(rows, ["size", "method", "ms_per_batch", "reps", "iterations", "ms_per_iter",
                       "speedup_vs_pot", "per_iter_speedup", "plan_diff_vs_ref", "marginal_err",
                       "loss_diff_vs_ref", "load1",
                       "others_cores"]))
  C.write(args.out or C.default_out("sinkhorn", args.quick), out)


if __name__ == "__main__":
  main()
