"""Training config schema: documented defaults that `configs/*.py` start from and override.

Every hyper-parameter the OPTICAL paper leaves open is a field here with its default:
the cost (`loss.ot.cost`), marginals (`loss.marginals`, `loss.include_special`), epsilon
(`loss.ot.epsilon`), iterations (`loss.ot.max_iterations`, `loss.ot.fixed_iterations`),
and how gradients reach the student (`loss.ot.grad`). Config files call
`base_config()` and change what they need; command lines override any field with
`--config.a.b=value`; each run writes the resolved config to its workdir.
"""

from __future__ import annotations

import json
import os
import warnings

import ml_collections

from optical_jax.models import model_spec

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED_DATA = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))


def data_path(*parts: str) -> str:
  """A path under the project's shipped `data/` directory."""
  return os.path.join(REPO, "data", *parts)


def shared_path(*parts: str) -> str:
  """A path under `../shared/data` (larger corpora that are not shipped)."""
  return os.path.join(SHARED_DATA, *parts)


def afriqa_dir(lang: str) -> str:
  """The AfriQA-CLIR directory holding `lang`'s queries: shipped data first, else ../shared."""
  shipped = data_path("afriqa-clir")
  if os.path.exists(os.path.join(shipped, "queries", f"{lang}.test.jsonl")):
    return shipped
  return shared_path("afriqa-clir")


def ntrex_dir(lang: str) -> str:
  """The NTREX-128 directory holding `lang`.txt: shipped data first, else ../shared."""
  shipped = data_path("ntrex")
  if os.path.exists(os.path.join(shipped, f"{lang}.txt")):
    return shipped
  return shared_path("bitext", "ntrex")


def bitext_sources(lang: str, *, afriqa: bool = True, ntrex: bool = True, mafand: bool = False,
                   afriqa_splits=("train", "dev")):
  """Distillation bitext for an AfriQA language: query-domain pairs + news, test queries excluded.

  * AfriQA `lang` train/dev questions with their human English translations
    (`text`/`text_en`): the query domain. No relevance labels are used.
  * NTREX-128 `lang`/eng news sentences (left out, with a warning, for languages
    NTREX lacks).
  * optionally MAFAND-MT en-`lang` train (CC-BY-NC-4.0: read from ../shared, never shipped).
  Every pair whose foreign or English side equals a test query or its translation is
  dropped (the trainer logs how many).
  """
  base = afriqa_dir(lang)
  test = os.path.join(base, "queries", f"{lang}.test.jsonl")
  exclude = [dict(type="jsonl", path=test, fields=["text", "text_en"])]
  sources = []
  if afriqa:
    sources.append(dict(
        type="jsonl", label=f"afriqa-{lang}",
        path=[os.path.join(base, "queries", f"{lang}.{split}.jsonl") for split in afriqa_splits],
        foreign_field="text", english_field="text_en", exclude=exclude))
  if ntrex:
    d = ntrex_dir(lang)
    foreign = os.path.join(d, f"{lang}.txt")
    if os.path.exists(foreign):
      sources.append(dict(type="lines", label=f"ntrex-{lang}", foreign=foreign,
                          english=os.path.join(d, "eng.txt"), exclude=exclude))
    else:  # NTREX-128 has no Bemba, Fon or Twi: train on the other sources rather than fail
      warnings.warn(f"no NTREX-128 bitext for {lang!r} in {d}; not using NTREX for this language")
  if mafand:
    d = shared_path("bitext", "lafand", f"en-{lang}")
    sources.append(dict(type="lines", label=f"mafand-{lang}", foreign=os.path.join(d, f"train.{lang}"),
                        english=os.path.join(d, "train.en"), exclude=exclude))
  return sources


def parse_arg(arg: str, default_lang: str = "swa"):
  """Config-file argument `LANG[,tune][,mafand]` -> (lang, set of flags)."""
  parts = [p.strip() for p in (arg or default_lang).split(",") if p.strip()]
  return parts[0], set(parts[1:])


def set_distill_data(c: ml_collections.ConfigDict, lang: str, flags=()) -> None:
  """Fills c.data.bitext (and c.validation for 'tune') for an AfriQA language.

  'tune': AfriQA dev questions are held out of the bitext and used as validation
  pairs (translation retrieval, cosine), for choosing hyper-parameters without test
  queries. 'mafand': add MAFAND-MT train from ../shared (non-commercial licence).
  """
  tune = "tune" in flags
  c.data.bitext.sources = bitext_sources(lang, mafand="mafand" in flags,
                                         afriqa_splits=("train",) if tune else ("train", "dev"))
  if tune:
    base = afriqa_dir(lang)
    c.validation.sources = [dict(type="jsonl", path=os.path.join(base, "queries", f"{lang}.dev.jsonl"),
                                 foreign_field="text", english_field="text_en")]


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "distill"          # 'distill' (OPTICAL on bitext) or 'teacher' (English retrieval training)
  c.seed = 0

  # The frozen teacher (distill) or the model being trained (teacher mode).
  c.teacher = model_spec()
  # The student's initialisation (distill mode only); the student is a query encoder.
  c.student = model_spec()

  c.data = ml_collections.ConfigDict()
  # Bitext mixture for distill mode: see optical_jax.data.bitext.load_mixture.
  c.data.bitext = ml_collections.ConfigDict(dict(sources=[], ratios=None, seed=0))
  # Retrieval training data for teacher mode: see optical_jax.data.retrieval_train.
  c.data.retrieval = ml_collections.ConfigDict(dict(sources=[], ratios=None))
  c.data.num_negatives = 0
  c.data.global_batch = 32
  c.data.buckets = (16, 32, 64)
  c.data.doc_buckets = (64, 128, 256)   # teacher mode: passage lengths
  c.data.cache_dir = ""                 # '' = $OPTICAL_JAX_CACHE/tokens

  # Held-out bitext for tuning (distill mode): translation retrieval and cosine between
  # student (foreign) and teacher (English) embeddings, logged as val_* metrics at
  # the start, every `every` steps (0 = start and end only) and at the end.
  c.validation = ml_collections.ConfigDict(dict(sources=[], every=0))

  c.loss = ml_collections.ConfigDict()
  c.loss.loss = "ot"                    # 'ot' | 'sentence' | 'hard' | 'ot+sentence'
  c.loss.sentence_weight = 1.0          # weight of the sentence term in 'ot+sentence'
  c.loss.sentence_distance = "mse"      # 'mse' (Reimers & Gurevych) or 'cosine' (1 - cos)
  c.loss.marginals = "uniform"          # 'uniform' over real tokens, or 'idf'-weighted
  c.loss.include_special = True         # do [CLS]/[SEP] (<s>/</s>) carry OT mass?
  c.loss.ot = ml_collections.ConfigDict(dict(
      cost="cosine",          # 'cosine' (1 - cos) or 'sqeuclidean'
      epsilon=0.05,           # absolute entropic regularisation
      max_iterations=100,
      min_iterations=0,
      inner_iterations=10,
      threshold=1e-3,
      fixed_iterations=False,  # run exactly max_iterations
      grad="envelope",         # 'envelope' (plan held fixed) | 'implicit' | 'unroll'
      lse_mode=True,
      scale_cost=1.0,
  ))
  # Teacher mode: contrastive loss with in-batch negatives across devices.
  c.loss.temperature = 0.05

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-5, warmup_steps=50, weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
      freeze=(),   # regexes over param paths, e.g. ('word_embeddings',)
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      log_every=10,
      checkpoint_every=200,
      keep_checkpoints=3,
      skip_nonfinite=False,   # False: stop with a message naming the step
      progress=True,
      devices=0,              # 0 = all devices; n = the first n (single process only)
  ))

  # Several hosts: jax.distributed.initialize(...) when enabled (TPU pods fill these in
  # automatically; on CPU/GPU clusters give them, e.g. a 127.0.0.1 coordinator).
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address="", num_processes=0, process_id=-1,
      local_device_ids="", cpu_collectives="gloo"))
  return c


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
