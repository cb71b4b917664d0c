"""Training observability: TensorBoard event files, a JSONL metrics log and a progress line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional

from optical_jax.fileio import atomic_open


class MetricWriter:
  """Writes scalars to TensorBoard (tensorboardX) and to `metrics.jsonl` in the workdir.

  Only the writing process (process 0) should create one with `enabled=True`. On
  resume, `truncate_after(step)` drops log lines past the restored checkpoint so the
  JSONL loss curve of a resumed run equals that of an uninterrupted one.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_open(self.path, "w", encoding="utf-8") as f:
      f.writelines(keep)

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def format_duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
  """One updating line: step/total, steps/s, ETA and chosen metrics (stderr)."""

  def __init__(self, total: int, start: int = 0, enabled: bool = True, desc: str = "train",
               stream=None):
    self.total, self.start, self.enabled, self.desc = total, start, enabled, desc
    self.stream = stream or sys.stderr
    self.t0 = time.time()
    self.t_first: Optional[float] = None
    self.step_first = start
    self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self._last_print = 0.0

  def rate(self, step: int) -> float:
    # Steps/s measured after the first (compiling) step.
    if self.t_first is None or step <= self.step_first:
      return 0.0
    return (step - self.step_first) / max(time.time() - self.t_first, 1e-9)

  def update(self, step: int, metrics: Dict[str, float], force: bool = False) -> None:
    if self.t_first is None:
      self.t_first, self.step_first = time.time(), step
    if not self.enabled:
      return
    now = time.time()
    if not force and not self._tty and now - self._last_print < 10:
      return
    self._last_print = now
    r = self.rate(step)
    eta = (self.total - step) / r if r > 0 else float("nan")
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    line = (f"{self.desc} {step}/{self.total} | {r:.2f} steps/s | "
            f"ETA {format_duration(eta) if r > 0 else '?'} | {shown}")
    if self._tty:
      self.stream.write("\r" + line[:200].ljust(120))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self, step: int) -> str:
    elapsed = time.time() - self.t0
    msg = f"{self.desc}: {step - self.start} steps in {format_duration(elapsed)}"
    if self.enabled:
      if self._tty:
        self.stream.write("\n")
      self.stream.write(msg + "\n")
      self.stream.flush()
    return msg


class CompileCounter:
  """Counts XLA compilations while active, through `jax.monitoring` (no private JAX API).

  JAX reports every backend compilation as a duration event named by the compiled
  function; one answered from the persistent compilation cache also records a cache
  hit inside it. `compiled` counts real compilations and `loaded` the cache loads, by
  function name; in-memory jit cache hits report nothing and count as neither.

      with CompileCounter() as counter:
        ...
      counter.total_compiled()
  """

  BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
  CACHE_HIT = "/jax/compilation_cache/cache_hits"

  def __init__(self):
    import collections  # pylint: disable=g-import-not-at-top
    self.compiled = collections.Counter()
    self.loaded = collections.Counter()
    self._hit = False
    self._active = False

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == self.CACHE_HIT:
      self._hit = True

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    del duration
    if event != self.BACKEND_COMPILE:
      return
    name = str(kwargs.get("fun_name", "?"))
    (self.loaded if self._hit else self.compiled)[name] += 1
    self._hit = False

  def start(self) -> "CompileCounter":
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    if not self._active:
      monitoring.register_event_listener(self._on_event)
      monitoring.register_event_duration_secs_listener(self._on_duration)
      self._active = True
    return self

  def stop(self) -> None:
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    if self._active:
      monitoring.unregister_event_listener(self._on_event)
      monitoring.unregister_event_duration_listener(self._on_duration)
      self._active = False

  def __enter__(self) -> "CompileCounter":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def total_compiled(self, name_contains: str = "") -> int:
    return sum(n for k, n in self.compiled.items() if name_contains in k)

  def total_loaded(self, name_contains: str = "") -> int:
    return sum(n for k, n in self.loaded.items() if name_contains in k)

  def summary(self) -> str:
    return (f"{self.total_compiled()} XLA compilation(s), {self.total_loaded()} loaded from "
            "the persistent compilation cache")
