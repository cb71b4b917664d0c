"""Where a jitted step spends its time on CPU: a `jax.profiler` trace aggregated by XLA op class.

`profile(fn, steps)` runs `fn()` (which must block) `steps` times under
`jax.profiler.trace(..., create_perfetto_trace=True)`, reads the Chrome-format trace
and sums, per step, the *exclusive* wall time of every XLA CPU op event (events
carrying an `hlo_op`; nested events are subtracted from their parent on the same
thread) into classes:

  matmul        `dot*`, `ynn_fusion*` (XLA CPU's YNNPACK fused matmuls), convolutions
  sinkhorn loop everything executed inside a `while` op (ott's Sinkhorn loops are the
                only while loops of the step) plus the while ops' own bookkeeping
  copy          `copy*` and transposes
  all-reduce    collectives (a copy on a 1-device mesh)
  broadcast     `wrapped_broadcast*` (materialised zeros/broadcasts, e.g. the dense
                embedding-gradient buffer)
  reduce-window `wrapped_reduce-window*`
  elementwise   all other fusions (LayerNorm, GELU, softmax, dropout bits, AdamW, ...)

Times are summed over threads, so with 2 worker threads the classes can add up to
more than the wall time; shares are reported relative to their sum.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict

_SUFFIX = re.compile(r"(\.\d+)+(\.clone)?$")


def _category(op: str, in_while: bool) -> str:
  if in_while or op.startswith("while"):
    return "sinkhorn loop"
  if op.startswith(("dot", "ynn_fusion", "convolution")) or "gemm" in op or "matmul" in op:
    return "matmul"
  if op.startswith(("copy", "transpose")):
    return "copy"
  if op.startswith(("all-reduce", "all-gather", "reduce-scatter")):
    return "all-reduce"
  if op.startswith("wrapped_broadcast"):
    return "broadcast"
  if op.startswith("wrapped_reduce-window"):
    return "reduce-window"
  return "elementwise"


def summarize_trace(path: str, steps: int) -> Dict[str, Any]:
  with gzip.open(path, "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  ops = [e for e in events if e.get("ph") == "X" and isinstance(e.get("args"), dict)
         and "hlo_op" in e["args"] and not e["name"].startswith("end:")]
  by_tid = collections.defaultdict(list)
  for e in ops:
    by_tid[(e["pid"], e["tid"])].append(e)
  excl = collections.Counter()
  per_op = collections.Counter()
  for evs in by_tid.values():
    evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    stack = []  # (end, event, child_time)
    def close(item):
      end, e, child = item
      in_while = any(s[1]["args"]["hlo_op"].startswith("while") for s in stack)
      op = e["args"]["hlo_op"]
      t = max(0.0, e.get("dur", 0) - child)
      excl[_category(op, in_while)] += t
      per_op[_SUFFIX.sub("", op) + (" (in while)" if in_while else "")] += t
    for e in evs:
      start, dur = e["ts"], e.get("dur", 0)
      while stack and stack[-1][0] <= start:
        item = stack.pop()
        close(item)
      if stack:
        stack[-1] = (stack[-1][0], stack[-1][1], stack[-1][2] + dur)
      stack.append((start + dur, e, 0.0))
    while stack:
      close(stack.pop())
  total = sum(excl.values()) or 1.0
  return {
      "ms_per_step": {k: v / 1e3 / steps for k, v in excl.most_common()},
      "share": {k: v / total for k, v in excl.most_common()},
      "top_ops_ms_per_step": {k: v / 1e3 / steps for k, v in per_op.most_common(15)},
      "events": len(ops),
  }


def profile(fn: Callable[[], Any], steps: int = 1, keep_dir: str = "") -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="optical-jax-trace-")
  try:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      for _ in range(steps):
        fn()
    found = sorted(glob.glob(os.path.join(tmp, "**", "*.trace.json.gz"), recursive=True))
    if not found:
      return {"error": "no trace written"}
    out = summarize_trace(found[-1], steps)
    if keep_dir:
      os.makedirs(keep_dir, exist_ok=True)
      shutil.copy(found[-1], keep_dir)
      out["trace_file"] = os.path.join(keep_dir, os.path.basename(found[-1]))
    return out
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
