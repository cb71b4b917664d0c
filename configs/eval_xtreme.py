"""XTREME-R-style retrieval beside AfriQA: XQuAD-R, MLQA-R (LAReQA) and bitext retrieval (Tatoeba, FLORES-200).

    python eval.py --config configs/eval_xtreme.py:xquad-r,lang=el --out /tmp/xquad_el
    python eval.py --config configs/eval_xtreme.py:mlqa-r,lang=hi,models=e5 --out /tmp/mlqa_hi
    python eval.py --config configs/eval_xtreme.py:flores,lang=zul,run.optical=runs/zul --out /tmp/flores_zul
    python eval.py --config configs/eval_xtreme.py:tatoeba,lang=swa,run.optical=runs/minilm-optical --out /tmp/t

Tasks (the first item of the argument; `optical_jax.data.xtreme` reads them):
  xquad-r, mlqa-r  a question in `lang` retrieves the English sentence holding its answer
                   among all English sentences of the set (`en.json`); XQuAD-R: ar de el
                   en es hi ru th tr vi zh (1,190 questions, 1,180 sentences), MLQA-R: ar
                   de en es hi vi zh (~510 questions, 6,262 sentences)
  tatoeba          a `lang` sentence retrieves its English translation among the set's
                   English sentences (LASER codes; swa is read as swh)
  flores           the same on FLORES-200 devtest (hau, nso, tso, zul; the native-speaker
                   corrected side unless `original`)
Keys: lang=CODE, models=minilm+e5 (baseline families: zero-shot on `text`, oracle on the
English text `text_en`), baselines=A+B, run.NAME=WORKDIR (a student trained by
train.py, as in `configs/eval_afriqa.py`), original, data_root=DIR. Measures: P@1 (the
XTREME accuracy), P@5, R@10, nDCG@10 and AP. Data locations: `configs/common.py`.
"""

from configs import common
from configs import eval_afriqa
from optical_jax import evaluator

TASKS = ("xquad-r", "mlqa-r", "tatoeba", "flores")


def get_config(arg="xquad-r"):
  args = common.parse_arg(arg, first="task", task="xquad-r", lang="", models="minilm+e5",
                          baselines="", original=False, data_root="", run={})
  if args.task not in TASKS:
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {args.task!r}")
  root = args.data_root
  c = evaluator.default_config()
  if args.task in ("xquad-r", "mlqa-r"):
    c.dataset.kind = "lareqa"
    c.dataset.path = common.xquad_r_dir(root) if args.task == "xquad-r" else common.mlqa_r_dir(root)
    c.dataset.lang = args.lang or ("el" if args.task == "xquad-r" else "hi")
  else:
    lang = args.lang or ("swa" if args.task == "tatoeba" else "zul")
    if args.task == "tatoeba":
      foreign, english = common.tatoeba_files(lang, root)
    else:
      foreign, english = common.flores_files(lang, corrected=not args.original, data_root=root)
    c.dataset.kind = "bitext"
    c.dataset.queries, c.dataset.corpus = foreign, english
  families = [f for f in args.models.split("+") if f]
  unknown = sorted(set(families) - set(eval_afriqa.FAMILIES))
  if unknown:
    raise ValueError(f"models= takes {' and/or '.join(eval_afriqa.FAMILIES)} (joined by +), "
                     f"got {unknown}")
  for family in families:
    c.systems[f"{family}-zeroshot"] = evaluator.system(eval_afriqa.FAMILIES[family]())
    c.systems[f"{family}-oracle"] = evaluator.system(eval_afriqa.FAMILIES[family](),
                                                     query_field="text_en")
  for name, workdir in args.run.items():
    c.systems[name] = eval_afriqa.student_system(workdir)
  baselines = [b for b in args.baselines.split("+") if b]
  c.baselines = tuple(baselines) or tuple(f"{f}-zeroshot" for f in families)
  c.measures = ("P@1", "P@5", "R@10", "nDCG@10", "AP")
  c.top_k = 100
  return c
