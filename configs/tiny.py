"""Tiny random encoders on a slice of the shipped bitext: trains in seconds (tests, smoke runs).

    python train.py --config configs/tiny.py --workdir /tmp/tiny
"""

from optical_jax.config import base_config, data_path

TINY_ARCH = dict(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                 intermediate_size=64, max_position_embeddings=64, hidden_dropout=0.0,
                 attention_dropout=0.0)


def get_config():
  c = base_config()
  for side in (c.teacher, c.student):
    side.weights = "random"
    side.tokenizer = "asset:minilm/tokenizer.json"
    side.arch.update(TINY_ARCH)
    side.query_max_len = 32
    side.doc_max_len = 64
  c.data.bitext.sources = [
      dict(type="lines", foreign=data_path("ntrex", "swa.txt"),
           english=data_path("ntrex", "eng.txt"), take=64, label="ntrex"),
      dict(type="jsonl", path=data_path("afriqa-clir", "queries", "swa.train.jsonl"),
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
