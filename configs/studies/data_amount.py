"""Study (a): how the amount of bitext changes the gains of OT distillation over sentence-level distillation.

    python study.py --config configs/studies/data_amount.py:smoke --workdir /tmp/da   # < 2 min, tiny models
    python study.py --config configs/studies/data_amount.py:cpu --workdir runs/da     # MiniLM, 2 CPU cores
    python study.py --config configs/studies/data_amount.py --workdir /shared/da --shard=$I/$N  # full, then
    python study.py --config configs/studies/data_amount.py --workdir /shared/da --aggregate

Grid: lang x bitext amount x loss {sentence, ot} x seed (run seed by seed). The amount is the first N pairs
of the language's bitext in a fixed order, query-domain pairs first, then news: AfriQA
train/dev questions with their English translations, NTREX-128, then MAFAND-MT (swa,
hau, zul) or MENYO-20k (yor) (`configs/common.py`: `bitext_sources`, `news_sources`;
AfriQA test queries excluded). Every cell trains the same number of steps (a fixed
compute budget: small amounts are seen for more epochs). Each cell is evaluated on the
language's AfriQA-CLIR test (native questions, English passages) and on bitext
retrieval (FLORES-200 devtest for hau and zul, Tatoeba for swa; yor has neither here),
by P@5, R@10 and nDCG@10 (P@1 and AP are in results.csv too); the teacher zero-shot and
with the English translations (oracle) are the reference lines.

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny random encoders, swa, amounts 16 and 48, 2 seeds, 4 steps: tests (< 2 min)
  cpu     MiniLM (English teacher, student a copy), swa, amounts 250, 1000, 4000, 2 seeds,
          100 steps of 32 pairs (67 min measured on the project's 2-core CPU under a
          load of 6-9 from other jobs; about 20-25 min expected on idle cores)
  full    e5-small (the multilingual setting), swa+hau+yor+zul, amounts 250, 500, 1k, 2k,
          4k, all, 5 seeds, 1000 steps: for GPU/TPU (shard it: `--shard=i/n`, then
          `--aggregate`)
Keys overriding the scale: langs=swa+hau, amounts=250+1000+all, losses=sentence+ot,
seeds=N (seeds 0..N-1), steps=N, model=tiny|minilm|e5, data_root=DIR, cache_dir=DIR
(token and embedding caches for this study only; default: the shared caches).
"""

from __future__ import annotations

from configs import common
from configs.studies import shared
from optical_jax import study

SCALE = {
    "smoke": dict(langs="swa", amounts="16+48", losses="sentence+ot", seeds=2, steps=4,
                  model="tiny"),
    "cpu": dict(langs="swa", amounts="250+1000+4000", losses="sentence+ot", seeds=2,
                steps=100, model="minilm"),
    "full": dict(langs="swa+hau+yor+zul", amounts="250+500+1k+2k+4k+all",
                 losses="sentence+ot", seeds=5, steps=1000, model="e5"),
}


def train_config(lang: str, loss: str, amount, seed: int, *, model: str, steps: int,
                 data_root: str = ""):
  """The trainer config of one cell."""
  c = shared.student_config(model, lang, data_root)
  c.lang = lang
  sources = common.bitext_sources(lang, data_root=data_root)
  if model != "tiny":
    sources += common.news_sources(lang, data_root)
  c.data.bitext.sources = shared.take_first(sources, shared.parse_amount(amount))
  c.loss.loss = loss
  c.seed = int(seed)
  return shared.set_budget(c, steps, tiny=(model == "tiny"))


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", langs="", amounts="", losses="",
                          seeds=0, steps=0, model="", data_root="", cache_dir="")
  scale = SCALE[shared.check_scale(args.scale)]
  langs = shared.split_list(args.langs or scale["langs"])
  amounts = shared.split_list(args.amounts or scale["amounts"])
  losses = shared.split_list(args.losses or scale["losses"])
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  model = args.model or scale["model"]
  root = args.data_root
  for a in amounts:
    shared.parse_amount(a)  # 'all', N or Nk

  def train(v):
    return train_config(v["lang"], v["loss"], v["amount"], v["seed"], model=model, steps=steps,
                        data_root=root)

  def evals(v):
    return shared.language_evals(v["lang"], root)

  def references(v):
    teacher = train_config(v["lang"], "ot", amounts[0], 0, model=model, steps=steps,
                           data_root=root).teacher
    name = "teacher" if model == "tiny" else model
    return shared.reference_systems(teacher, name)

  c = study.default_config()
  c.name = f"data_amount-{args.scale}"
  c.axes.lang = langs
  c.axes.amount = amounts
  c.axes.loss = losses   # after amount: the two losses at one amount run back to back
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ("lang",)
  c.compare = (("loss=ot", "loss=sentence"),) if {"ot", "sentence"} <= set(losses) else ()
  c.measures = ("P@5", "R@10", "nDCG@10")
  c.plot.x = "amount"
  c.cache_dir = args.cache_dir
  return c
