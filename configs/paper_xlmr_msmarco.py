"""Paper-scale recipe (users who are online, TPU pod or GPU cluster): the OPTICAL setting of the paper.

Step 1 — English teacher: a ColBERT-style late-interaction retriever on XLM-R, trained
on MS MARCO triples (query, positive, BM25 negative), in-batch negatives across all
devices:

    python train.py --config configs/paper_xlmr_msmarco.py:teacher --workdir /shared/teacher

Step 2 — OPTICAL distillation of a low-resource-language query encoder from bitext
(TFDS translation datasets, read with `tfds.data_source` from a prepared `data_dir`),
teacher frozen:

    python train.py --config configs/paper_xlmr_msmarco.py:distill --workdir /shared/optical \
        --config.student.path=/shared/teacher/teacher --config.teacher.path=/shared/teacher/teacher

Nothing here runs offline: `xlm-roberta-base` comes from the Hugging Face hub, MS MARCO
triples from a local TSV you download (`triples.train.small.tsv`), and the TFDS datasets
must be prepared under `data_dir` (`tfds build para_crawl/enmt` etc.). On a pod, set
`--config.distributed.initialize=True` (TPU VMs fill in the coordinator); each host reads
its own slice of every global batch; keep workdirs where every host sees them: a bucket
(`--workdir gs://BUCKET/optical`, docs/distributed.md) or a shared file system (`/shared`
above). Hyper-parameters
follow the paper where it states them and this project's documented defaults elsewhere
(`optical_jax/config.py`); the XLM-R preset is `configs/common.py`'s `colbert_xlmr`.
"""

import os

from configs import common
from optical_jax.config import base_config

MSMARCO_TRIPLES = os.environ.get("MSMARCO_TRIPLES", "data/msmarco/triples.train.small.tsv")
TFDS_DIR = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")


def get_config(arg: str = "distill"):
  stage = common.parse_arg(arg, first="stage", stage="distill").stage
  if stage not in ("teacher", "distill"):
    raise ValueError(f"argument must be 'teacher' or 'distill', got {stage!r}")
  c = base_config()
  c.distributed.initialize = True
  c.teacher = common.colbert_xlmr()
  c.data.global_batch = 512
  c.data.buckets = (32,)
  if stage == "teacher":
    c.mode = "teacher"
    c.data.retrieval.sources = [dict(type="triples", path=MSMARCO_TRIPLES, label="msmarco")]
    c.data.num_negatives = 1
    c.data.doc_buckets = (180,)
    c.loss.temperature = 1.0  # ColBERT scores are sums of cosines: no temperature
    c.optim.lr = 3e-6
    c.optim.warmup_steps = 2000
    c.train.steps = 200_000
  else:
    c.mode = "distill"
    c.student = common.colbert_xlmr()
    c.data.bitext.sources = [
        dict(type="tfds", name="para_crawl/enmt", src_key="mt", tgt_key="en", data_dir=TFDS_DIR,
             split="train", label="paracrawl-mt"),
        dict(type="tfds", name="ted_hrlr_translate/pt_to_en", src_key="pt", tgt_key="en",
             data_dir=TFDS_DIR, split="train", label="ted-pt"),
    ]
    c.data.bitext.ratios = (0.5, 0.5)
    c.optim.lr = 5e-6
    c.optim.warmup_steps = 1000
    c.train.steps = 20_000
    c.loss.ot.max_iterations = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.log_every = 50
  return c
