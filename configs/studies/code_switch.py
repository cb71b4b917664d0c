"""Study (c): does training on code-switched bitext generalise better to low-resource languages?

    python study.py --config configs/studies/code_switch.py:smoke --workdir /tmp/cs   # tiny models
    python study.py --config configs/studies/code_switch.py:cpu --workdir runs/cs     # MiniLM, 2 CPU cores
    python study.py --config configs/studies/code_switch.py --workdir W --shard=$I/$N  # full, then --aggregate

Grid: lang x switch rate x loss {sentence, ot} x seed. Each cell distils a student for
one language from its bitext with `data.code_switch.rate` of the foreign side's words
replaced by English translations (`optical_jax.data.codeswitch`: each pair switched
once, before tokenisation, from the cell's seed; rate 0 is plain distillation):
  * AfriQA languages (swa, hau, yor, zul): their distillation bitext (AfriQA train/dev
    questions with their translations, then NTREX-128), a lexicon induced from that same
    bitext (IBM Model 1, `shared.induced_lexicon`: these languages have no MUSE
    dictionary), evaluated on AfriQA-CLIR test and bitext retrieval (Tatoeba swa,
    FLORES-200 hau/zul);
  * XQuAD-R / MLQA-R languages (NTREX codes: ell, hin, tur, ...): NTREX-128 bitext, the
    MUSE X-en dictionary, evaluated on XQuAD-R (and MLQA-R).
The measure is recall@K (K = 1, 5, 10, 100) with nDCG@10; the teacher zero-shot and,
for AfriQA, with the English translations (oracle) are reference lines. The paired
comparisons set each switched rate against rate 0 (per language and loss, queries
pooled over seeds).

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny random encoders, swa, rates 0 and 0.5, OT, 1 seed, 4 steps (tests)
  cpu     MiniLM (English teacher, student a copy; the `configs/swa_minilm.py` setting),
          swa, rates 0, .1, .25, .5, losses sentence and OT, 1 seed, 100 steps of 32
          pairs: 8 trained cells and one reference cell (measured: 36 min on the
          project's 2 CPU cores shared with other jobs, load 3-5; docs/studies/code_switch_cpu/)
  full    e5-small, swa+hau+yor+zul and ell+hin+tur, the same rates and losses, 3 seeds,
          1000 steps: for GPU/TPU (`--shard=i/n`, then `--aggregate`)
Keys: langs=swa+ell, rates=0+0.25, losses=ot, seeds=N, steps=N, model=tiny|minilm|e5,
side=foreign|english (english: switch the teacher's side instead, with the en-X
dictionary; AfriQA languages need a MUSE language there), data_root=DIR, cache_dir=DIR.
"""

from __future__ import annotations

import os

from configs import common
from configs.studies import shared
from optical_jax import study

SCALE = {
    "smoke": dict(langs="swa", rates="0.0+0.5", losses="ot", seeds=1, steps=4, model="tiny"),
    "cpu": dict(langs="swa", rates="0.0+0.1+0.25+0.5", losses="sentence+ot", seeds=1, steps=100,
                model="minilm"),
    "full": dict(langs="swa+hau+yor+zul+ell+hin+tur", rates="0.0+0.1+0.25+0.5",
                 losses="sentence+ot", seeds=3, steps=1000, model="e5"),
}
MEASURES = ("R@1", "R@5", "R@10", "R@100", "nDCG@10")


def is_afriqa(lang: str, data_root: str = "") -> bool:
  """An AfriQA-CLIR language (its queries are in the data), not an XQuAD-R/MLQA-R one."""
  if lang in shared.LAREQA_CODES:
    return False
  return os.path.exists(os.path.join(common.afriqa_dir(lang, data_root), "queries",
                                     f"{lang}.test.jsonl"))


def sources_for(lang: str, data_root: str = ""):
  if is_afriqa(lang, data_root):
    return common.bitext_sources(lang, data_root=data_root)
  return [shared.ntrex_source(lang, data_root)]


def lexicon_for(lang: str, side: str, data_root: str = "", cache_dir: str = "") -> str:
  """MUSE where the language has it, else a lexicon induced from the language's bitext."""
  if lang in shared.LAREQA_CODES:
    return common.muse_dictionary(lang, to_english=(side == "foreign"), data_root=data_root)
  if side != "foreign":
    raise ValueError(f"side=english needs an English -> {lang} dictionary; {lang} has no MUSE "
                     "dictionary and induced lexicons here are foreign -> English")
  return shared.induced_lexicon(sources_for(lang, data_root), cache_dir)


def train_config(lang: str, loss: str, rate: float, seed: int, *, model: str, steps: int,
                 side: str = "foreign", data_root: str = "", cache_dir: str = ""):
  """The trainer config of one cell."""
  afriqa_lang = lang if is_afriqa(lang, data_root) else "swa"  # the base setting's language
  c = shared.student_config(model, afriqa_lang, data_root)
  c.lang = lang
  c.data.bitext.sources = sources_for(lang, data_root)
  if float(rate) > 0:
    c.data.code_switch.rate = float(rate)
    c.data.code_switch.side = side
    c.data.code_switch.dictionary = lexicon_for(lang, side, data_root, cache_dir)
  c.loss.loss = loss
  c.seed = int(seed)
  return shared.set_budget(c, steps, tiny=(model == "tiny"))


def evals_for(lang: str, data_root: str = ""):
  out = (shared.language_evals(lang, data_root) if is_afriqa(lang, data_root)
         else shared.ntrex_lang_evals(lang, data_root))
  for e in out.values():
    e.measures = tuple(dict.fromkeys(shared.MEASURES + MEASURES))
  return out


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", langs="", rates="", losses="",
                          seeds=0, steps=0, model="", side="foreign", data_root="", cache_dir="")
  scale = SCALE[shared.check_scale(args.scale)]
  langs = shared.split_list(args.langs or scale["langs"])
  rates = shared.split_list(args.rates or scale["rates"], float)
  losses = shared.split_list(args.losses or scale["losses"])
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  model = args.model or scale["model"]
  root = args.data_root
  if any(not 0 <= r < 1 for r in rates):
    raise ValueError(f"rates must lie in [0, 1), got {rates}")
  if args.side not in ("foreign", "english"):
    raise ValueError(f"side= takes foreign or english, got {args.side!r}")
  for lang in langs:  # fail at planning time, not in the middle of a study
    if not is_afriqa(lang, root) and lang not in shared.LAREQA_CODES:
      raise ValueError(f"langs= takes AfriQA languages or NTREX codes with an XQuAD-R/MLQA-R "
                       f"language ({', '.join(shared.LAREQA_CODES)}), got {lang!r}")

  def train(v):
    return train_config(v["lang"], v["loss"], v["rate"], v["seed"], model=model, steps=steps,
                        side=args.side, data_root=root, cache_dir=args.cache_dir)

  def evals(v):
    return evals_for(v["lang"], root)

  def references(v):
    teacher = train_config(v["lang"], "ot", 0.0, 0, model=model, steps=steps,
                           data_root=root).teacher
    name = "teacher" if model == "tiny" else model
    return shared.reference_systems(teacher, name, oracle=is_afriqa(v["lang"], root))

  c = study.default_config()
  c.name = f"code_switch-{args.scale}"
  c.axes.lang = langs
  c.axes.rate = rates
  c.axes.loss = losses
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ("lang",)
  base = rates[0]
  c.compare = tuple((f"rate={r}", f"rate={base}") for r in rates[1:])
  c.measures = MEASURES
  c.plot.x = "rate"
  c.cache_dir = args.cache_dir
  return c
