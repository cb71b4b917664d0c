"""Late-interaction setting: distil a ColBERT-style English teacher into a query encoder.

    python train.py --config configs/teacher_colbert.py --workdir runs/teacher-colbert   # first
    python train.py --config configs/colbert_minilm.py:swa,tune --workdir runs/colbert-ot
    python train.py --config configs/colbert_minilm.py:swa,teacher=DIR --workdir runs/c --config.loss.loss=barycentric
    python train.py --config configs/colbert_minilm.py:swa,backbone=e5 --workdir runs/c-e5  # after teacher_colbert.py:backbone=e5
    python eval.py --config configs/eval_afriqa.py:swa,models=minilm,run.colbert-ot=runs/colbert-ot --out outputs/eval_colbert_students --config.scoring=maxsim

Teacher: the exported ColBERT teacher (`teacher=DIR`, default
`runs/teacher-colbert/teacher`, or `runs/teacher-colbert-e5/teacher` with `backbone=e5`:
the encoder + 128-d head, MaxSim), frozen. Student: a copy of it (encoder and head). The
token-level losses compare the 128-d head outputs, exactly the vectors MaxSim scores. The
argument is `LANG[,tune][,mafand][,bitext=SPEC][,data_root=DIR][,teacher=DIR]
[,backbone=minilm|e5]` (`common.distill_args` plus the teacher directory and backbone).
Optimiser and OT settings are those of the backbone's dense config (`configs/swa_minilm.py`,
`configs/swa_e5.py`), untuned for late interaction.
"""

import os

from configs import common
from optical_jax.models import model_spec

DEFAULT_TEACHER = {"minilm": os.path.join("runs", "teacher-colbert", "teacher"),
                   "e5": os.path.join("runs", "teacher-colbert-e5", "teacher")}


def colbert_export(path: str, backbone: str = "minilm"):
  """A spec for an exported ColBERT teacher directory (read when the run loads it)."""
  prefixes = dict(query_prefix="query: ", doc_prefix="passage: ") if backbone == "e5" else {}
  return model_spec(weights="export", path=path, tokenizer=os.path.join(path, "tokenizer.json"),
                    query_max_len=32, doc_max_len=256, pooling="mean", normalize=True,
                    scoring="maxsim", head_dim=128, **prefixes)


def get_config(arg: str = "swa"):
  args = common.distill_args(arg, teacher="", backbone="minilm")
  if args.backbone not in DEFAULT_TEACHER:
    raise ValueError(f"backbone= takes {', '.join(DEFAULT_TEACHER)}, got {args.backbone!r}")
  teacher = args.teacher or DEFAULT_TEACHER[args.backbone]
  c = common.afriqa_distill(args, teacher=colbert_export(teacher, args.backbone),
                            student=colbert_export(teacher, args.backbone))
  # The backbone's dense config owns these (its selection stages chose them).
  from configs import swa_e5, swa_minilm  # pylint: disable=g-import-not-at-top
  dense = (swa_e5 if args.backbone == "e5" else swa_minilm).get_config(args.lang)
  c.optim.lr = dense.optim.lr
  c.optim.freeze = tuple(dense.optim.freeze)
  c.optim.sparse_embeddings = dense.optim.sparse_embeddings
  c.loss.ot.epsilon = dense.loss.ot.epsilon
  c.loss.ot.max_iterations = dense.loss.ot.max_iterations
  return c
