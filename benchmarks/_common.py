"""Shared helpers of the benchmark scripts: CLI, machine description, load checks, timing, output.

Every script runs as `python benchmarks/NAME.py [--quick] [--out PATH]`, prints a table and
writes JSON (default `benchmarks/results/NAME.json`, atomically via
`optical_jax.fileio.write_json`). The JSON always holds `machine` (CPU model, cores,
memory, library versions) and `load` (the 1/5/15-minute load averages when the
measurements started, and how long the script waited for the machine to calm down).

Because the benchmark machine may be shared, each timed region also records
`others_cores`: how many CPU cores *other* processes kept busy while it ran (from
/proc/stat minus this process's own CPU time). On a 2-core machine, 0 means the numbers
are clean; 1 means roughly half the machine was taken by someone else.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
  sys.path.insert(1, REPO)


# ----------------------------------------------------------------------------- CLI


def parser(name: str, doc: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=f"python benchmarks/{name}.py", description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or so")
  p.add_argument("--out", default=None,
                 help=f"JSON output path (default benchmarks/results/{name}[-quick].json)")
  p.add_argument("--load-threshold", type=float, default=2.5,
                 help="wait before measuring while the 1-minute load average is above this")
  p.add_argument("--max-wait", type=float, default=600.0,
                 help="give up waiting for a quiet machine after this many seconds (then measure "
                      "anyway and record the load)")
  p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
  return p


def run_worker(name: str, log=print) -> Any:
  """Reruns this script as `--worker NAME` in a fresh process and returns what it wrote.

  PyTorch is measured in its own process: in a process that has just run XLA
  computations, the same PyTorch step measured ~30% slower on this machine (the
  two runtimes' thread pools interfere), so sharing a process would be unfair to it.
  """
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
  os.close(fd)
  try:
    cmd = [sys.executable, os.path.abspath(sys.argv[0])] + [
        a for a in sys.argv[1:]] + ["--no-wait", "--worker", name, "--worker-out", path]
    subprocess.run(cmd, check=True)
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  finally:
    os.remove(path)


def worker_done(args, payload: Any) -> None:
  from optical_jax.fileio import write_json  # pylint: disable=g-import-not-at-top
  write_json(args.worker_out, _jsonable(payload))


def default_out(name: str, quick: bool) -> str:
  return os.path.join(RESULTS, f"{name}-quick.json" if quick else f"{name}.json")


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _cpu_flags() -> List[str]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return sorted(x for x in flags if x.startswith(("avx", "amx", "fma")))
  except OSError:
    pass
  return []


def _version(mod: str) -> Optional[str]:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(mod)
  except Exception:  # pylint: disable=broad-except
    return None


def machine_info() -> Dict[str, Any]:
  """CPU model, core count, memory and the versions of everything that is timed."""
  mem_gib = None
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal"):
          mem_gib = round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  info = {
      "cpu_model": _cpu_model(),
      "cpu_cores": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "cpu_vector_flags": _cpu_flags(),
      "memory_gib": mem_gib,
      "platform": platform.platform(),
      "python": platform.python_version(),
      "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "ott-jax", "numpy",
                                            "torch", "transformers", "POT", "tokenizers")},
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    info["jax_devices"] = [str(d) for d in jax.devices()]
  if "torch" in sys.modules:
    import torch  # pylint: disable=g-import-not-at-top
    info["torch_threads"] = torch.get_num_threads()
  return info


# ----------------------------------------------------------------------------- load


def load_avg() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(args, log=print) -> Dict[str, Any]:
  """Waits (polling every 30 s) while the 1-minute load is above the threshold."""
  start = time.time()
  first = load_avg()
  if not args.no_wait and first[0] > args.load_threshold:
    log(f"load average {first} above {args.load_threshold}: waiting up to {args.max_wait:.0f} s "
        "for a quieter machine")
    while time.time() - start < args.max_wait:
      time.sleep(min(30.0, max(1.0, args.max_wait - (time.time() - start))))
      now = load_avg()
      log(f"  load {now} after {time.time() - start:.0f} s")
      if now[0] <= args.load_threshold:
        break
  at_start = load_avg()
  return {"initial": first, "at_start": at_start, "waited_s": round(time.time() - start, 1),
          "threshold": args.load_threshold, "quiet": at_start[0] <= args.load_threshold}


def _proc_stat_busy() -> Optional[float]:
  """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
  try:
    with open("/proc/stat", encoding="utf-8") as f:
      parts = f.readline().split()[1:]
  except OSError:
    return None
  v = [int(x) for x in parts]
  idle = v[3] + (v[4] if len(v) > 4 else 0)
  return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


class Contention:
  """Measures, over a region, wall time, this process's CPU cores used and other processes' cores."""

  def __enter__(self):
    self._w, self._b, self._s = time.perf_counter(), _proc_stat_busy(), _self_cpu()
    self.load1 = load_avg()[0]
    return self

  def __exit__(self, *exc):
    wall = max(time.perf_counter() - self._w, 1e-9)
    busy = _proc_stat_busy()
    mine = _self_cpu() - self._s
    self.wall_s = wall
    self.self_cores = mine / wall
    self.others_cores = (None if busy is None or self._b is None
                         else max(0.0, (busy - self._b - mine) / wall))
    return False

  def summary(self) -> Dict[str, Any]:
    return {"load1": self.load1, "self_cores": round(self.self_cores, 2),
            "others_cores": None if self.others_cores is None else round(self.others_cores, 2)}


# ----------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], Any], repeats: int) -> List[float]:
  """Wall seconds of `repeats` calls of `fn` (which must block until its work is done)."""
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def repeats_for(seconds_per_call: float, budget_s: float, lo: int, hi: int) -> int:
  """How many timed calls fit in `budget_s`, clamped to [lo, hi]."""
  if seconds_per_call <= 0:
    return hi
  return int(max(lo, min(hi, math.floor(budget_s / seconds_per_call))))


def stats(times: Sequence[float]) -> Dict[str, Any]:
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "n": len(times), "times_s": [round(t, 6) for t in times]}


# ----------------------------------------------------------------------------- memory


def rss_bytes() -> int:
  try:
    with open("/proc/self/statm", encoding="utf-8") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:
    return 0


def maxrss_bytes() -> int:
  """Peak resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
  """Samples this process's resident memory every `interval` s; `.peak` and `.start` in bytes."""

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.peak = self.start = 0
    self._stop = threading.Event()

  def __enter__(self):
    self.start = self.peak = rss_bytes()
    self._t = threading.Thread(target=self._run, daemon=True)
    self._t.start()
    return self

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, rss_bytes())
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self._stop.set()
    self._t.join()
    self.peak = max(self.peak, rss_bytes())
    return False


# ----------------------------------------------------------------------------- output


def fmt(v: Any, digits: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if v != v:
      return "nan"
    if v == 0:
      return "0"
    a = abs(v)
    if a >= 1000:
      return f"{v:,.0f}"
    if a >= 1:
      return f"{v:.{max(digits - 1 - int(math.log10(a)), 0)}f}" if a < 100 else f"{v:.0f}"
    if a >= 1e-3:
      return f"{v:.{digits}g}"
    return f"{v:.2e}"
  return str(v)


def table(rows: Sequence[Dict[str, Any]], columns: Sequence[str],
          headers: Optional[Sequence[str]] = None, markdown: bool = False) -> str:
  headers = list(headers or columns)
  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
  def line(vals):
    if markdown:
      return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    return "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  out = [line(headers)]
  out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|" if markdown
             else "  ".join("-" * w for w in widths))
  out.extend(line(r) for r in cells)
  return "\n".join(out)


def write(path: str, payload: Dict[str, Any], log=print) -> None:
  from optical_jax.fileio import write_json  # pylint: disable=g-import-not-at-top
  write_json(path, _jsonable(payload))
  log(f"wrote {os.path.relpath(path)}")


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, float):
    return None if x != x or x in (float("inf"), float("-inf")) else x
  if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
    return _jsonable(x.item())
  return x


def header(args, name: str) -> Dict[str, Any]:
  """The common JSON head: command line, mode, machine and the load at the start."""
  return {"benchmark": name, "command": "python " + " ".join(
      [os.path.relpath(sys.argv[0])] + sys.argv[1:]), "quick": bool(args.quick),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def distill_state(student, teacher, tx, mesh, seed: int = 0):
  """Replicated (train state, frozen teacher) for `step.make_distill_step` on `mesh`
  (`teacher=None`: no frozen teacher, for a step reading cached teacher tokens).

  The student's params are copied to host first, as the trainer does: the donated first
  step would otherwise delete the caller's arrays.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from optical_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  frozen = {} if teacher is None else {"teacher": teacher}
  return step_lib.replicated_state(student, tx, jax.random.PRNGKey(seed), frozen, mesh)
