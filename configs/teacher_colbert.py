"""Late-interaction English teacher: all-MiniLM-L6-v2 + a 128-d head trained as a ColBERT (MaxSim).

    python train.py --config configs/teacher_colbert.py --workdir runs/teacher-colbert
    python eval.py --config configs/eval_afriqa.py:swa,models=minilm,baselines=minilm-oracle,run.colbert=runs/teacher-colbert --out outputs/eval_colbert --config.scoring=maxsim

Teacher mode as `configs/teacher_minilm.py` (contrastive cross-entropy, in-batch
negatives gathered across devices, `afriqa-clir/en-train.jsonl`), but every token goes
through a fresh linear 128-d projection head and query/passage scores are ColBERT MaxSim
over L2-normalised token vectors. The head starts random, so this trains longer and at a
higher rate than the dense teacher. The export (WORKDIR/teacher) is the teacher of
`configs/colbert_minilm.py`. Issue 14 asks for its English (`text_en`) test numbers beside
MiniLM dense and MiniLM MaxSim: trained for 150 steps (`--config.train.steps=150`), it
scores nDCG@10 0.851 on AfriQA swa `text_en` (MiniLM MaxSim 0.865, dense 0.821; README).
"""

from configs import teacher_minilm


def get_config(arg: str = ""):
  c = teacher_minilm.get_config(arg)
  c.teacher.scoring = "maxsim"
  c.teacher.head_dim = 128
  c.teacher.normalize = True
  c.optim.lr = 3e-5
  c.train.steps = 400
  return c
