"""Embedding texts for evaluation: each model loaded once (specs that differ only in text
settings share weights), texts encoded in length buckets through the embedding cache
(`retrieval.cached`), over this host's devices and, for a corpus, split across hosts; and
the exact search over a corpus split across hosts (per-host top-k lists merged)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from optical_jax import buckets as buckets_lib
from optical_jax import mesh as mesh_lib
from optical_jax import models, retrieval
from optical_jax.data import beir

Log = Callable[[str], None]
EMBEDDING_DTYPES = {"float32": np.float32, "float16": np.float16}


length_buckets = buckets_lib.capped


def make_mesh(batch_size: int) -> Optional[jax.sharding.Mesh]:
  """The `data` mesh over this host's devices when batch_size splits evenly over them,
  else None. (Every host encodes its own batches: see `encode_shard`.)"""
  n = jax.local_device_count()
  if n > 1 and batch_size % n == 0:
    return mesh_lib.make_mesh(jax.local_devices())
  return None


def spec_key(spec) -> str:
  return json.dumps(spec.to_dict(), sort_keys=True, default=str)


_WEIGHT_FIELDS = ("weights", "path", "tokenizer", "arch", "head_dim", "dtype")


def weights_key(spec) -> str:
  d = spec.to_dict()
  return json.dumps({k: d[k] for k in _WEIGHT_FIELDS}, sort_keys=True, default=str)


class Embedder:
  """Loads each distinct model once and memoises embeddings within one `run`."""

  def __init__(self, config, cache_dir: Optional[str], log: Log):
    self.config = config
    self.cache_dir = cache_dir
    self.log = log
    self.mesh = make_mesh(int(config.batch_size))
    self._models: Dict[str, Tuple[models.Model, Callable]] = {}
    self._weights: Dict[str, models.Model] = {}
    self._emb: Dict[str, Any] = {}
    self.seconds: Dict[str, float] = {}

  def model(self, spec, where: str) -> Tuple[models.Model, Callable]:
    """The loaded model of `spec` and its embed function.

    Weights are loaded once per (weights, path, tokenizer, arch, head, dtype); specs that
    differ only in text settings (prefixes, lengths, pooling, normalisation) share them.
    """
    key = spec_key(spec)
    if key not in self._models:
      wkey = weights_key(spec)
      base = self._weights.get(wkey)
      if base is None:
        t0 = time.perf_counter()
        base = self._weights[wkey] = models.load_model(spec, where=where)
        self.log(f"loaded {where} ({spec.weights}: {spec.path or 'random'}) in "
                 f"{time.perf_counter() - t0:.1f} s")
      m = base
      if spec_key(base.spec) != key:
        m = dataclasses.replace(base, spec=spec, fingerprint=models.model_fingerprint(spec))
      self._models[key] = (m, m.embed_fn(self.mesh))
    return self._models[key]

  def encode(self, spec, where: str, side: str, texts: Sequence[str],
             key_parts: Dict[str, Any], what: str, shard: bool = False) -> Tuple[Any, float]:
    """Embeddings of `texts` (cached on disk under `key_parts`); returns (emb, seconds spent).

    With `shard`, this host encodes only its share (`retrieval.encode_shard` over
    `jax.process_count()` hosts) and emb is (rows, embeddings of those rows).
    """
    index, count = (jax.process_index(), jax.process_count()) if shard else (0, 1)
    if shard:
      key_parts = {**key_parts, "shard": [index, count]}
    if self.config.embedding_dtype != "float32":   # float32 entries keep their keys
      key_parts = {**key_parts, "dtype": self.config.embedding_dtype}
    ck = retrieval.cache_key(key_parts)
    if ck in self._emb:
      return self._emb[ck], 0.0
    spent = [0.0, False]

    def compute():
      model, embed = self.model(spec, where)
      max_len = model.max_len(side)
      buckets = length_buckets(self.config.length_buckets[side], max_len)
      self.log(f"encoding {len(texts)} {what} with {where} (max length {max_len}, "
               f"batch {self.config.batch_size}, "
               f"{'%d devices' % self.mesh.size if self.mesh else '1 device'})")
      t0 = time.perf_counter()
      settings = dict(batch_size=int(self.config.batch_size), length_buckets=buckets,
                      max_tokens=int(self.config.max_tokens) or None,
                      row_multiple=self.mesh.size if self.mesh else 1,
                      pad_id=model.tokenizer.pad_id, progress=bool(self.config.progress),
                      dtype=EMBEDDING_DTYPES[self.config.embedding_dtype],
                      desc=f"{what} ({where})")
      if shard:
        rows, emb = retrieval.encode_shard(texts, model.tokenize_fn(side), embed, index=index,
                                           count=count, **settings)
      else:
        emb = retrieval.encode_texts(texts, model.tokenize_fn(side), embed, **settings)
        rows = texts
      spent[0], spent[1] = time.perf_counter() - t0, True
      self.log(f"encoded {len(rows)} {what} in {spent[0]:.1f} s "
               f"({len(rows) / max(spent[0], 1e-9):.1f}/s)"
               + (f", shard {index + 1} of {count}" if count > 1 else ""))
      if not shard:
        return emb
      return (rows,) + ((emb.emb, emb.mask) if isinstance(emb, retrieval.TokenEmbeddings)
                        else (emb,))

    emb = retrieval.cached(self.cache_dir, key_parts, compute, name=side)
    if not spent[1]:
      self.log(f"{what} embeddings for {where}: from cache")
    if shard:   # (rows, emb) or (rows, emb, mask) as stored
      emb = (emb[0], emb[1] if len(emb) == 2 else retrieval.TokenEmbeddings(emb[1], emb[2]))
    self._emb[ck] = emb
    return emb, spent[0]


def sharded_search(qids, q_arr, q_mask, doc_ids, rows, d_arr, d_mask, top_k: int,
                    how: str) -> beir.Run:
  """Exact top-k over a corpus split over hosts: each host searches its rows, then the
  per-host top-k lists are all-gathered and merged (ties to the lower corpus row, as in
  one process)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  k = min(top_k, len(doc_ids))
  scores = np.full((len(qids), k), -np.inf, np.float32)
  index = np.full((len(qids), k), -1, np.int64)
  if len(rows):
    s, i = retrieval.exact_search(q_arr, d_arr, k, scoring=how, q_mask=q_mask, d_mask=d_mask)
    s = retrieval.rescore_top_k(q_arr, d_arr, i, scoring=how, q_mask=q_mask, d_mask=d_mask)
    scores[:, :s.shape[1]] = s
    index[:, :i.shape[1]] = np.where(i >= 0, np.asarray(rows)[np.maximum(i, 0)], -1)
  all_s = multihost_utils.process_allgather(scores)
  all_i = multihost_utils.process_allgather(index)
  s, i = retrieval.merge_top_k(list(all_s), list(all_i), k)
  return retrieval.to_run(qids, doc_ids, s, i)


def split(emb) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  if isinstance(emb, retrieval.TokenEmbeddings):
    return emb.emb, emb.mask
  return emb, None
