"""Issue 14's protocol comparison: does token-level OT (or a variant) beat sentence-level distillation?

    python study.py --config configs/studies/ot_variants.py:smoke --workdir /tmp/otv  # tiny models
    python study.py --config configs/studies/ot_variants.py:cpu --workdir runs/otv    # MiniLM, 2 CPU cores
    python study.py --config configs/studies/ot_variants.py --workdir W --shard=$I/$N  # full, then --aggregate

Grid: setting x lang x loss arm x seed. A setting is a teacher/student pair:
  minilm   all-MiniLM-L6-v2 -> a copy of it, dense mean-pooled retrieval (`configs/swa_minilm.py`)
  e5       multilingual-e5-small -> a copy of it, dense (`configs/swa_e5.py`: OT eps 0.005)
  colbert  the ColBERT-style MiniLM teacher (all-MiniLM-L6-v2 + 128-d head, MaxSim;
           train it first with `configs/teacher_colbert.py`, `teacher=DIR` points at its
           export) -> a copy of it, evaluated with MaxSim (`configs/colbert_minilm.py`)
  colbert-e5  the same on multilingual-e5-small (`configs/teacher_colbert.py:backbone=e5`,
           `teacher_e5=DIR`): an English late-interaction retriever on a multilingual
           encoder, OPTICAL's own premise
Loss arms (`ARMS`): sentence-level distillation, plain OT, the in-batch ranking term
alone (the best loss without OT in the issue's probe), OT + ranking (`ot-ranking`), the debiased
Sinkhorn divergence, barycentric token targets, semi-relaxed OT (tau_b 0.5), and OT with
a relative epsilon, and candidates for selection stages: the ranking family's
temperature 0.02 and weight 0.5 / 2, OT + ranking's epsilon halved / doubled (relative to
the setting's), and OT + ranking with trained word embeddings (dense or row-sparse AdamW;
row-sparse is the e5 setting's default since its second selection stage), and the ranking term on MaxSim rows (`ranking-maxsim`,
`ot-ranking-maxsim`: PLAID-X's late-interaction distillation, for the ColBERT settings). The arms use the settings' defaults; choose
among them on dev data only, with the selection stage (`select`, below). Every cell of
the test stage evaluates its language's AfriQA-CLIR test; the comparisons set each arm
against sentence-level distillation and each OT arm against the ranking term alone
(`ot-ranking-maxsim` against `ranking-maxsim` when both run), per
language and pooled over the languages (`pool_axes`), with the (language, seed) runs as
units and Holm-adjusted p-values (`optical_jax.report`): an OT-based loss whose adjusted
pooled run-level test beats both is the evidence to look for. The training logs keep
what drives the differences (plan entropy, mean cost, converged fraction, plan mass).

Scales (the argument `SCALE[,key=value...]`):
  smoke   tiny random encoders, swa, arms sentence / ot / ot-ranking, 1 seed, 4 steps (tests)
  cpu     minilm, swa+hau, arms sentence / ot / ranking / ot-ranking, 2 seeds, 100 steps
          (measured: 36 min on 2 CPU cores with the swa/hau passages in the embedding
          cache; `langs=swa+hau+yor+zul,arms=...+divergence` took 54 min more;
          `settings=e5,langs=swa+hau+yor+zul,arms=sentence+ranking+ot-ranking`: 24 e5
          cells of 3.5-4 min with the float16 teacher-token cache;
          `settings=colbert,langs=swa+hau+yor+zul,arms=sentence+ranking+ot-ranking+barycentric`:
          32 cells of 2.5-3.5 min, about a minute of each the MaxSim search; docs/studies/)
  full    minilm + e5 + colbert, swa+hau+yor+zul, every arm, 3 seeds, 1000 steps (GPU/TPU)
Keys: settings=minilm+e5, langs=swa+hau, arms=sentence+ot, seeds=N, steps=N,
teacher=DIR / teacher_e5=DIR (the ColBERT teacher exports), data_root=DIR, cache_dir=DIR.

Selection (`select`, issue 24's protocol): every arm of `arms=` is a candidate; a
selection stage trains each with the dev questions held out of the bitext (`tune`) on
`select_langs` (default hau+zul, the languages with dev qrels) x `select_seeds` (1) and
scores it by nDCG@10 on their dev qrels; the test stage then runs the pick and `keep`
(default sentence+ranking+ot+ot-ranking) on `langs` x `seeds`, scored on test once.
`WORKDIR/selection.json` and `selection.md` record the choice and the files it read:

    python study.py --config "configs/studies/ot_variants.py:cpu,settings=e5,select,\
      langs=swa+hau+yor+zul,seeds=5,arms=sentence+ranking+ot+ot-ranking+divergence" --workdir W
"""

from __future__ import annotations

from configs import common
from configs.studies import shared
from optical_jax import study

# Loss arm -> trainer config overrides (dotted keys), on top of the setting's config.
ARMS = {
    "sentence": {"loss.loss": "sentence"},
    "ot": {"loss.loss": "ot"},
    "ranking": {"loss.loss": "ranking"},
    "ot-ranking": {"loss.loss": "ot+ranking"},
    "divergence": {"loss.loss": "divergence"},
    "barycentric": {"loss.loss": "barycentric"},
    "ot-semi": {"loss.loss": "ot", "loss.ot.tau_b": 0.5},
    "ot-relative": {"loss.loss": "ot", "loss.ot.relative_epsilon": True, "loss.ot.epsilon": 0.1},
    # Hyper-parameter candidates of the ranking family (selection stages).
    "ranking-t0.02": {"loss.loss": "ranking", "loss.ranking_temperature": 0.02},
    "ot-ranking-t0.02": {"loss.loss": "ot+ranking", "loss.ranking_temperature": 0.02},
    "ot-ranking-w0.5": {"loss.loss": "ot+ranking", "loss.ranking_weight": 0.5},
    "ot-ranking-w2": {"loss.loss": "ot+ranking", "loss.ranking_weight": 2.0},
    # The PLAID-X-style ranking term on MaxSim rows (token vectors) instead of pooled
    # cosines: for the late-interaction (ColBERT) settings.
    "ranking-maxsim": {"loss.loss": "ranking", "loss.ranking_scoring": "maxsim"},
    "ot-ranking-maxsim": {"loss.loss": "ot+ranking", "loss.ranking_scoring": "maxsim"},
    # Epsilon relative to the setting's own (e5 0.005, MiniLM 0.05): a value that is a
    # function is applied to the setting's value.
    "ot-ranking-eps-half": {"loss.loss": "ot+ranking", "loss.ot.epsilon": lambda e: e / 2},
    "ot-ranking-eps-double": {"loss.loss": "ot+ranking", "loss.ot.epsilon": lambda e: e * 2},
    # Word-embedding update candidates (issue 25): trained with dense AdamW, or row-sparse
    # (lazy AdamW on the batch's rows). The e5 setting froze them until its second
    # selection stage (it ships row-sparse since), so that page's `ot-ranking` cells ran
    # frozen (their records hold the resolved configs); that arm now equals
    # `ot-ranking-emb-sparse` there.
    "ot-ranking-emb-dense": {"loss.loss": "ot+ranking", "optim.freeze": ()},
    "ot-ranking-emb-sparse": {"loss.loss": "ot+ranking", "optim.freeze": (),
                              "optim.sparse_embeddings": True},
}
OT_ARMS = ("ot", "ot-ranking", "divergence", "barycentric", "ot-semi", "ot-relative",
           "ot-ranking-t0.02", "ot-ranking-w0.5", "ot-ranking-w2", "ot-ranking-eps-half",
           "ot-ranking-eps-double", "ot-ranking-emb-dense", "ot-ranking-emb-sparse",
           "ot-ranking-maxsim")
# The loss families (the full scale's arms; the hyper-parameter arms are for selection).
LOSS_ARMS = ("sentence", "ot", "ranking", "ot-ranking", "divergence", "barycentric", "ot-semi",
             "ot-relative")
SETTINGS = ("tiny", "minilm", "e5", "colbert", "colbert-e5")
COLBERT = ("colbert", "colbert-e5")   # MaxSim settings

SCALE = {
    "smoke": dict(settings="tiny", langs="swa", arms="sentence+ot+ot-ranking", seeds=1, steps=4,
                select_langs="hau", keep="sentence"),
    "cpu": dict(settings="minilm", langs="swa+hau", arms="sentence+ot+ranking+ot-ranking",
                seeds=2, steps=100),
    "full": dict(settings="minilm+e5+colbert", langs="swa+hau+yor+zul", arms="+".join(LOSS_ARMS),
                 seeds=3, steps=1000),
}


def split_arms(text: str):
  """'sentence+ot+ot-ranking' -> ('sentence', 'ot', 'ot-ranking'), names checked."""
  arms = shared.split_list(text)
  for a in arms:
    if a not in ARMS:
      raise ValueError(f"unknown loss arm {a!r}; known: {', '.join(ARMS)}")
  return arms


def setting_config(setting: str, lang: str, *, teacher_dir: str = "", data_root: str = "",
                   tune: bool = False):
  """The setting's trainer config for `lang` (before the arm's overrides); `tune`: the
  language's AfriQA dev questions held out of the bitext (the selection stage)."""
  if setting in COLBERT:
    from configs import colbert_minilm  # pylint: disable=g-import-not-at-top
    arg = f"{lang},data_root={data_root}" if data_root else lang
    arg += ",tune" if tune else ""
    arg += ",backbone=e5" if setting == "colbert-e5" else ""
    return colbert_minilm.get_config(arg + (f",teacher={teacher_dir}" if teacher_dir else ""))
  if setting not in SETTINGS:
    raise ValueError(f"settings= takes {', '.join(SETTINGS)}, got {setting!r}")
  c = shared.student_config(setting, lang, data_root, tune=tune)
  c.lang = lang
  return c


def train_config(setting: str, lang: str, arm: str, seed: int, *, steps: int,
                 teacher_dir: str = "", data_root: str = "", tune: bool = False):
  c = setting_config(setting, lang, teacher_dir=teacher_dir, data_root=data_root, tune=tune)
  for key, value in ARMS[arm].items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value(node[last]) if callable(value) else value
  c.seed = int(seed)
  return shared.set_budget(c, steps, tiny=(setting == "tiny"))


def get_config(arg: str = "full"):
  args = common.parse_arg(arg, first="scale", scale="full", settings="", langs="", arms="",
                          seeds=0, steps=0, teacher="", teacher_e5="", data_root="", cache_dir="",
                          select=False, keep="", select_langs="", select_seeds=0)
  scale = SCALE[shared.check_scale(args.scale)]
  settings = shared.split_list(args.settings or scale["settings"])
  langs = shared.split_list(args.langs or scale["langs"])
  arms = split_arms(args.arms or scale["arms"])
  seeds = tuple(range(args.seeds or scale["seeds"]))
  steps = args.steps or scale["steps"]
  root = args.data_root
  for s in settings:
    if s not in SETTINGS:
      raise ValueError(f"settings= takes {', '.join(SETTINGS)}, got {s!r}")

  def teacher_of(setting):
    return args.teacher_e5 if setting == "colbert-e5" else args.teacher

  def train(v):
    return train_config(v["setting"], v["lang"], v["loss"], v["seed"], steps=steps,
                        teacher_dir=teacher_of(v["setting"]), data_root=root)

  def evals(v):
    e = shared.afriqa_eval(v["lang"], root)
    if v["setting"] in COLBERT:
      e.scoring = "maxsim"
    return {f"afriqa-{v['lang']}": e}

  def references(v):
    teacher = setting_config(v["setting"], v["lang"], teacher_dir=teacher_of(v["setting"]),
                             data_root=root).teacher
    name = "teacher" if v["setting"] == "tiny" else v["setting"]
    return shared.reference_systems(teacher, name)

  c = study.default_config()
  c.name = f"ot_variants-{args.scale}"
  c.axes.setting = settings
  c.axes.lang = langs
  c.axes.loss = arms
  c.axes.seed = seeds
  c.train = train
  c.evals = evals
  c.references = references
  c.reference_axes = ("setting", "lang")
  pairs = [(f"loss={a}", "loss=sentence") for a in arms if a != "sentence" and "sentence" in arms]
  # Each OT arm against the ranking term alone: for ot-ranking-maxsim, ranking-maxsim when
  # it runs (the README's question counts that pair, not ot-ranking-maxsim vs ranking).
  for a in arms:
    ranking = "ranking-maxsim" if a.endswith("-maxsim") and "ranking-maxsim" in arms else "ranking"
    if a in OT_ARMS and ranking in arms:
      pairs.append((f"loss={a}", f"loss={ranking}"))
  c.compare = tuple(pairs)
  c.pool_axes = ("lang",) if len(langs) > 1 else ()
  c.measures = ("nDCG@10", "R@10", "P@5")
  c.plot.x = "loss"
  c.cache_dir = args.cache_dir
  if args.select:
    set_selection(c, args, steps)
  return c


def set_selection(c, args, steps: int) -> None:
  """The selection stage of `select`: every arm of `arms=` is a candidate, trained with
  the languages' AfriQA dev questions held out of the bitext (`tune`) and scored by
  nDCG@10 on the dev qrels of `select_langs` (default the scale's; hau and zul have dev
  qrels); the test stage runs the pick and the `keep` arms (default
  sentence+ranking+ot+ot-ranking: zero-shot-free references of the comparison)."""
  scale = SCALE[args.scale]
  langs = shared.split_list(args.select_langs or scale.get("select_langs", "hau+zul"))
  seeds = tuple(range(args.select_seeds or scale.get("select_seeds", 1)))
  keep = split_arms(args.keep or scale.get("keep", "sentence+ranking+ot+ot-ranking"))
  keep = tuple(a for a in keep if a in c.axes.loss)
  root = args.data_root

  def train(v):
    teacher = args.teacher_e5 if v["setting"] == "colbert-e5" else args.teacher
    return train_config(v["setting"], v["lang"], v["loss"], v["seed"], steps=steps,
                        teacher_dir=teacher, data_root=root, tune=True)

  def evals(v):
    e = shared.afriqa_eval(v["lang"], root, split="dev")
    if v["setting"] in COLBERT:
      e.scoring = "maxsim"
    return {f"afriqa-{v['lang']}-dev": e}

  c.select.axis = "loss"
  c.select.measure = "nDCG@10"
  c.select.keep = keep
  c.select.axes.lang = langs
  c.select.axes.seed = seeds
  c.select.train = train
  c.select.evals = evals
