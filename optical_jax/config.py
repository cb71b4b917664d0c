"""Training config schema: documented defaults that `configs/*.py` start from and override.

Every hyper-parameter the OPTICAL paper leaves open is a field here with its default:
the cost (`loss.ot.cost`), marginals (`loss.marginals`, `loss.include_special`), epsilon
(`loss.ot.epsilon`), iterations (`loss.ot.max_iterations`, `loss.ot.fixed_iterations`),
and how gradients reach the student (`loss.ot.grad`). Config files call
`base_config()` and change what they need; command lines override any field with
`--config.a.b=value` (ml_collections refuses unknown fields and ill-typed values of the
locked config); each run writes the resolved config to its workdir.

The library knows no data locations: config files give paths (the repository's
`configs/common.py` holds the shipped data's locations and the model presets).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, List, Mapping, Tuple

import ml_collections

from optical_jax import paths, plain, sparse_rows
from optical_jax.errors import InputError
from optical_jax.mesh import distributed_config
from optical_jax.models import model_spec


# Long by design: the whole training schema, every field with its documented default, in
# one place a reader can scan (issue 26 allows a long function with its reason beside it).
def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "distill"          # 'distill' (OPTICAL on bitext) or 'teacher' (English retrieval training)
  c.seed = 0                  # student initialisation, dropout and (by default) data order
  c.lang = ""                 # foreign language code, recorded with the run and its export

  # The frozen teacher (distill) or the model being trained (teacher mode).
  c.teacher = model_spec()
  # The student's initialisation (distill mode only); the student is a query encoder.
  c.student = model_spec()

  c.data = ml_collections.ConfigDict()
  # Bitext mixture for distill mode: see optical_jax.data.bitext.load_mixture. `seed`
  # orders the data (sampling, shuffling); -1 = use `seed`.
  c.data.bitext = ml_collections.ConfigDict(dict(sources=[], ratios=None, seed=-1))
  # Retrieval training data for teacher mode: see optical_jax.data.retrieval_train.
  c.data.retrieval = ml_collections.ConfigDict(dict(sources=[], ratios=None))
  c.data.num_negatives = 0
  c.data.global_batch = 32
  c.data.buckets = (16, 32, 64)
  c.data.doc_buckets = (64, 128, 256)   # teacher mode: passage lengths
  c.data.cache_dir = ""                 # '' = $OPTICAL_JAX_CACHE/tokens
  # The frozen teacher's English token embeddings computed once and read by the step
  # (optical_jax.teacher_cache): '' (off: the step runs the teacher), 'float32',
  # 'float16' or 'bfloat16' (storage precision; the shipped AfriQA distillation configs
  # use 'float16'). Losses that need the teacher's hidden states or attention run the
  # teacher whatever this says.
  c.data.teacher_cache = ""
  # Several hosts: False = every host draws its rows of each global batch from all the
  # data (the data order does not depend on the host count); True = each host draws from
  # its own fixed 1/P of the data (optical_jax.data.pipeline.BatchIterator), so the
  # teacher-token cache of each host holds its share only.
  c.data.host_shards = False
  # Code-switching (optical_jax.data.codeswitch): each switchable word of `side`
  # ('foreign' or 'english') is replaced with probability `rate` (0 = off) by a translation
  # from `dictionary` ('word translation' lines, MUSE format; several files joined by
  # os.pathsep), once, before tokenisation; `seed` -1 = the data seed. A dictionary that
  # covers under 1% of that side's words (wrong direction, wrong file) stops the run
  # unless `force`.
  c.data.code_switch = ml_collections.ConfigDict(dict(rate=0.0, side="foreign", dictionary="",
                                                      seed=-1, force=False))

  # Held-out bitext for tuning (distill mode): translation retrieval and cosine between
  # student (foreign) and teacher (English) embeddings, logged as val_* metrics at
  # the start, every `every` steps (0 = start and end only) and at the end.
  c.validation = ml_collections.ConfigDict(dict(sources=[], every=0))

  c.loss = ml_collections.ConfigDict()
  # 'ot' | 'sentence' | 'hard' | 'ot+sentence' | 'divergence' (debiased Sinkhorn divergence)
  # | 'barycentric' (tokens regress onto OT-mapped teacher targets) | 'ranking' (in-batch
  # translation-ranking KL) | 'ot+ranking' | 'divergence+ranking' | 'barycentric+ranking'
  c.loss.loss = "ot"
  c.loss.sentence_weight = 1.0          # weight of the sentence term in 'ot+sentence'
  c.loss.sentence_distance = "mse"      # 'mse' (Reimers & Gurevych) or 'cosine' (1 - cos)
  # Token marginals: 'uniform' over real tokens, 'idf'-weighted, 'norm' (token-vector
  # norms) or 'cls_attention' (each encoder's last-layer [CLS] attention row).
  c.loss.marginals = "uniform"
  c.loss.include_special = True         # do [CLS]/[SEP] (<s>/</s>) carry OT mass?
  c.loss.hard_symmetric = False         # 'hard': also align each teacher token to a student token
  c.loss.ranking_weight = 1.0           # weight of the ranking term in '...+ranking'
  c.loss.ranking_temperature = 0.05     # softmax temperature of both similarity rows (cosines)
  c.loss.ranking_scoring = "dense"      # 'dense' (pooled cosines) | 'maxsim' (token MaxSim / length)
  c.loss.token_distance = "cosine"      # 'barycentric': per-token 'cosine' (1 - cos) or 'mse'
  # Token-level terms on hidden states instead of the output: indices (0 = embeddings,
  # -1 = last layer before any head), combined by 'mean' or 'sum'; () = the output.
  c.loss.layers = ()
  c.loss.layer_combine = "mean"
  c.loss.ot = ml_collections.ConfigDict(dict(
      cost="cosine",          # 'cosine' (1 - cos) or 'sqeuclidean'
      epsilon=0.05,           # entropic regularisation (absolute, or a fraction: relative_epsilon)
      max_iterations=100,
      min_iterations=0,
      inner_iterations=10,
      threshold=1e-3,
      fixed_iterations=False,  # run exactly max_iterations
      grad="envelope",         # 'envelope' (plan held fixed) | 'implicit' | 'unroll'
      lse_mode=True,           # log domain; false = scalings (cost/epsilon must stay < ~80)
      solver="ott",            # 'ott' (vmapped per-pair solves) | 'batched' (one loop, same plans)
      scale_cost=1.0,
      relative_epsilon=False,  # epsilon (and epsilon_start) x each pair's cost std / mean
      relative_to="std",       # 'std' or 'mean' of the pair's costs (relative_epsilon)
      epsilon_start=0.0,       # > 0: anneal geometrically from it to epsilon ...
      anneal_steps=0,          # ... over this many steps
      tau_a=1.0,               # unbalanced marginals in (0, 1]; 1 = balanced (student side)
      tau_b=1.0,               # teacher side; tau_a=1, tau_b<1 = semi-relaxed
      center=False,            # subtract each model's mean token vector before the cost
      center_source="batch",   # 'batch' (global batch mean) or 'bitext' (estimated once)
  ))
  # Teacher mode: contrastive loss with in-batch negatives across devices.
  c.loss.temperature = 0.05

  # Adversarial language invariance (distill mode, optical_jax.adversarial): a
  # discriminator MLP tells the student's pooled foreign embeddings from the teacher's
  # pooled English ones, trained jointly; the student gets its gradient reversed (GRL).
  # weight 0 = off (no discriminator: the state and checkpoints are the student's alone).
  c.adversarial = ml_collections.ConfigDict(dict(
      weight=0.0,             # total loss = distillation + weight * discriminator BCE
      hidden_size=256,        # width of the MLP's hidden layers
      num_layers=1,           # hidden layers (0 = logistic regression)
      lr=1e-3,                # the discriminator's own AdamW peak rate (optim.* otherwise)
      schedule="constant",    # reversed-gradient scale: 'constant' (1) or 'dann' (0 -> 1 ramp)
      ramp_steps=0,           # 'dann': ramp length in steps; 0 = train.steps
      pooling="mean",         # 'mean' or 'cls' pooling of both sides' token embeddings
      normalize=True,         # L2-normalise the pooled embeddings first
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-5, warmup_steps=50, weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
      freeze=(),   # regexes over param paths, e.g. ('word_embeddings',)
      # Update only the word-embedding rows of each batch's tokens (lazy AdamW: unused rows
      # keep their moments and are not decayed; optical_jax.sparse_rows). Off = dense AdamW.
      sparse_embeddings=False,
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      log_every=10,
      checkpoint_every=200,
      keep_checkpoints=3,
      skip_nonfinite=False,   # False: stop with a message naming the step
      progress=True,
      devices=0,              # 0 = all devices; n = the first n (single process only)
      # Resuming a workdir with settings that change the math (steps, lr, data, loss...)
      # stops with the list of differences unless this is set.
      allow_config_change=False,
  ))

  # Several hosts: jax.distributed.initialize(...) when enabled (optical_jax.mesh).
  c.distributed = distributed_config()
  return c


# Fields with a closed set of values that nothing downstream checks before it matters
# (losses.DistillConfig and adversarial.AdversarialConfig check their own fields).
CHOICES = {
    "mode": ("distill", "teacher"),
    "data.teacher_cache": ("", "float32", "float16", "bfloat16"),
}
# Integer fields and their least allowed value.
MINIMUM = {"train.steps": 1, "train.log_every": 1, "train.checkpoint_every": 1,
           "train.keep_checkpoints": 1, "train.devices": 0, "data.global_batch": 1,
           "validation.every": 0}


def check(config: ml_collections.ConfigDict) -> None:
  """InputError (one line naming the field, its value and what it takes) for a schema
  field out of range: `CHOICES` and `MINIMUM` (e.g. `train.steps=0`, which would export
  an untrained model, or `data.teacher_cache=float64`)."""
  flat = plain.flatten(json.loads(to_json(config)))
  for key, allowed in CHOICES.items():
    if key in flat and flat[key] not in allowed:
      raise InputError(f"config.{key}={flat[key]!r}: use one of "
                       + ", ".join(repr(a) for a in allowed))
  for key, least in MINIMUM.items():
    value = flat.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise InputError(f"config.{key}={value!r}: must be an integer >= {least}")
  paths.require_local(flat.get("data.cache_dir"), "config.data.cache_dir")
  table = "/".join(sparse_rows.TABLE)
  if flat.get("optim.sparse_embeddings") and any(
      re.search(p, table) for p in config.optim.get("freeze", ())):
    raise InputError(f"config.optim.sparse_embeddings=True with optim.freeze matching {table}: "
                     "a frozen table has nothing to update; use one of the two")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


# Fields a resumed run may change freely: how it logs, checkpoints, validates and is
# laid out on devices, not what it computes (data order and sharding do not depend on
# the device count: the global batch is fixed).
HARMLESS_FIELDS = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                   "train.progress", "train.devices", "train.skip_nonfinite",
                   "train.allow_config_change", "validation.every", "data.cache_dir",
                   "distributed.")


def field_in(key: str, fields) -> bool:
  """Whether the dotted `key` is one of `fields` (an entry ending in '.' names a subtree)."""
  return any(key == f or (f.endswith(".") and key.startswith(f)) for f in fields)


def drop_added_defaults(old: dict, new: dict, defaults: dict, prefix: str = "") -> dict:
  """`new` (a flat config) without the fields `old` lacks whose value is their default.

  `defaults` is the flat default config, its keys without `prefix` (the place of that
  config inside `old`/`new`, e.g. 'train.'): fields added since `old` was saved, left
  at their defaults, do not count as differences.
  """
  return {k: v for k, v in new.items()
          if k in old or not k.startswith(prefix) or k[len(prefix):] not in defaults
          or defaults[k[len(prefix):]] != v}


def config_changes(saved: dict, config: ml_collections.ConfigDict):
  """Differences between a workdir's saved `config.json` and `config`, split in two.

  A field that `saved` lacks and `config` holds at its `base_config()` default is no
  change: it was added to the library after the run, and a new field's default keeps
  the old behaviour (a project rule: new options default to off).

  Returns:
    (changes to the math, harmless changes): lists of 'field: old -> new' strings,
    fields in sorted order; harmless fields are `HARMLESS_FIELDS` (a trailing '.'
    names a whole subtree).
  """
  old, new = plain.flatten(saved), plain.flatten(json.loads(to_json(config)))
  new = drop_added_defaults(old, new, plain.flatten(json.loads(to_json(base_config()))))
  return drift(old, new, lambda key: field_in(key, HARMLESS_FIELDS))


def drift(old: Mapping[str, Any], new: Mapping[str, Any], harmless: Callable[[str], bool]
          ) -> Tuple[List[str], List[str]]:
  """The one answer to "did the config change the math?" (a resumed run, a finished study
  cell): the fields where two flat configs differ, as 'field: old -> new' lines in field
  order, split into (changes to the math, changes `harmless(field)` says leave the
  results valid). A field one side lacks shows as "<absent>"."""
  math, ok = [], []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
    if a == b:
      continue
    (ok if harmless(key) else math).append(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
  return math, ok
