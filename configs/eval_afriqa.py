"""AfriQA-CLIR test: zero-shot and oracle-translation baselines over the full passage pool.

    python eval.py --config configs/eval_afriqa.py --out /tmp/eval_afriqa
    python eval.py --config configs/eval_afriqa.py:swa,run.optical=/tmp/swa_run --out /tmp/eval_student
    python eval.py --config configs/eval_afriqa.py:swa,models=minilm --out /tmp/e --config.scoring=maxsim

The argument is `LANG[,key=value...]` (unknown keys stop the program with one line):
  LANG              picks `queries/LANG.test.jsonl` and `qrels/LANG.test.tsv`
  data=DIR          another copy of the AfriQA-CLIR layout (default: the first data root
                    holding LANG, see `configs/common.py`)
  data_root=DIR     the data root to search instead of the defaults
  split=SPLIT       another split (hau and zul have dev qrels for tuning)
  models=A+B        baseline families: minilm, e5 or minilm+e5 (default)
  baselines=A+B     the systems to test against (default: the zero-shot rows)
  scoring=maxsim    late interaction (MaxSim over L2-normalised token embeddings) for
                    every system; the same as `--config.scoring=maxsim`
  run.NAME=WORKDIR  adds a system NAME trained by `train.py` (`student_system`): a
                    distilled student (WORKDIR/student encodes the queries, the teacher it
                    was trained against the passages), or a teacher-mode run
                    (WORKDIR/teacher encodes `text_en` and the passages)

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

from configs import common
from optical_jax import evaluator, models, paths

# Baseline families: the retrievers as evaluated (e5 reads queries up to 512 tokens).
FAMILIES = {"minilm": common.minilm, "e5": lambda: common.e5(query_max_len=512)}


def student_system(workdir, teacher=None):
  """A distilled student: queries through WORKDIR/student, passages through its teacher.

  The teacher is the one recorded in the export by train.py (falling back to MiniLM).
  A teacher-mode workdir (WORKDIR/teacher, no student) is an English retriever: it
  encodes the English translations (`text_en`) and the passages, to compare with the
  `*-oracle` row of the model it was trained from.
  """
  export = paths.join(workdir, "student")
  trained_teacher = paths.join(workdir, "teacher")
  if not paths.isdir(export) and paths.isdir(trained_teacher):
    return evaluator.system(models.export_spec(trained_teacher), query_field="text_en")
  if teacher is None:
    teacher = models.export_teacher_spec(export) or common.minilm()
  return evaluator.system(models.export_spec(export), doc_model=teacher)


def get_config(arg="swa"):
  args = common.parse_arg(arg, first="lang", lang="swa", data="", data_root="", split="test",
                          models="minilm+e5", baselines="", scoring="", run={})
  lang = args.lang
  data = args.data or common.afriqa_dir(lang, args.data_root)
  c = evaluator.default_config()
  c.dataset.corpus = os.path.join(data, "corpus.jsonl")
  c.dataset.queries = os.path.join(data, "queries", f"{lang}.{args.split}.jsonl")
  c.dataset.qrels = os.path.join(data, "qrels", f"{lang}.{args.split}.tsv")
  c.dataset.query_field = "text"
  families = [f for f in args.models.split("+") if f]
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise ValueError(f"models= takes {' and/or '.join(FAMILIES)} (joined by +), got {unknown}")
  for family in families:
    c.systems[f"{family}-zeroshot"] = evaluator.system(FAMILIES[family]())
    c.systems[f"{family}-oracle"] = evaluator.system(FAMILIES[family](), query_field="text_en")
  for name, workdir in args.run.items():
    c.systems[name] = student_system(workdir)
  c.scoring = args.scoring
  baselines = [b for b in args.baselines.split("+") if b]
  c.baselines = tuple(baselines) or tuple(f"{f}-zeroshot" for f in families)
  c.top_k = 100
  return c
