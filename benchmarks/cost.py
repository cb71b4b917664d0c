"""What each study's full scale costs: FLOPs per step of every cell, measured CPU speed, and
estimated hours and chip-hours on TPU and GPU slices (issue 25's cost sheet).

    python benchmarks/cost.py            # writes benchmarks/results/cost.json and docs/cost.md
    python benchmarks/cost.py --render   # docs/cost.md again from the committed cost.json

Inputs, all committed: the study configs' full scales (`configs/studies/*.py`: every
trained cell's student, batch, steps, loss, Sinkhorn iterations and whether the teacher's
tokens are cached) and the measured step of `benchmarks/results/step.json` (this
machine's time per step and the FLOPs it did, per encoder size).

FLOPs per step are `benchmarks/step.py`'s analytic count (`step_flops`: student forward
and backward, teacher forward unless cached, the cost matrix, Sinkhorn at its iteration
cap; XLA's cost analysis agrees within a few percent in step.json) at a padded length of
`--length` tokens on both sides (AfriQA questions and their translations mostly fit the
32-token bucket), minus the OT parts for losses without OT. Encoders map to step.py's
sizes by their checkpoint: MiniLM-L6, e5-small, and BERT-base for XLM-R base, mBERT and
LaBSE (12 layers of 768; the vocabulary does not change the FLOPs); the ColBERT teachers'
exports by their backbone (their 128-d heads are left out, under 1% of a step). Evaluation (passage
encoding, search) is not counted.

Estimates, not measurements: hours on a slice = total FLOPs / (chips x vendor peak dense
bfloat16 FLOP/s per chip x `--mfu`). The CPU row uses the FLOP rate measured here instead.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

STUDIES = ("data_amount", "language_ratio", "code_switch", "adversarial", "backbones",
           "ot_variants")
# Vendor peak dense bfloat16 FLOP/s per chip (public spec sheets), and chips per slice.
DEVICES = (
    ("TPU v4-8 (4 chips)", 4, 275e12),
    ("TPU v5e-8 (8 chips)", 8, 197e12),
    ("8x A100 (SXM)", 8, 312e12),
    ("8x H100 (SXM)", 8, 989e12),
)
OT_TERMS = ("ot", "divergence", "barycentric", "hard")
RESULTS = os.path.join(HERE, "results", "cost.json")
PAGE = os.path.join(ROOT, "docs", "cost.md")


def encoder_size(spec) -> str:
  """step.py's encoder size for a model spec, by its checkpoint."""
  path = str(spec.path).lower() + " " + str(spec.tokenizer).lower()
  if "minilm" in path:
    return "minilm-l6"
  if "e5" in path:
    return "e5-small"
  if any(k in path for k in ("xlm-roberta-base", "multilingual-cased", "labse")):
    return "bert-base"
  if "teacher-colbert" in path:   # configs/teacher_colbert.py's MiniLM export (-e5: above)
    return "minilm-l6"
  raise ValueError(f"no encoder size for the model at {spec.path!r}")


def cell_step(train, length: int) -> dict:
  from step import ARCH, step_flops  # pylint: disable=g-import-not-at-top
  size = encoder_size(train.student)
  cached = bool(train.data.teacher_cache)
  flops = step_flops(ARCH[size], int(train.data.global_batch), length, length,
                     int(train.loss.ot.max_iterations), cached)
  total = flops["total"]
  if str(train.loss.loss).split("+")[0] not in OT_TERMS:
    total -= flops["ot_cost"] + flops["sinkhorn"]
  return {"size": size, "flops": total, "steps": int(train.train.steps)}


def measure(length: int) -> dict:
  from optical_jax import study  # pylint: disable=g-import-not-at-top
  with open(os.path.join(HERE, "results", "step.json"), encoding="utf-8") as f:
    step = json.load(f)
  cpu = {}
  for r in step["rows"]:
    if (r["framework"], r["dtype"], r["batch"]) == ("jax", "float32", 32) and r.get(
        "teacher", "run") == "run" and r["model"] not in cpu:
      cpu[r["model"]] = {"median_s": r["median_s"], "model_flops": r["model_flops"],
                         "flops_per_s": r["model_flops"] / r["median_s"], "mfu": r["mfu"]}
  studies = []
  for name in STUDIES:
    config = importlib.import_module(f"configs.studies.{name}").get_config("full")
    cells = [c for c in study.grid(config) if not c.reference]
    steps = [cell_step(config.train(dict(c.values)), length) for c in cells]
    cpu_hours = sum(s["flops"] * s["steps"] / cpu[s["size"]]["flops_per_s"] for s in steps) / 3600
    studies.append({"study": name, "cells": len(cells),
                    "steps": sum(s["steps"] for s in steps),
                    "flops": sum(s["flops"] * s["steps"] for s in steps),
                    "sizes": sorted({s["size"] for s in steps}),
                    "flops_per_step": sorted({s["flops"] for s in steps}),
                    "cpu_hours_here": cpu_hours})
  return {"length": length, "cpu_step": cpu, "studies": studies,
          "devices": [{"name": n, "chips": k, "peak_per_chip": p} for n, k, p in DEVICES]}


def render(data: dict, mfu: float) -> str:
  """docs/cost.md from cost.json."""
  fmt = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"  # pylint: disable=unnecessary-lambda-assignment
  lines = ["# Cost sheet: what each study's full scale costs", "",
           "Generated by `python benchmarks/cost.py` from `benchmarks/results/cost.json` (the study "
           "configs' full scales and the CPU step measured in `benchmarks/results/step.json`); "
           "see the script's docstring for the method. Training only; evaluation is not counted.",
           "", f"FLOPs per step are analytic, at a padded length of {data['length']} tokens per side. "
           f"**The accelerator columns are compute-bound estimates, lower bounds**: minutes at an "
           f"assumed {mfu:.0%} of the vendor's peak dense bfloat16 FLOP/s. The shipped steps are "
           "small (batch 32 of small encoders: a few pairs per chip), so per-step latency "
           "(dispatch, collectives, data) will dominate on a slice; multiply the steps column by "
           "a measured step time to size a run. The CPU column is this 2-core machine's measured "
           "rate (float32, one process).", "",
           "Measured here (batch 32, the teacher run inside the step):", "",
           "| encoder | step (s) | GFLOP per step | GFLOP/s | MFU of the measured matmul peak |",
           "|---|---:|---:|---:|---:|"]
  for size, r in data["cpu_step"].items():
    lines.append(f"| {size} | {r['median_s']:.2f} | {r['model_flops'] / 1e9:,.0f} | "
                 f"{r['flops_per_s'] / 1e9:,.0f} | {r['mfu']:.0%} |")
  head = ["study", "cells", "steps", "PFLOP", "encoders", "CPU here (h)"]
  head += [f"{d['name']} (min / chip-h)" for d in data["devices"]]
  lines += ["", "Full scales:", "", "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * 3 + ["---"] + ["---:"] * (len(head) - 5)) + "|"]
  for s in data["studies"]:
    row = [s["study"], f"{s['cells']:,}", f"{s['steps']:,}", fmt(s["flops"] / 1e15),
           ", ".join(s["sizes"]), fmt(s["cpu_hours_here"])]
    for d in data["devices"]:
      hours = s["flops"] / (d["chips"] * d["peak_per_chip"] * mfu) / 3600
      row.append(f"{fmt(hours * 60)} / {fmt(hours * d['chips'])}")
    lines.append("| " + " | ".join(row) + " |")
  peaks = "; ".join(f"{d['name']}: {d['peak_per_chip'] / 1e12:,.0f} TFLOP/s per chip"
                    for d in data["devices"])
  lines += ["", f"Peaks used (dense bfloat16, vendor figures): {peaks}.", ""]
  return "\n".join(lines)


def main():
  p = C.parser("cost", __doc__)
  p.add_argument("--length", type=int, default=32)
  p.add_argument("--mfu", type=float, default=0.4, help="assumed share of peak on accelerators")
  p.add_argument("--render", action="store_true", help="only re-render docs/cost.md")
  args = p.parse_args()
  if not args.render:
    data = measure(args.length)
    data.update(C.header(args, "cost"), mfu=args.mfu)
    C.write(args.out or RESULTS, data)
  with open(args.out or RESULTS, encoding="utf-8") as f:
    data = json.load(f)
  from optical_jax.fileio import write_text  # pylint: disable=g-import-not-at-top
  write_text(PAGE, render(data, data["mfu"]))
  print(f"wrote {os.path.relpath(PAGE)}")


if __name__ == "__main__":
  main()
