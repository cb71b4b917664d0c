"""Progress output: tqdm on a terminal, plain rate-limited lines in logs (no carriage returns)."""

import io
import json

import pytest

from optical_jax import monitor


class Clock:
  def __init__(self, t=1000.0):
    self.t = t

  def __call__(self):
    return self.t

  def tick(self, dt):
    self.t += dt


class Tty(io.StringIO):
  def isatty(self):
    return True


def test_log_bar_has_no_carriage_return_and_a_final_line():
  out, clock = io.StringIO(), Clock()
  with monitor.progress_bar(total=100, desc="encoding", unit="text", stream=out, every=30,
                            clock=clock, leave=False) as bar:
    assert isinstance(bar, monitor.LogProgress)
    for _ in range(10):
      clock.tick(1)
      bar.update(10)
  text = out.getvalue()
  assert "\r" not in text
  lines = text.splitlines()
  assert len(lines) == 1  # 10 s < 30 s: only the final line
  assert lines[0].startswith("encoding: 100/100 text (100%) | ")
  assert "done in 00:10" in lines[0]
  # The rate is measured after the first (compiling) update: 90 texts in 9 s.
  assert "10 text/s" in lines[0]


def test_log_bar_interval_is_respected():
  out, clock = io.StringIO(), Clock()
  bar = monitor.progress_bar(total=1000, desc="d", stream=out, every=30, clock=clock)
  printed_at = []
  for i in range(100):
    clock.tick(1)
    before = out.getvalue().count("\n")
    bar.update(10)
    if out.getvalue().count("\n") > before:
      printed_at.append(i + 1)
  bar.close()
  bar.close()  # idempotent
  assert printed_at == [30, 60, 90]
  lines = out.getvalue().splitlines()
  assert len(lines) == 4 and "\r" not in out.getvalue()
  assert lines[0] == "d: 300/1000 it (30%) | 10 it/s | ETA 01:10"
  assert lines[-1].startswith("d: 1000/1000 it (100%) | ") and "done in 01:40" in lines[-1]


def test_log_bar_wraps_iterables_and_postfix():
  out, clock = io.StringIO(), Clock()
  seen = list(monitor.progress_bar(range(0, 100, 10), desc="search", unit="chunk",
                                   stream=out, every=0, clock=clock))
  assert seen == list(range(0, 100, 10))
  assert out.getvalue().splitlines()[-1].startswith("search: 10/10 chunk (100%)")
  out = io.StringIO()
  bar = monitor.progress_bar(desc="x", stream=out, every=0, clock=clock)
  bar.update(3)
  bar.set_postfix(loss=0.123456, n=2)
  bar.close()
  assert out.getvalue().splitlines()[-1].startswith("x: 3 it |")
  assert out.getvalue().splitlines()[-1].endswith("loss=0.1235, n=2")


def test_disabled_prints_nothing():
  out = io.StringIO()
  with monitor.progress_bar(total=5, stream=out, disable=True, every=0) as bar:
    bar.update(5)
  with monitor.progress_bar(total=5, stream=out, enabled=False, every=0) as bar:
    bar.update(5)
  assert out.getvalue() == ""


def test_terminal_gets_tqdm():
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = monitor.progress_bar(total=3, desc="t", stream=Tty())
  assert isinstance(bar, tqdm)
  bar.close()


def test_interval_from_environment(monkeypatch):
  monkeypatch.setenv("OPTICAL_JAX_PROGRESS_EVERY", "5")
  assert monitor.progress_every() == 5.0
  out, clock = io.StringIO(), Clock()
  bar = monitor.progress_bar(total=100, stream=out, clock=clock)
  for _ in range(10):
    clock.tick(1)
    bar.update(1)
  assert out.getvalue().count("\n") == 2
  monkeypatch.setenv("OPTICAL_JAX_PROGRESS_EVERY", "soon")
  assert monitor.progress_every() == monitor.DEFAULT_PROGRESS_EVERY
  monkeypatch.delenv("OPTICAL_JAX_PROGRESS_EVERY")
  assert monitor.progress_every() == 30.0


def test_training_progress_in_logs():
  out, clock = io.StringIO(), Clock()
  p = monitor.Progress(100, 0, stream=out, every=30, clock=clock, desc="distill")
  for step in range(1, 51):
    clock.tick(1)
    p.update(step, {"loss": 1.0 / step})
  msg = p.close(50)
  text = out.getvalue()
  assert "\r" not in text
  lines = text.splitlines()
  # First update, then every 30 s, then the last state and the summary at close.
  assert [line.split(" | ")[0] for line in lines[:-1]] == [
      "distill 1/100", "distill 31/100", "distill 50/100"]
  assert lines[0] == "distill 1/100 | measuring steps/s, ETA next line | loss=1"
  assert lines[1] == "distill 31/100 | 1.00 steps/s | ETA 01:09 | loss=0.03226"
  assert lines[-1] == msg == "distill: 50 steps in 00:50"


def test_training_progress_on_a_terminal_redraws():
  out, clock = Tty(), Clock()
  p = monitor.Progress(10, 0, stream=out, every=30, clock=clock)
  for step in range(1, 4):
    clock.tick(1)
    p.update(step, {"loss": 0.5})
  p.close(3)
  assert out.getvalue().count("\r") == 3 and out.getvalue().endswith("train: 3 steps in 00:03\n")


def test_format_duration():
  assert monitor.format_duration(59) == "00:59"
  assert monitor.format_duration(3661) == "1:01:01"
  assert monitor.format_duration(float("nan")) == "?"


def test_metric_writer_truncates_after_resume(tmp_path):
  w = monitor.MetricWriter(str(tmp_path))
  for s in range(1, 6):
    w.write(s, {"loss": float(s)})
  w.truncate_after(3)
  w.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(x)["step"] for x in f] == [1, 2, 3]


@pytest.mark.parametrize("every", [0.0, 12.5])
def test_every_argument(every):
  assert monitor.LogProgress(total=1, every=every, stream=io.StringIO()).every == every
