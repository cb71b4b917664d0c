"""Study (e): how backbones compare as OPTICAL students (XLM-R + OT vs mBERT vs LaBSE), sentence vs OT.

    python study.py --config configs/studies/backbones.py:smoke --workdir /tmp/bb  # tiny models (tests)
    python study.py --config configs/studies/backbones.py:cpu --workdir runs/bb    # e5, MiniLM, random e5
    python study.py --config configs/studies/backbones.py --workdir W --shard=$I/$N  # full (online), then
    python study.py --config configs/studies/backbones.py --workdir W --aggregate

Grid: lang x backbone x loss {sentence, ot} x seed (run seed by seed).

Design: each backbone family distils from its own English teacher, and the student
starts as a copy of it (OPTICAL's setting: the student is initialised from a
teacher-compatible model, so at step 0 foreign queries already land in the teacher's
space and the loss only has to close the cross-lingual gap). The teacher is the backbone
itself on English text (frozen), as in `configs/swa_e5.py`; passages are encoded by it.
The alternative, one fixed English teacher for every backbone, would make each student
live in that teacher's space: different sizes and vocabularies need a freshly
initialised projection head, so the comparison would measure how fast a random head is
learnt more than the backbone. A cell therefore scores a whole backbone system; the
per-backbone references separate the two parts: `<backbone>-zeroshot` (the student
before training on foreign queries: cross-lingual transfer for free) and
`<backbone>-oracle` (the teacher on the English translations: what distillation can at
most reach with this backbone's English retrieval). Raw masked-LM backbones (XLM-R base,
mBERT) are weak English retrievers, so their oracle is low; the paper's teachers are
such backbones fine-tuned for English retrieval first (`configs/teacher_minilm.py` shows
teacher mode: train one per backbone and give its export as teacher and student,
`models.export_spec(DIR)`, in a copy of this file).

Backbones (`configs/common.py` presets):
  e5          multilingual-e5-small (offline, 4-bit file), the `configs/swa_e5.py` recipe
  minilm      all-MiniLM-L6-v2 (offline): English-only pretraining, the
              `configs/swa_minilm.py` recipe
  random-e5   the control: teacher e5, student e5-small's architecture and tokenizer with
              random weights (from the cell's seed) and the e5 recipe unchanged, so only
              the initialisation differs from `e5`
  xlmr-base, mbert, labse   hub names (online users): mean pooling for XLM-R and mBERT,
              LaBSE's [CLS] -> pooler (dense + tanh) -> L2; the e5 recipe (OT epsilon
              0.005, word embeddings frozen) at lr 2e-5 for these 768-d encoders (untuned)
  tiny, tiny-pooler   smoke runs: tiny random encoders, mean pooling / LaBSE-style pooler
Every cell is evaluated on the language's AfriQA-CLIR test, its bitext-retrieval set
(Tatoeba swa, FLORES-200 hau/zul) and XQuAD-R (a question in another language finds its
English answer sentence: does distilling one language keep or lose the others?) by P@1,
P@5, R@10, nDCG@10.

MTOP, the benchmark researchers name for (e), is intent/domain classification (MTEB's
MTOPIntentClassification, MTOPDomainClassification: a classifier on frozen sentence
embeddings), which this retrieval evaluator (queries ranking a corpus) cannot express.
The exported students are sentence-transformers models, so online users can run them
through the `mteb` package (`mteb.get_tasks(tasks=['MTOPIntentClassification'])`).

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny + tiny-pooler, swa, 1 seed, 4 steps; XQuAD-R el (tests)
  cpu     e5, minilm, random-e5, swa, 1 seed, 60 steps of 32 pairs; XQuAD-R el. Estimate
          for 2 idle CPU cores from measured step times (MiniLM 1.6 s/step, e5 3.6 s):
          training 2 x (3.6 + 1.6 + 3.6) = 18 min, passages encoded once per teacher
          (e5 about 9 min for AfriQA's 5,413, MiniLM about 3), queries and the small
          XQuAD-R / Tatoeba corpora about 1 min per cell: 40-45 min in all; measured 20 min
          with the AfriQA passages already in the embedding cache (docs/studies/backbones_cpu/)
  full    xlmr-base, mbert, labse, e5, swa+hau+yor+zul, 3 seeds, 1000 steps; XQuAD-R
          el+hi+tr+th: for GPU/TPU (`--shard=i/n`, then `--aggregate`)
Keys overriding the scale: langs=swa+hau, backbones=e5+labse, losses=sentence+ot, seeds=N,
steps=N, xquad=el+hi (XQuAD-R languages, `none` for none), data_root=DIR, cache_dir=DIR.
"""

from __future__ import annotations

from configs import common
from configs.studies import shared
from optical_jax import evaluator, study

SCALE = {
    "smoke": dict(langs="swa", backbones="tiny+tiny-pooler", losses="sentence+ot", seeds=1,
                  steps=4, xquad="el"),
    "cpu": dict(langs="swa", backbones="e5+minilm+random-e5", losses="sentence+ot", seeds=1,
                steps=60, xquad="el"),
    "full": dict(langs="swa+hau+yor+zul", backbones="xlmr-base+mbert+labse+e5",
                 losses="sentence+ot", seeds=3, steps=1000, xquad="el+hi+tr+th"),
}
TINY = ("tiny", "tiny-pooler")
BACKBONES = TINY + ("e5", "minilm", "random-e5") + tuple(common.HUB_PRESETS)
HUB_LR = 2e-5


def base_config(backbone: str, lang: str, data_root: str = ""):
  """The trainer config of `backbone` on `lang` before the cell's loss, seed and steps."""
  arg = f"{lang},data_root={data_root}" if data_root else lang
  if backbone in TINY:
    from configs import tiny  # pylint: disable=g-import-not-at-top
    c = tiny.get_config(f"data_root={data_root}" if data_root else "")
    c.lang = lang
    c.data.bitext.sources = common.bitext_sources(lang, data_root=data_root)
    if backbone == "tiny-pooler":
      c.teacher.pooling = c.student.pooling = "pooler"
    return c
  if backbone == "minilm":
    from configs import swa_minilm  # pylint: disable=g-import-not-at-top
    c = swa_minilm.get_config(arg)
  else:
    from configs import swa_e5  # pylint: disable=g-import-not-at-top
    c = swa_e5.get_config(arg)  # the e5 recipe: OT epsilon 0.005, word embeddings frozen
    if backbone == "random-e5":
      c.student = common.random_e5()
    elif backbone in common.HUB_PRESETS:
      c.teacher = common.HUB_PRESETS[backbone]()
      c.student = common.HUB_PRESETS[backbone]()
      c.optim.lr = HUB_LR
    elif backbone != "e5":
      raise ValueError(f"backbones= takes {', '.join(BACKBONES)}, got {backbone!r}")
  c.train.log_every = 10
  return c


def train_config(lang: str, backbone: str, loss: str, seed: int, *, steps: int,
                 data_root: str = ""):
  """The trainer config of one cell."""
  c = base_config(backbone, lang, data_root)
  c.loss.loss = loss
  c.seed = int(seed)
  return shared.set_budget(c, steps)


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", langs="", backbones="", losses="",
                          seeds=0, steps=0, xquad="", data_root="", cache_dir="")
  scale = SCALE[shared.check_scale(args.scale)]
  langs = shared.split_list(args.langs or scale["langs"])
  backbones = shared.split_list(args.backbones or scale["backbones"])
  losses = shared.split_list(args.losses or scale["losses"])
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  xquad = shared.split_list(args.xquad or scale["xquad"])
  xquad = () if xquad == ("none",) else xquad
  root = args.data_root
  unknown = [b for b in backbones if b not in BACKBONES]
  if unknown:
    raise ValueError(f"backbones= takes {', '.join(BACKBONES)}, got {unknown}")

  def train(v):
    return train_config(v["lang"], v["backbone"], v["loss"], v["seed"], steps=steps,
                        data_root=root)

  def evals(v):
    out = shared.language_evals(v["lang"], root)
    out.update(shared.lareqa_evals("xquad-r", xquad, root))
    return out

  def references(v):
    c = base_config(v["backbone"], v["lang"], root)
    name = v["backbone"]
    return {f"{name}-zeroshot": evaluator.system(c.student, doc_model=c.teacher),
            f"{name}-oracle": evaluator.system(c.teacher, query_field="text_en")}

  c = study.default_config()
  c.name = f"backbones-{args.scale}"
  c.axes.lang = langs
  c.axes.backbone = backbones
  c.axes.loss = losses   # after backbone: a backbone's two losses run back to back
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ("lang", "backbone")
  # OT against sentence-level within each backbone; the first backbone against each other.
  c.compare = ((("loss=ot", "loss=sentence"),) if {"ot", "sentence"} <= set(losses) else ()) + \
      tuple((f"backbone={backbones[0]}", f"backbone={b}") for b in backbones[1:])
  c.measures = ("P@1", "P@5", "R@10", "nDCG@10")
  c.plot.x = "backbone"
  c.cache_dir = args.cache_dir
  return c
