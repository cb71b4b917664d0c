"""Tiny random encoders on a slice of the shipped bitext: trains in seconds (tests, smoke runs).

    python train.py --config configs/tiny.py --workdir /tmp/tiny
"""

import os

from configs import common
from optical_jax.config import base_config

TINY_ARCH = dict(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                 intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0,
                 attention_dropout=0.0)


def get_config(arg: str = ""):
  args = common.parse_arg(arg, data_root="")
  ntrex = common.locate("ntrex", data_root=args.data_root)
  afriqa = common.afriqa_dir("swa", args.data_root)
  c = base_config()
  c.lang = "swa"
  for side in (c.teacher, c.student):
    side.weights = "random"
    side.tokenizer = "asset:minilm/tokenizer.json"
    side.arch.update(TINY_ARCH)
    side.query_max_len = 32
    side.doc_max_len = 64
  c.data.bitext.sources = [
      dict(type="lines", foreign=os.path.join(ntrex, "swa.txt"),
           english=os.path.join(ntrex, "eng.txt"), take=64, label="ntrex"),
      dict(type="jsonl", path=os.path.join(afriqa, "queries", "swa.train.jsonl"),
           take=32, label="afriqa"),
  ]
  c.data.global_batch = 8
  c.data.buckets = (16, 32)
  c.loss.ot.max_iterations = 50
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2
  c.train.steps = 12
  c.train.log_every = 1
  c.train.checkpoint_every = 4
  c.train.progress = False
  return c
