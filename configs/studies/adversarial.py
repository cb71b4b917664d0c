"""Study (d): does OT distillation with adversarial language invariance close the high/low-resource gap?

    python study.py --config configs/studies/adversarial.py:smoke --workdir /tmp/adv  # tiny models
    python study.py --config configs/studies/adversarial.py:cpu --workdir runs/adv    # e5, 2 CPU cores
    python study.py --config configs/studies/adversarial.py --workdir W --shard=$I/$N  # full, then --aggregate

One multilingual student (the e5 setting, `configs/swa_e5.py`: multilingual-e5-small
distilled from its own English query side) trained on an equal mixture of low-resource
bitext (AfriQA languages: their AfriQA train/dev questions and NTREX-128) and
high-resource bitext (NTREX-128 el, hi, ...), `language_ratio.mixture` at ratio 0.5,
with the OT loss and a discriminator behind a gradient-reversal layer
(`optical_jax.adversarial`: it tells the student's pooled foreign embeddings from the
teacher's pooled English ones) at weight {0 = off, ...}, DANN schedule.

Evaluated per language by P@1 (and nDCG@10): AfriQA-CLIR test for the low-resource
languages, XQuAD-R for the high-resource ones; each also with the same questions in
English (`dataset.query_field='text_en'`: AfriQA's human translations, XQuAD-R's
parallel English questions), encoded by the same student. The transfer gap of a
language, `gap-<lang>`, is the English questions' score minus the language's, per query
(`study.derived`): adversarial training should shrink it, most for the low-resource
languages. The paired comparisons set each weight against weight 0.

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny random encoders, low swa, high ell, weights 0 and 0.1, 1 seed, 4 steps (tests)
  cpu     e5-small, low swa+hau, high ell+hin, weights 0, 0.03, 0.3, 1 seed, 60 steps of
          32 pairs (measured: 15 min with the passages already in the embedding
          cache from study (b); results: docs/studies/adversarial_cpu/)
  full    e5-small, low swa+hau+yor+zul, high ell+hin+tur+tha, weights 0, .01, .03, .1, .3,
          losses ot and sentence, 3 seeds, 2000 steps: GPU/TPU (`--shard=i/n`, `--aggregate`)
Keys: weights=0+0.1, low=swa, high=ell, losses=ot+sentence, seeds=N, steps=N,
model=tiny|e5, schedule=dann|constant, data_root=DIR, cache_dir=DIR.
"""

from __future__ import annotations

from configs import common
from configs.studies import language_ratio, shared
from optical_jax import study

SCALE = {
    "smoke": dict(low="swa", high="ell", weights="0.0+0.1", losses="ot", seeds=1, steps=4,
                  model="tiny"),
    "cpu": dict(low="swa+hau", high="ell+hin", weights="0.0+0.03+0.3", losses="ot", seeds=1,
                steps=60, model="e5"),
    "full": dict(low="swa+hau+yor+zul", high="ell+hin+tur+tha", weights="0.0+0.01+0.03+0.1+0.3",
                 losses="ot+sentence", seeds=3, steps=2000, model="e5"),
}
MEASURES = ("P@1", "nDCG@10")


def evals_for(low, high, data_root: str = ""):
  """Each language's set with its native and its English questions; the gaps between them."""
  out, derived = {}, []
  sets = [(f"afriqa-{lang}", shared.afriqa_eval(lang, data_root), lang) for lang in low]
  sets += [(f"xquad-r-{shared.LAREQA_CODES[lang]}",
            shared.lareqa_eval("xquad-r", shared.LAREQA_CODES[lang], data_root), lang)
           for lang in high]
  for name, cfg, lang in sets:
    english = cfg.copy_and_resolve_references()
    english.dataset.query_field = "text_en"
    out[name] = cfg
    out[f"{name}.en"] = english
    derived.append((f"gap-{lang}", f"{name}.en", name))
  return out, tuple(derived)


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", weights="", low="", high="",
                          losses="", seeds=0, steps=0, model="", schedule="dann", data_root="",
                          cache_dir="")
  scale = SCALE[shared.check_scale(args.scale)]
  low = shared.split_list(args.low or scale["low"])
  high = shared.split_list(args.high or scale["high"])
  weights = shared.split_list(args.weights or scale["weights"], float)
  losses = shared.split_list(args.losses or scale["losses"])
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  model = args.model or scale["model"]
  root = args.data_root
  if any(w < 0 for w in weights):
    raise ValueError(f"weights must be >= 0, got {weights}")
  unknown = [h for h in high if h not in shared.LAREQA_CODES]
  if unknown:
    raise ValueError(f"high= takes NTREX codes with an XQuAD-R language "
                     f"({', '.join(shared.LAREQA_CODES)}), got {unknown}")
  # The student of language_ratio.py's cell at ratio 0.5: the same mixture and settings.
  base = language_ratio.get_config(
      f"{args.scale},low={'+'.join(low)},high={'+'.join(high)},ratios=0.5,steps={steps},"
      f"model={model}" + (f",data_root={root}" if root else ""))
  eval_sets, derived = evals_for(low, high, root)

  def train(v):
    c = base.train({"ratio": 0.5, "seed": v["seed"]})
    c.loss.loss = v["loss"]
    c.adversarial.weight = float(v["weight"])
    c.adversarial.schedule = args.schedule
    return c

  def evals(v):
    del v
    return {k: e.copy_and_resolve_references() for k, e in eval_sets.items()}

  def references(v):
    del v
    teacher = base.train({"ratio": 0.5, "seed": 0}).teacher
    return shared.reference_systems(teacher, "teacher" if model == "tiny" else model, oracle=False)

  c = study.default_config()
  c.name = f"adversarial-{args.scale}"
  c.axes.weight = weights
  c.axes.loss = losses
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ()
  c.measures = MEASURES
  c.derived = derived
  off = weights[0]
  c.compare = tuple((f"weight={w}", f"weight={off}") for w in weights[1:])
  c.plot.x = "weight"
  c.plot.by = "dataset"
  c.cache_dir = args.cache_dir
  return c
