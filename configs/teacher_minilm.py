"""Teacher mode: English retrieval training of all-MiniLM-L6-v2 on AfriQA English questions.

    python train.py --config configs/teacher_minilm.py --workdir runs/teacher

Contrastive cross-entropy with in-batch negatives gathered across all devices (plus any
hard negatives in the data), dense mean-pooled scoring (`teacher.scoring='maxsim'` for
ColBERT-style late interaction, with e.g. `teacher.head_dim=128`). Data: the Tevatron
JSONL `afriqa-clir/en-train.jsonl` of the data roots (`../shared/data`; 3,030 English question / gold
passage pairs; pairs sharing a question or passage with any AfriQA test query were
removed upstream). The result is exported to WORKDIR/teacher; evaluate it on English
queries with `eval.py` (query field `text_en`). The published all-MiniLM-L6-v2 is
already a trained English retriever: distillation configs use it as is.
"""

from configs import common
from optical_jax.config import base_config


def get_config(arg: str = ""):
  args = common.parse_arg(arg, data_root="")
  c = base_config()
  c.mode = "teacher"
  c.lang = "en"
  c.teacher = common.minilm(query_max_len=32)
  path = common.locate("afriqa-clir", "en-train.jsonl", data_root=args.data_root)
  c.data.retrieval.sources = [dict(type="tevatron", path=path, label="afriqa-en")]
  c.data.global_batch = 32
  c.data.buckets = (32,)
  c.data.doc_buckets = (128, 256)
  c.loss.temperature = 0.05
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 20
  c.train.steps = 200
  c.train.checkpoint_every = 100
  return c
