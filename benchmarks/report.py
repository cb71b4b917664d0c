"""Renders the benchmark results (benchmarks/results/*.json) as the Markdown tables of docs/performance.md.

    python benchmarks/report.py                 # print Markdown to stdout
    python benchmarks/report.py --results DIR   # another results directory

Only reads JSON; measures nothing. Sections whose JSON is missing are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top


def _load(d, name):
  p = os.path.join(d, f"{name}.json")
  if not os.path.exists(p):
    return None
  with open(p, encoding="utf-8") as f:
    return json.load(f)


def _head(r):
  m = r["machine"]
  load = r["load"]
  v = m["versions"]
  return (f"`{r['command']}` — {r['started']}; {m['cpu_model']}, {m['cpu_cores']} cores; "
          f"jax {v.get('jax')}, torch {v.get('torch')}; load average at start "
          f"{load['at_start']} (1/5/15 min), at end {load.get('at_end')}; waited {load['waited_s']} s")


def _pct(x):
  return None if x is None else f"{100 * x:.0f}%"


def step_section(r, title="### Distillation step (`benchmarks/step.py`)"):
  out = [title, "", _head(r), ""]
  peak = r["peak"]
  out.append(f"Peak (best jitted float32 square matmul in the same run): "
             f"{peak['used_flops_per_s'] / 1e9:.0f} GFLOP/s; bfloat16 matmul "
             f"{peak['bfloat16']['flops_per_s'] / 1e9:.0f} GFLOP/s. Query length "
             f"{r['settings']['length']} on both sides, Sinkhorn fixed at "
             f"{r['settings']['sinkhorn_iters']} iterations (epsilon {r['settings']['epsilon']}).")
  out.append("")
  rows = []
  for x in r["rows"]:
    rows.append(dict(x, mfu_pct=_pct(x["mfu"]), median=x["median_s"],
                     ratio=x.get("jax_over_torch"), ratio32=x.get("jax_over_torch_f32"),
                     gflop=x["model_flops"] / 1e9))
  for x in rows:
    x.setdefault("teacher", "run")   # results from before the teacher-cache rows
  out.append(C.table(rows, ["model", "batch", "dtype", "framework", "teacher", "median", "n", "pairs_per_s",
                            "tokens_per_s", "gflop", "mfu_pct", "ratio", "ratio32", "compile_s",
                            "xla_over_analytic", "load1", "others_cores"],
                     ["model", "batch", "dtype", "framework", "teacher", "s/step", "steps timed", "pairs/s",
                      "tokens/s", "model GFLOP/step", "MFU", "JAX/torch", "JAX/torch f32",
                      "compile s", "XLA/analytic FLOPs", "load1", "other procs (cores)"],
                     markdown=True))
  prof = [x for x in r["rows"] if x.get("profile")]
  if prof:
    out += ["", "Profile of one JAX step (`jax.profiler` trace, exclusive op time by class, "
            "benchmarks/_profile.py):", ""]
    cats = ["matmul", "elementwise", "copy", "broadcast", "all-reduce", "reduce-window",
            "sinkhorn loop"]
    prow = []
    for x in prof:
      share = x["profile"]["share"]
      prow.append({"config": f"{x['model']} b{x['batch']} {x['dtype']}",
                   **{c: _pct(share.get(c, 0.0)) for c in cats}})
    out.append(C.table(prow, ["config"] + cats, markdown=True))
  return out


EMBEDDING_RUNS = (("step_e5_all_params", "every param (dense AdamW)"),
                  ("step_e5_sparse_embeddings", "row-sparse word embeddings (`optim.sparse_embeddings`)"),
                  ("step_e5_frozen_embeddings", "frozen word embeddings (`optim.freeze`)"))


def embeddings_section(results_dir):
  """One row per word-embedding update mode (`benchmarks/step.py` run once per mode)."""
  rows, heads = [], []
  for name, label in EMBEDDING_RUNS:
    r = _load(results_dir, name)
    if r is None:
      continue
    x = r["rows"][0]
    rows.append(dict(mode=label, model=x["model"], batch=x["batch"], median=x["median_s"],
                     low=x["min_s"], high=x["max_s"], n=x["n"], pairs=x["pairs_per_s"],
                     load1=x["load1"], others=x["others_cores"]))
    heads.append(f"- `{r['command']}` ({r['started']})")
  if not rows:
    return []
  out = ["### Word-embedding updates: dense, row-sparse, frozen (`benchmarks/step.py`)", "",
         "One CPU device, cached teacher tokens, the other columns as above; one run each:", ""]
  out += heads + [""]
  out.append(C.table(rows, ["mode", "model", "batch", "median", "low", "high", "n", "pairs",
                            "load1", "others"],
                     ["word embeddings", "model", "batch", "s/step (median)", "fastest",
                      "slowest", "steps timed", "pairs/s", "load1", "other procs (cores)"],
                     markdown=True))
  return out


def sinkhorn_section(r):
  out = ["### Sinkhorn alone (`benchmarks/sinkhorn.py`)", "", _head(r), ""]
  s = r["settings"]
  out.append(f"{s['pairs']} pairs, {s['embeddings']} token embeddings (d = 384), cosine cost, "
             f"epsilon {s['epsilon']}, tolerance {s['threshold']}, at most "
             f"{s['max_iterations']} iterations. Plan differences are max |T - T_ref| against a "
             "float64 POT solve converged to 1e-10 (plan entries are ~1/(n m)).")
  out.append("")
  out.append(C.table(r["rows"], ["size", "method", "ms_per_batch", "reps", "iterations",
                                 "ms_per_iter", "speedup_vs_pot", "per_iter_speedup",
                                 "plan_diff_vs_ref", "marginal_err", "loss_diff_vs_ref", "load1",
                                 "others_cores"],
                     ["pairs n x m", "method", "ms/batch", "reps", "iterations (max)",
                      "ms/iteration", "speedup vs POT", "per-iteration speedup",
                      "max plan diff", "max marginal L1 err", "max loss diff", "load1",
                      "other procs"], markdown=True))
  return out


def compile_section(r):
  lp = r["loop"]
  out = ["### Compilations and compile time (`benchmarks/compile.py`)", "", _head(r), ""]
  out.append(f"{lp['steps']} steps, global batch {lp['global_batch']}, tiny encoder "
             f"(hidden {lp['encoder']['hidden_size']}, {lp['encoder']['num_layers']} layers), "
             f"bucket occupancy {lp['data']['bucket_pairs']} pairs, "
             f"{lp['data']['batches_per_epoch']} batches/epoch. Jitted step cache size "
             f"**{lp['cache_size']}**; backend compilations during the loop "
             f"**{lp['compile_events_total']}** ({lp['compiled_functions']}); after warm-up "
             f"(all buckets seen by step {lp['warmup_ends_at_step']}): "
             f"**{lp['compile_events_after_warmup']}** in {lp['steps_after_warmup']} steps. "
             f"{lp['steps_per_s']:.1f} steps/s overall.")
  out.append("")
  out.append(C.table(lp["buckets"], ["src_len", "tgt_len", "steps", "compilations", "compile_s",
                                     "first_step_s", "median_step_s"],
                     ["student len", "teacher len", "steps", "compilations",
                      "backend compile s", "first step s", "median step s"], markdown=True))
  if r.get("minilm"):
    out += ["", "Compile time of the step, MiniLM-L6-sized student and teacher, batch 32:", ""]
    out.append(C.table(r["minilm"], ["length", "persistent_cache", "lower_s", "compile_s",
                                     "total_s", "load1"],
                       ["length", "persistent cache", "lower s", "compile s", "total s", "load1"],
                       markdown=True))
  return out


def eval_section(r):
  out = ["### Evaluation (`benchmarks/eval.py`)", "", _head(r), ""]
  if r.get("encode"):
    e = r["encode"]
    out.append(f"Encoding {e['passages']} AfriQA passages ({e['tokens']} tokens, mean "
               f"{e['mean_length']:.0f}, {_pct(e['truncated_fraction'])} truncated at "
               f"{e['max_len']}), all-MiniLM-L6-v2, batch {e['batch_size']}"
               + (f" (JAX: at most {e['max_tokens']} padded tokens per batch)"
                  if e.get("max_tokens") else "") + ", JAX buckets "
               f"{e['buckets']}. Embeddings agree: max abs diff "
               f"{e['agreement']['max_abs_diff']:.1e}, min cosine "
               f"{e['agreement']['min_cosine']:.6f}.")
    out.append("")
    out.append(C.table(e["rows"], ["framework", "seconds", "passages_per_s", "tokens_per_s",
                                   "padded_tokens", "jax_over_torch", "compile_s", "load1",
                                   "others_cores"],
                       ["framework", "s", "passages/s", "tokens/s", "padded tokens", "JAX/torch",
                        "compile s (excluded)", "load1", "other procs"], markdown=True))
    out.append("")
  out.append(C.table(r["search"], ["corpus", "docs", "method", "median_s", "n", "queries_per_s",
                                   "gflops_per_s", "jax_over_numpy", "first_call_s",
                                   "peak_extra_mb", "topk_overlap_with_numpy", "load1",
                                   "others_cores"],
                     ["corpus", "docs", "method", "s (1,000 queries)", "runs", "queries/s",
                      "GFLOP/s", "JAX/numpy", "first call s", "peak extra RSS MB",
                      "top-100 overlap", "load1", "other procs"], markdown=True))
  m = r["maxrss_mb"]
  out.append("")
  out.append(f"Peak RSS (ru_maxrss): JAX process {m['jax_process']:.0f} MB, baseline process "
             f"{m['baseline_process']:.0f} MB.")
  return out


def scaling_section(r):
  out = ["### Fake-device scaling (`benchmarks/scaling.py`)", "", _head(r), ""]
  s = r["settings"]
  out.append(f"Encoder hidden {s['encoder']['hidden_size']}, {s['encoder']['num_layers']} layers, "
             f"dropout 0; global batch {s['batch']}, {s['steps']} steps; times informative only.")
  out.append("")
  out.append(C.table(r["rows"], ["devices", "per_device_batch", "cache_size", "compile_events",
                                 "compile_s", "median_step_s", "final_loss", "max_loss_diff",
                                 "max_param_diff", "load1"],
                     ["devices", "pairs/device", "jit cache", "compilations", "compile s",
                      "median step s", "final loss", "max loss diff vs 1", "max param diff vs 1",
                      "load1"], markdown=True))
  return out


ALLOCATOR_RUNS = ("allocator", "allocator_glibc_tunables", "allocator_teacher_colbert_e5")


def allocator_section(results_dir):
  """One table per `benchmarks/allocator.py` run: steps/s, CPU split, faults, weights."""
  out = []
  for name in ALLOCATOR_RUNS:
    r = _load(results_dir, name)
    if r is None:
      continue
    if not out:
      out = ["### Host allocator (`benchmarks/allocator.py`)", ""]
    s = r["settings"]
    out += [_head(r), "", f"`train.py --config {s['config']}`, {s['steps']} steps a run, "
            f"{s['repeats']} round(s), variants interleaved; `{os.path.basename(name)}.json`.", ""]
    out.append(C.table(r["rows"], ["variant", "round", "steps_per_s", "steps_timed", "user_s",
                                   "sys_s", "sys_share", "minor_faults", "peak_rss_gib",
                                   "same_weights_as_glibc", "failed"],
                       ["allocator", "round", "steps/s", "steps timed", "user s", "sys s",
                        "sys share", "minor faults", "peak RSS GiB", "weights = glibc's",
                        "failed"],
                       markdown=True))
    out.append("")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--results", default=C.RESULTS)
  args = p.parse_args()
  lines = []
  cache_title = ("### Distillation step with and without the teacher-token cache "
                 "(`benchmarks/step.py --out benchmarks/results/step-cache.json`)")
  for name, fn in (("step", step_section),
                   ("step-cache", lambda r: step_section(r, cache_title)),
                   ("sinkhorn", sinkhorn_section),
                   ("compile", compile_section), ("eval", eval_section),
                   ("scaling", scaling_section)):
    r = _load(args.results, name)
    if r is not None:
      lines += fn(r) + [""]
  section = embeddings_section(args.results)
  if section:
    lines += section + [""]
  lines += allocator_section(args.results)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
