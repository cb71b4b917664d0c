"""The host memory allocator under real training runs: glibc malloc against jemalloc.

    python benchmarks/allocator.py           # the shipped MiniLM student, 60 steps, 2 rounds
    python benchmarks/allocator.py --config configs/teacher_colbert.py:backbone=e5 --steps 12
    python benchmarks/allocator.py --quick   # 20 steps, 1 round

Why: on the 2-core machine the study cells' training processes spent about a quarter of
their CPU time in the kernel (the ColBERT teacher on e5, two thirds late in its run),
taking ~10^5 minor page faults a second: XLA's CPU buffers are allocated and freed every
step, and glibc returns large blocks to the kernel (mmap / munmap), so every step faults
its pages in and zeroes them again.

Each variant runs `train.py --config CONFIG --config.train.steps=STEPS` in a fresh process
and a fresh workdir (no checkpoint before the end; the token and teacher caches are
shared, filled by a first run that is not timed), `--repeats` rounds with the variants
interleaved. Reported per run: training steps/s over the log intervals after the first
(compilation and cache loading left out), the child's user and system CPU seconds and
minor page faults and peak RSS (`wait4`), and whether the exported model's weights
(`model.safetensors`) are bit-identical to the first glibc run's: the allocator must
change nothing but time. A run that fails (killed for memory, say) is recorded as such.

Variants:
  glibc            the default;
  glibc-retain     `GLIBC_TUNABLES` with glibc's largest mmap threshold (32 MiB) and a
                   trim threshold of 64 GiB: blocks up to 32 MiB are reused, not returned;
  jemalloc         `LD_PRELOAD` of libjemalloc, its defaults (freed pages go back to the
                   kernel after ~10 s);
  jemalloc-retain  the same with `MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1`: freed
                   pages are kept for reuse and never returned (RSS stays at its peak).
jemalloc is Debian's `libjemalloc2` (`apt-get install libjemalloc2`); without it those
variants are recorded as not run.
"""

from __future__ import annotations

import ctypes.util
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

RETAIN = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# glibc keeping freed memory: blocks up to its largest mmap threshold (32 MiB on 64-bit)
# come from its heaps, which are not trimmed below 64 GiB of free top.
GLIBC_RETAIN = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736"
VARIANTS = ("glibc", "glibc-retain", "jemalloc", "jemalloc-retain")


def find_jemalloc() -> str:
  """The path of libjemalloc's shared library, '' when it is not installed."""
  # This machine's architecture only: a multiarch host may hold others' builds too.
  for pattern in (f"/usr/lib/{platform.machine()}-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2",
                  "/usr/local/lib/libjemalloc.so*"):
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  name = ctypes.util.find_library("jemalloc")
  return name or ""


def variant_env(variant: str, jemalloc: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")}
  if variant == "glibc-retain":
    env["GLIBC_TUNABLES"] = GLIBC_RETAIN
  if variant.startswith("jemalloc"):
    env["LD_PRELOAD"] = jemalloc
  if variant == "jemalloc-retain":
    env["MALLOC_CONF"] = RETAIN
  return env


def steps_per_s(metrics_jsonl: str) -> tuple:
  """(steps/s over the log intervals after the first, steps timed) from metrics.jsonl."""
  rows = []
  with open(metrics_jsonl, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if "steps_per_s" in r and r.get("steps_per_s"):
        rows.append((int(r["step"]), float(r["steps_per_s"])))
  rows.sort()
  timed = [(b[0] - a[0], b[1]) for a, b in zip(rows, rows[1:])]
  if not timed:
    return None, 0
  steps = sum(n for n, _ in timed)
  return steps / sum(n / rate for n, rate in timed), steps


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def run_once(args, variant: str, jemalloc: str, keep: str) -> dict:
  """One `train.py` run under `variant` in a new workdir under `keep`."""
  workdir = tempfile.mkdtemp(prefix=f"{variant}.", dir=keep)
  log_every = max(1, min(10, args.steps // 6))
  cmd = [sys.executable, os.path.join(C.REPO, "train.py"), "--config", args.config,
         "--workdir", workdir, f"--config.train.steps={args.steps}",
         f"--config.train.log_every={log_every}",
         f"--config.train.checkpoint_every={args.steps}"]
  t0 = time.perf_counter()
  with open(os.path.join(workdir, "train.log"), "w", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, env=variant_env(variant, jemalloc), cwd=C.REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
      _, status, usage = os.wait4(proc.pid, 0)   # this child's own CPU, faults and peak RSS
    except BaseException:   # Ctrl-C: no training left running in a removed workdir
      proc.kill()
      proc.wait()
      raise
    proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - t0
  failed = None
  if proc.returncode != 0:   # recorded, not raised: an allocator can cost too much memory
    with open(os.path.join(workdir, "train.log"), encoding="utf-8") as f:
      tail = f.read()[-2000:]
    failed = (f"exit {proc.returncode}" + (" (SIGKILL: out of memory?)"
                                           if proc.returncode == -9 else ""))
    print(f"allocator: {variant}: train.py failed, {failed}; its log ends:\n{tail}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  rate, timed = steps_per_s(metrics) if os.path.exists(metrics) else (None, 0)
  weights = sorted(glob.glob(os.path.join(workdir, "*", "model.safetensors")))
  row = {"variant": variant, "steps_per_s": rate, "steps_timed": timed,
         "wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
         "sys_share": usage.ru_stime / max(usage.ru_utime + usage.ru_stime, 1e-9),
         "minor_faults": usage.ru_minflt, "peak_rss_gib": usage.ru_maxrss / 2**20,
         "weights_sha256": sha256(weights[0]) if weights and not failed else None,
         "failed": failed,
         "command": " ".join(os.path.relpath(c, C.REPO) if c.startswith(C.REPO) else c
                             for c in cmd[1:])}
  shutil.rmtree(workdir, ignore_errors=True)
  return row


def main():
  p = C.parser("allocator", __doc__)
  p.add_argument("--config", default="configs/swa_minilm.py:swa")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--no-warmup", dest="warmup", action="store_false",
                 help="no untimed first run (the caches are already filled)")
  args = p.parse_args()
  args.steps = args.steps or (20 if args.quick else 60)
  args.repeats = args.repeats or (1 if args.quick else 2)
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise SystemExit(f"allocator: --variants: unknown {unknown} (known: {', '.join(VARIANTS)})")
  jemalloc = find_jemalloc()
  out = C.header(args, "allocator")
  out["load"] = C.wait_for_quiet(args)
  out["machine"] = C.machine_info()
  out["settings"] = {"config": args.config, "steps": args.steps, "repeats": args.repeats,
                     "jemalloc": jemalloc or None, "retain_conf": RETAIN,
                     "glibc_retain_tunables": GLIBC_RETAIN}
  if not jemalloc:
    print("allocator: libjemalloc is not installed (apt-get install libjemalloc2): glibc only")
    variants = [v for v in variants if v.startswith("glibc")]
  keep = tempfile.mkdtemp(prefix="bench-allocator.")
  rows = []
  try:
    if args.warmup:
      print(f"warm-up run (fills the caches; not timed): {args.config}")
      run_once(args, "glibc", jemalloc, keep)
    for r in range(args.repeats):
      for v in variants:
        row = run_once(args, v, jemalloc, keep)
        row["round"] = r
        rows.append(row)
        print(f"  round {r} {v}: {C.fmt(row['steps_per_s'])} steps/s, sys share "
              f"{row['sys_share']:.0%}, {row['minor_faults']:,} minor faults, peak RSS "
              f"{row['peak_rss_gib']:.1f} GiB" + (f", FAILED {row['failed']}" if row["failed"]
                                                 else ""))
  finally:
    shutil.rmtree(keep, ignore_errors=True)
  reference = next((r["weights_sha256"] for r in rows if r["variant"] == "glibc"), None)
  for row in rows:
    row["same_weights_as_glibc"] = (None if reference is None or row["weights_sha256"] is None
                                    else row["weights_sha256"] == reference)
  out["rows"] = rows
  out["load"]["at_end"] = C.load_avg()
  cols = ["variant", "round", "steps_per_s", "steps_timed", "user_s", "sys_s", "sys_share",
          "minor_faults", "peak_rss_gib", "same_weights_as_glibc", "failed"]
  print(C.table(rows, cols))
  C.write(args.out or C.default_out("allocator", args.quick), out)


if __name__ == "__main__":
  main()
