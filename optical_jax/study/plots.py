"""Curves over a study's x axis with confidence bands and reference lines (PNG)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional


from optical_jax import fileio, paths
from optical_jax.study.spec import axes
from optical_jax.study.rows import Arm, Collected, _arm_stats, _safe, arms


def _x_axis(config, ax) -> Optional[str]:
  if config.plot.x:
    return config.plot.x
  for a, values in ax.items():
    if a != config.seed_axis and len(values) > 1:
      return a
  return None


def plot(config, col: Collected, out_dir: str) -> List[str]:
  """Curves over the x axis (categorical positions, in axis order) with CI bands; the
  references as dashed lines: a figure per measure with a curve per dataset
  (`plot.by='dataset'`), else a figure per dataset with a panel per measure. Returns the
  PNG paths written."""
  ax_all = axes(config)
  x_axis = _x_axis(config, ax_all)
  if x_axis is None:
    return []
  paths.makedirs(out_dir)
  p = _Plotter(config, col, x_axis)
  if config.plot.by == "dataset":
    return [p.by_dataset(measure, out_dir) for measure in config.measures]
  return [p.by_measure(dataset, out_dir) for dataset in col.datasets]


class _Plotter:
  """What `plot`'s figures share: the x positions, one curve per group of arms, and the
  drawing of curves, reference lines and axes."""

  def __init__(self, config, col: Collected, x_axis: str):
    ax_all = axes(config)
    self.config, self.col, self.x_axis = config, col, x_axis
    self.xs = list(ax_all[x_axis])
    line_axes = [a for a in ax_all if a not in (x_axis, config.seed_axis) and len(ax_all[a]) > 1]
    self.groups: Dict[str, Dict[str, Arm]] = {}
    for arm in arms(config, col):
      label = ",".join(f"{a}={arm.values[a]}" for a in line_axes) or config.system
      self.groups.setdefault(label, {})[str(arm.values[x_axis])] = arm

  @staticmethod
  def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig

  def curve(self, axis, label, dataset, measure, name=None):
    pos, mean, lo, hi = [], [], [], []
    for i, x in enumerate(self.xs):
      arm = self.groups[label].get(str(x))
      if arm is None:
        continue
      (m, l, h), n = _arm_stats(self.config, self.col, arm, dataset, measure)
      if n == 0:
        continue
      pos.append(i)
      mean.append(m)
      lo.append(l if not math.isnan(l) else m)
      hi.append(h if not math.isnan(h) else m)
    if pos:
      line, = axis.plot(pos, mean, marker="o", label=name or label)
      axis.fill_between(pos, lo, hi, alpha=0.2, color=line.get_color())
      return line.get_color()
    return None

  def refs(self, axis, dataset, measure):
    # References far off the curves' scale (an oracle at 1.0) are named, not drawn, so
    # the curves stay readable.
    lo, hi = axis.get_ylim()
    span = max(hi - lo, 1e-3)
    off = []
    for (_, ds, system), agg in self.col.references.items():
      if ds != dataset or measure not in agg:
        continue
      v = agg[measure]
      if lo - span <= v <= hi + span:
        axis.axhline(v, linestyle="--", linewidth=0.8, color="grey")
        axis.annotate(system, (0, v), fontsize=6, color="grey", xytext=(2, 2),
                      textcoords="offset points")
      else:
        off.append(f"{system} {v:.3f}")
    if off:
      axis.annotate("off scale: " + ", ".join(off), (0.01, 0.99), xycoords="axes fraction",
                    fontsize=6, color="grey", va="top")

  def finish(self, fig, axis_list, title):
    labels = [str(x) for x in self.xs]
    crowded = sum(len(x) for x in labels) > 24   # e.g. loss names side by side: slant them
    for a in axis_list:
      a.set_xticks(range(len(self.xs)))
      if crowded:
        a.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
      else:
        a.set_xticklabels(labels)
      a.set_xlabel(self.x_axis)
      a.grid(alpha=0.3)
    axis_list[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()

  def by_dataset(self, measure: str, out_dir: str) -> str:
    """One figure for `measure`: a curve per dataset (and group), its references dashed
    in its colour."""
    config, col = self.config, self.col
    fig = self._figure((5.5, 3.8))
    axis = fig.add_subplot(1, 1, 1)
    drawn_refs = False
    for dataset in col.datasets:
      color = None
      for label in self.groups:
        color = self.curve(axis, label, dataset, measure,
                           name=dataset if label == config.system else f"{dataset} {label}") or color
      for (_, ds, _), agg in col.references.items():  # dashed, in the dataset's colour
        if ds == dataset and measure in agg and color is not None:
          axis.axhline(agg[measure], linestyle="--", linewidth=0.8, color=color)
          drawn_refs = True
    if drawn_refs:
      names = sorted({system for (_, _, system) in col.references})
      axis.annotate("dashed: " + ", ".join(names), (0.01, 0.01), xycoords="axes fraction",
                    fontsize=6, color="grey", va="bottom")
    axis.set_ylabel(measure)
    self.finish(fig, [axis], f"{config.name}: {measure} ({100 * float(config.confidence):g}% CI over seeds)")
    path = paths.join(out_dir, f"{_safe(measure)}.png")
    _save(fig, path)
    return path

  def by_measure(self, dataset: str, out_dir: str) -> str:
    """One figure for `dataset`: a panel per measure, a curve per group, the references."""
    config = self.config
    measures = list(config.measures)
    fig = self._figure((3.4 * len(measures) + 0.6, 3.4))
    axis_list = []
    for j, measure in enumerate(measures):
      axis = fig.add_subplot(1, len(measures), j + 1)
      for label in self.groups:
        self.curve(axis, label, dataset, measure)
      self.refs(axis, dataset, measure)
      axis.set_ylabel(measure)
      axis_list.append(axis)
    self.finish(fig, axis_list, f"{config.name}: {dataset} "
                f"({100 * float(config.confidence):g}% CI over seeds)")
    path = paths.join(out_dir, f"{_safe(dataset)}.png")
    _save(fig, path)
    return path


def _save(fig, path: str, dpi: int = 130) -> None:
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)
