"""Late-interaction English teacher: an encoder + a 128-d head trained as a ColBERT (MaxSim).

    python train.py --config configs/teacher_colbert.py --workdir runs/teacher-colbert
    python train.py --config configs/teacher_colbert.py:backbone=e5 --workdir runs/teacher-colbert-e5
    python eval.py --config configs/eval_afriqa.py:swa,models=minilm,baselines=minilm-oracle,run.colbert=runs/teacher-colbert --out outputs/eval_colbert --config.scoring=maxsim

Teacher mode as `configs/teacher_minilm.py` (contrastive cross-entropy, in-batch
negatives gathered across devices, `afriqa-clir/en-train.jsonl`), but every token goes
through a fresh linear 128-d projection head and query/passage scores are ColBERT MaxSim
over L2-normalised token vectors. The head starts random, so this trains longer and at a
higher rate than the dense teacher. The export (WORKDIR/teacher) is the teacher of
`configs/colbert_minilm.py` (same `backbone=`).

`backbone=minilm` (default): all-MiniLM-L6-v2, an English encoder. `backbone=e5`:
multilingual-e5-small (its 'query: ' / 'passage: ' prefixes; word embeddings frozen:
trained on English alone, AdamW's weight decay would still shrink every other language's
token rows): OPTICAL's own premise, a monolingual (English) retrieval model
on a multilingual encoder, whose students start from a model that already reads the
foreign language.
"""

from configs import common, teacher_minilm

BACKBONES = ("minilm", "e5")


def get_config(arg: str = ""):
  args = common.parse_arg(arg, data_root="", backbone="minilm")
  if args.backbone not in BACKBONES:
    raise ValueError(f"backbone= takes {', '.join(BACKBONES)}, got {args.backbone!r}")
  c = teacher_minilm.get_config(f"data_root={args.data_root}" if args.data_root else "")
  if args.backbone == "e5":
    c.teacher = common.e5(query_max_len=32, doc_max_len=256)
    c.optim.freeze = ("word_embeddings",)
  c.teacher.scoring = "maxsim"
  c.teacher.head_dim = 128
  c.teacher.normalize = True
  c.optim.lr = 3e-5
  c.train.steps = 400
  return c
