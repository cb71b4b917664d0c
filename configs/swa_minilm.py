"""English-teacher setting: distil all-MiniLM-L6-v2 into a query encoder for an AfriQA language.

    python train.py --config configs/swa_minilm.py --workdir runs/minilm-optical
    python train.py --config configs/swa_minilm.py:hau --workdir runs/hau      # another language
    python train.py --config configs/swa_minilm.py:swa,tune --workdir runs/t  # dev held out for tuning
    python train.py --config configs/swa_minilm.py --workdir runs/minilm-sent --config.loss.loss=sentence

Teacher: all-MiniLM-L6-v2 (English retriever, mean pooling), frozen. Student: a copy of it.
Bitext: AfriQA train/dev questions with their English translations + NTREX (see
`optical_jax.config.bitext_sources`), test queries excluded. Offline: weights come from
the asset cache (`python -m optical_jax.assets fetch`).
"""

from optical_jax.config import base_config, parse_arg, set_distill_data
from optical_jax.models import model_spec


def minilm_spec():
  return model_spec(weights="hf", path="asset:minilm", tokenizer="asset:minilm/tokenizer.json",
                    query_max_len=64, doc_max_len=256, pooling="mean", normalize=True,
                    scoring="dense")


def get_config(arg: str = "swa"):
  lang, flags = parse_arg(arg)
  c = base_config()
  c.lang = lang
  c.teacher = minilm_spec()
  c.student = minilm_spec()
  set_distill_data(c, lang, flags)
  c.data.global_batch = 32
  c.data.buckets = (16, 32, 64)
  # Tuned on held-out bitext (`:swa,tune`, val_p@1): 3e-4 beat 1e-4 for the sentence
  # and OT+sentence losses; 150 steps = 2 epochs of the shipped bitext.
  c.optim.lr = 3e-4
  c.optim.warmup_steps = 30
  c.train.steps = 150
  c.train.checkpoint_every = 50
  return c
