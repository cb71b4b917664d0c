"""Training observability: TensorBoard event files, a JSONL metrics log and progress lines.

Progress goes to stderr. On a terminal it redraws one line (tqdm, or a carriage return
for the training line); anywhere else (a log file, a pipe, a batch job) it prints plain
lines, at most one every `OPTICAL_JAX_PROGRESS_EVERY` seconds (default 30) plus a final
one, and never a carriage return, so logs stay readable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Optional

from optical_jax import fileio, paths
from optical_jax.fileio import atomic_open

log = logging.getLogger(__name__)

PROGRESS_EVERY_ENV = "OPTICAL_JAX_PROGRESS_EVERY"
DEFAULT_PROGRESS_EVERY = 30.0


class MetricWriter:
  """Writes scalars to TensorBoard (tensorboardX) and to `metrics.jsonl` in the workdir.

  Only the writing process (process 0) should create one with `enabled=True`. On
  resume, `truncate_after(step)` drops log lines past the restored checkpoint so the
  JSONL loss curve of a resumed run equals that of an uninterrupted one.

  In a URL workdir (`gs://...`, where objects cannot be appended to) the log's lines are
  kept here and the object is rewritten whole at each write (one upload per log step);
  tensorboardX writes its event files to `gs://` itself.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = paths.join(workdir, "metrics.jsonl")
    self._remote_lines = None   # the log's lines, for a URL workdir
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not paths.exists(self.path):
      return
    with paths.open(self.path, encoding="utf-8") as f:
      keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_open(self.path, "w", encoding="utf-8") as f:
      f.writelines(keep)
    if paths.is_url(self.path):
      self._remote_lines = keep

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
    if paths.is_url(self.path):
      if self._remote_lines is None:
        self._remote_lines = (fileio.read_text(self.path) or "").splitlines(keepends=True)
      self._remote_lines.append(line)
      with atomic_open(self.path, "w", encoding="utf-8") as f:
        f.writelines(self._remote_lines)
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(line)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def stderr_line(msg: str) -> None:
  """The programs' default log: one line on stderr, flushed (progress and status lines)."""
  print(msg, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_every() -> float:
  """Seconds between progress lines in logs: $OPTICAL_JAX_PROGRESS_EVERY, default 30."""
  raw = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
  if not raw:
    return DEFAULT_PROGRESS_EVERY
  try:
    value = float(raw)
    if value < 0 or not math.isfinite(value):
      raise ValueError
    return value
  except ValueError:
    log.warning("%s=%r is not a number of seconds >= 0; using %g", PROGRESS_EVERY_ENV, raw,
                DEFAULT_PROGRESS_EVERY)
    return DEFAULT_PROGRESS_EVERY


def is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


def _format_count(x: float) -> str:
  return f"{x:.0f}" if float(x).is_integer() else f"{x:.4g}"


class LogProgress:
  """A progress bar for logs, with tqdm's interface (the parts this project uses).

  Prints `desc: n/total unit (pct%) | rate unit/s | ETA mm:ss | postfix` as a plain
  line at most every `every` seconds, and a final line at `close()` (always, even
  when the bar was created with tqdm's `leave=False`). Nothing is printed when disabled.
  The rate is measured from the end of the first update on, so a slow first batch
  (compilation) does not skew the ETA.
  """

  def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None,
               desc: Optional[str] = None, unit: str = "it", disable: bool = False,
               stream=None, every: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic, initial: float = 0, **unused):
    del unused  # tqdm options without a meaning here (leave, dynamic_ncols, ...)
    self.iterable = iterable
    if total is None and iterable is not None:
      try:
        total = len(iterable)  # type: ignore[arg-type]
      except TypeError:
        total = None
    self.total = total
    self.desc = desc or ""
    self.unit = unit
    self.disable = bool(disable)
    self.stream = stream if stream is not None else sys.stderr
    self.every = progress_every() if every is None else float(every)
    self._clock = clock
    self.n = initial
    self.postfix = ""
    self.t0 = clock()
    self._last_print = self.t0
    self._first: Optional[tuple] = None  # (time, n) at the first update
    self._closed = False

  # -- tqdm interface

  def __iter__(self):
    if self.iterable is None:
      raise TypeError("LogProgress was created without an iterable")
    try:
      for item in self.iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def __len__(self):
    return int(self.total or 0)

  def __enter__(self) -> "LogProgress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def update(self, n: float = 1) -> None:
    now = self._clock()
    self.n += n
    if self._first is None:
      self._first = (now, self.n)
    if not self.disable and now - self._last_print >= self.every:
      self._print(now)

  def set_postfix(self, ordered_dict: Optional[Dict[str, Any]] = None, refresh: bool = True,
                  **kwargs) -> None:
    del refresh
    items = dict(ordered_dict or {}, **kwargs)
    self.postfix = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())

  def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
    del refresh
    self.postfix = str(s)

  def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
    del refresh
    self.desc = desc or ""

  def refresh(self) -> None:
    pass

  def write(self, s: str) -> None:
    if not self.disable:
      self.stream.write(s.rstrip("\n") + "\n")
      self.stream.flush()

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if not self.disable:
      self._print(self._clock(), final=True)

  # -- lines

  def rate(self, now: Optional[float] = None) -> float:
    """Units per second after the first update, else overall (0 when unknown)."""
    now = self._clock() if now is None else now
    if self._first is not None:
      t1, n1 = self._first
      if now > t1 and self.n > n1:
        return (self.n - n1) / (now - t1)
    if now > self.t0 and self.n > 0:
      return self.n / (now - self.t0)
    return 0.0

  def line(self, now: Optional[float] = None, final: bool = False) -> str:
    now = self._clock() if now is None else now
    count = _format_count(self.n)
    parts = []
    if self.total:
      parts.append(f"{count}/{_format_count(self.total)} {self.unit} "
                   f"({100.0 * self.n / self.total:.0f}%)")
    else:
      parts.append(f"{count} {self.unit}")
    r = self.rate(now)
    if r > 0:
      parts.append(f"{r:.3g} {self.unit}/s")
    if final:
      parts.append(f"done in {format_duration(now - self.t0)}")
    elif self.total:
      eta = (self.total - self.n) / r if r > 0 else float("nan")
      parts.append(f"ETA {format_duration(eta)}")
    if self.postfix:
      parts.append(self.postfix)
    return (f"{self.desc}: " if self.desc else "") + " | ".join(parts)

  def _print(self, now: float, final: bool = False) -> None:
    self._last_print = now
    self.stream.write(self.line(now, final) + "\n")
    self.stream.flush()


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[float] = None,
                 desc: Optional[str] = None, *, enabled: Optional[bool] = None,
                 disable: bool = False, stream=None, every: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic, **tqdm_kwargs):
  """A tqdm bar on a terminal, else a `LogProgress` printing plain lines (same interface).

  A drop-in for `tqdm(...)` (`from optical_jax.monitor import progress_bar as tqdm`):
  use as a context manager with `update(n)`, or wrap an iterable.

  Args:
    iterable: optional iterable to wrap.
    total: expected number of units.
    desc: label.
    enabled: False (or `disable=True`) shows nothing.
    stream: where to write (default stderr); tqdm is used only when it is a terminal.
    every: seconds between log lines (default $OPTICAL_JAX_PROGRESS_EVERY, else 30).
    clock: time source for the log lines (tests).
    **tqdm_kwargs: passed on to tqdm (unit, leave, ...); `unit` is also used in log lines.
  """
  disable = bool(disable) or enabled is False
  stream = stream if stream is not None else sys.stderr
  if not disable and is_terminal(stream):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(iterable, total=total, desc=desc, file=stream, **tqdm_kwargs)
  return LogProgress(iterable, total=total, desc=desc, disable=disable, stream=stream,
                     every=every, clock=clock, **tqdm_kwargs)


class Progress:
  """The training line: step/total, steps/s, ETA and chosen metrics (stderr).

  On a terminal the line is redrawn in place; otherwise a plain line is printed at the
  first update, then at most every `every` seconds (default $OPTICAL_JAX_PROGRESS_EVERY,
  else 30), and the last state is printed at `close()` if it was not yet.
  """

  def __init__(self, total: int, start: int = 0, enabled: bool = True, desc: str = "train",
               stream=None, every: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.start, self.enabled, self.desc = total, start, enabled, desc
    self.stream = stream or sys.stderr
    self.every = progress_every() if every is None else float(every)
    self._clock = clock
    self.t0 = clock()
    self.t_first: Optional[float] = None
    self.step_first = start
    self._tty = is_terminal(self.stream)
    self._last_print = -math.inf
    self._pending: Optional[tuple] = None  # the last update not printed yet

  def rate(self, step: int, now: Optional[float] = None) -> float:
    # Steps/s measured after the first (compiling) step.
    if self.t_first is None or step <= self.step_first:
      return 0.0
    now = self._clock() if now is None else now
    return (step - self.step_first) / max(now - self.t_first, 1e-9)

  def line(self, step: int, metrics: Dict[str, float], now: Optional[float] = None) -> str:
    r = self.rate(step, now)
    # The first line comes before any timed step (the first one compiles): say so rather
    # than print a rate of 0 (a resumed run used to look stalled).
    speed = f"{r:.2f} steps/s | ETA {format_duration((self.total - step) / r)}" if r > 0 \
        else "measuring steps/s, ETA next line"
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    return f"{self.desc} {step}/{self.total} | {speed} | {shown}"

  def update(self, step: int, metrics: Dict[str, float], force: bool = False) -> None:
    now = self._clock()
    if self.t_first is None:
      self.t_first, self.step_first = now, step
    if not self.enabled:
      return
    if not force and not self._tty and now - self._last_print < self.every:
      self._pending = (step, dict(metrics), now)
      return
    self._last_print = now
    self._pending = None
    line = self.line(step, metrics, now)
    if self._tty:
      self.stream.write("\r" + line[:200].ljust(120))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self, step: int) -> str:
    now = self._clock()
    elapsed = now - self.t0
    msg = f"{self.desc}: {step - self.start} steps in {format_duration(elapsed)}"
    if self.enabled:
      if self._tty:
        self.stream.write("\n")
      elif self._pending is not None:
        p_step, p_metrics, p_now = self._pending
        self.stream.write(self.line(p_step, p_metrics, p_now) + "\n")
      self._pending = None
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
