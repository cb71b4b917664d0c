"""Study (b): how nDCG@10 changes with the ratio of low- to high-resource languages in the bitext.

    python study.py --config configs/studies/language_ratio.py:smoke --workdir /tmp/lr  # tiny models
    python study.py --config configs/studies/language_ratio.py:cpu --workdir runs/lr    # e5, 2 CPU cores
    python study.py --config configs/studies/language_ratio.py --workdir W --shard=$I/$N  # full, then --aggregate

One multilingual student (the e5 setting: multilingual-e5-small distilled from its own
English query side, OT loss, `configs/swa_e5.py`) trained under a fixed step budget on
a mixture of low-resource bitext (AfriQA languages: their AfriQA train/dev questions
with English translations, and NTREX-128) and high-resource bitext (NTREX-128 Greek,
Hindi, Turkish, Thai). `ratio` is the low-resource share of the batches: 0 trains on
the high-resource languages only, 1 on the low-resource ones only; within a group the
languages share equally, and within a language its sources in proportion to size.
Each cell is evaluated by nDCG@10 per language: AfriQA-CLIR test for the low-resource
languages, XQuAD-R (el, hi, tr, th) and MLQA-R (hi) for the high-resource ones (a
question retrieves its English answer sentence); the e5 zero-shot model is the
reference line. One figure per measure, a curve per dataset.

MIRACL (the benchmark researchers name for this question) loads through ir_datasets
for users who are online: add an eval config with `dataset.path='irds:miracl/sw/dev'`
(see `optical_jax.evaluator.default_config`); it is not used offline or in tests.

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny random encoders, low swa, high el, ratios 0, .5, 1, 1 seed, 4 steps (tests)
  cpu     e5-small, low swa+hau+yor+zul, high el+hi+tr+th, ratios 0, .25, .5, .75, 1,
          1 seed, 60 steps of 32 pairs; evaluated on AfriQA swa, hau and XQuAD-R el, hi
          and MLQA-R hi (measured: 60 min on the project's 2 CPU cores shared with other
          jobs, load 3-6; docs/studies/language_ratio_cpu/)
  full    the same languages, 3 seeds, 2000 steps, every AfriQA language and XQuAD-R
          el, hi, tr, th and MLQA-R hi: for GPU/TPU (`--shard=i/n`, then `--aggregate`)
Keys: ratios=0+0.5+1, low=swa+hau, high=ell+hin, seeds=N, steps=N, model=tiny|e5,
data_root=DIR, cache_dir=DIR.
"""

from __future__ import annotations

import os

from configs import common
from configs.studies import shared
from optical_jax import study

LAREQA_CODES = shared.LAREQA_CODES
MLQA_LANGS = shared.MLQA_LANGS

SCALE = {
    "smoke": dict(low="swa", high="ell", ratios="0.0+0.5+1.0", seeds=1, steps=4, model="tiny",
                  eval_low="swa", eval_high="ell"),
    "cpu": dict(low="swa+hau+yor+zul", high="ell+hin+tur+tha", ratios="0.0+0.25+0.5+0.75+1.0",
                seeds=1, steps=60, model="e5", eval_low="swa+hau", eval_high="ell+hin"),
    "full": dict(low="swa+hau+yor+zul", high="ell+hin+tur+tha", ratios="0.0+0.25+0.5+0.75+1.0",
                 seeds=3, steps=2000, model="e5", eval_low="swa+hau+yor+zul",
                 eval_high="ell+hin+tur+tha"),
}


def mixture(low, high, ratio: float, data_root: str = ""):
  """(sources, ratios) of the bitext mixture at low-resource share `ratio`."""
  groups = []
  if ratio > 0:
    for lang in low:
      groups.append((ratio / len(low), common.bitext_sources(lang, data_root=data_root)))
  if ratio < 1:
    for lang in high:
      d = common.ntrex_dir(lang, data_root)
      groups.append(((1 - ratio) / len(high), [dict(
          type="lines", label=f"ntrex-{lang}", foreign=os.path.join(d, f"{lang}.txt"),
          english=os.path.join(d, "eng.txt"))]))
  sources, ratios = [], []
  for share, group in groups:
    sizes = [shared.source_size(s) for s in group]
    for s, n in zip(group, sizes):
      sources.append(s)
      ratios.append(share * n / sum(sizes))
  return sources, tuple(ratios)


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", ratios="", low="", high="", seeds=0,
                          steps=0, model="", data_root="", cache_dir="")
  scale = SCALE[shared.check_scale(args.scale)]
  low = shared.split_list(args.low or scale["low"])
  high = shared.split_list(args.high or scale["high"])
  ratios = shared.split_list(args.ratios or scale["ratios"], float)
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  model = args.model or scale["model"]
  root = args.data_root
  if any(not 0 <= r <= 1 for r in ratios):
    raise ValueError(f"ratios must lie in [0, 1], got {ratios}")
  unknown = [h for h in high if h not in LAREQA_CODES]
  if unknown:
    raise ValueError(f"high= takes NTREX codes with an XQuAD-R/MLQA-R language "
                     f"({', '.join(LAREQA_CODES)}), got {unknown}")
  eval_low = [x for x in shared.split_list(scale["eval_low"]) if x in low] if not args.low else low
  eval_high = ([x for x in shared.split_list(scale["eval_high"]) if x in high]
               if not args.high else high)

  def base():
    if model not in ("tiny", "e5"):
      raise ValueError(f"model= takes tiny or e5, got {model!r}")
    c = shared.student_config(model, low[0], root)
    c.loss.loss = "ot"   # the study's loss (the shipped configs' default changed since)
    c.lang = "+".join(low)
    return shared.set_budget(c, steps, tiny=(model == "tiny"))

  def train(v):
    c = base()
    c.data.bitext.sources, c.data.bitext.ratios = mixture(low, high, float(v["ratio"]), root)
    c.seed = int(v["seed"])
    return c

  def evals(v):
    del v
    out = {}
    for lang in eval_low:
      out[f"afriqa-{lang}"] = shared.afriqa_eval(lang, root)
    for lang in eval_high:
      code = LAREQA_CODES[lang]
      out[f"xquad-r-{code}"] = shared.lareqa_eval("xquad-r", code, root)
      if code in MLQA_LANGS and code == "hi":
        out[f"mlqa-r-{code}"] = shared.lareqa_eval("mlqa-r", code, root)
    return out

  def references(v):
    del v
    teacher = base().teacher
    return shared.reference_systems(teacher, "teacher" if model == "tiny" else model, oracle=False)

  c = study.default_config()
  c.name = f"language_ratio-{args.scale}"
  c.axes.ratio = ratios
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ()
  c.measures = ("nDCG@10",)
  # Does mixing help over either pure mixture? (the middle ratio against both ends)
  mid = ratios[len(ratios) // 2]
  c.compare = tuple((f"ratio={mid}", f"ratio={end}") for end in dict.fromkeys(
      (ratios[-1], ratios[0])) if end != mid)
  c.plot.x = "ratio"
  c.plot.by = "dataset"
  c.cache_dir = args.cache_dir
  return c
