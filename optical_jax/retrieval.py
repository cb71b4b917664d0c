"""Retrieval: length-bucketed batch encoding, an on-disk embedding cache, exact chunked top-k search and reranking."""

from __future__ import annotations

import functools
import json
import os
import warnings
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import jax
import jax.numpy as jnp
import numpy as np
from optical_jax.monitor import progress_bar

from optical_jax import array_cache, fingerprint, scoring as scoring_lib
from optical_jax import buckets as buckets_lib
from optical_jax.data.beir import DataWarning, Run, ranked

Array = Union[np.ndarray, jax.Array]
TokenizeFn = Callable[[List[str]], List[List[int]]]
EmbedFn = Callable[[np.ndarray, np.ndarray], Any]


class TokenEmbeddings(NamedTuple):
  """Token-level embeddings for MaxSim: `emb` [N, L, D] (zero past each text's end), `mask` [N, L] int8."""
  emb: np.ndarray
  mask: np.ndarray


# ---------------------------------------------------------------------------
# Encoding.


def batch_rows(width: int, batch_size: int, max_tokens: Optional[int] = None,
               row_multiple: int = 1) -> int:
  """Rows of a batch padded to `width` tokens: `batch_size`, or fewer when `max_tokens` is set.

  With `max_tokens`, the largest multiple of `row_multiple` with rows * width <= max_tokens
  (at least `row_multiple`, at most `batch_size`): long buckets get smaller batches,
  whose attention matrices stay in cache (on a 2-core CPU, MiniLM encodes ~10-20% more
  passages/s at 256 tokens in batches of 8-16 than of 32; docs/performance.md).
  """
  if max_tokens is None:
    return batch_size
  rows = (max_tokens // width) // row_multiple * row_multiple
  return max(row_multiple, min(batch_size, rows))


def encode_texts(texts: Sequence[str], tokenize_fn: TokenizeFn, embed_fn: EmbedFn, *,
                 batch_size: int, length_buckets: Sequence[int], pad_id: int = 0,
                 dtype: Any = np.float32, token_dtype: Any = np.float16,
                 progress: bool = True, desc: str = "encoding",
                 max_tokens: Optional[int] = None, row_multiple: int = 1
                 ) -> Union[np.ndarray, TokenEmbeddings]:
  """Embeds `texts` in batches of static shape, returning rows in the input order.

  See `encode_shard` for the arguments; this is its single-shard case.
  """
  _, emb = encode_shard(texts, tokenize_fn, embed_fn, batch_size=batch_size,
                        length_buckets=length_buckets, pad_id=pad_id, dtype=dtype,
                        token_dtype=token_dtype, progress=progress, desc=desc,
                        max_tokens=max_tokens, row_multiple=row_multiple)
  return emb


def _tokenized(texts: Sequence[str], tokenize_fn: TokenizeFn, length_buckets: Sequence[int]
               ) -> Tuple[List[List[int]], np.ndarray, List[int]]:
  """(token ids, their lengths int64, the sorted buckets) of `texts`, checked."""
  buckets = sorted({int(b) for b in length_buckets})
  if not buckets or buckets[0] < 1:
    raise ValueError(f"length_buckets must be positive lengths, got {list(length_buckets)}")
  ids = tokenize_fn(texts)
  if len(ids) != len(texts):
    raise ValueError(f"tokenize_fn returned {len(ids)} sequences for {len(texts)} texts")
  lengths = np.array([len(s) for s in ids], dtype=np.int64)
  for i in np.flatnonzero(lengths > buckets[-1])[:1]:
    raise ValueError(f"text {i} has {lengths[i]} tokens, more than the largest length "
                     f"bucket {buckets[-1]}; tokenize_fn must truncate")
  return ids, lengths, buckets


def _length_batches(lengths: np.ndarray, buckets: Sequence[int], batch_size: int,
                    max_tokens: Optional[int], row_multiple: int) -> List[np.ndarray]:
  """Row indices of every batch, longest texts first; each batch as many rows as its
  bucket allows (`batch_rows`)."""
  order = np.argsort(-lengths, kind="stable")
  batches, start = [], 0
  while start < len(order):
    rows = batch_rows(buckets_lib.width(int(lengths[order[start]]), buckets), batch_size, max_tokens,
                      row_multiple)
    batches.append(order[start:start + rows])
    start += rows
  return batches


def _padded(ids: Sequence[Sequence[int]], lengths: np.ndarray, rows: np.ndarray, size: int,
            width: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
  """The batch of `rows` as (ids int32 [size, width], mask int32), padding rows after them."""
  tok = np.full((size, width), pad_id, dtype=np.int32)
  mask = np.zeros((size, width), dtype=np.int32)
  for r, i in enumerate(rows):
    tok[r, :lengths[i]] = ids[i]
    mask[r, :lengths[i]] = 1
  return tok, mask


# Its docstring is half its length; the code is the batching loop and the output layout.
def encode_shard(texts: Sequence[str], tokenize_fn: TokenizeFn, embed_fn: EmbedFn, *,
                 batch_size: int, length_buckets: Sequence[int], pad_id: int = 0,
                 dtype: Any = np.float32, token_dtype: Any = np.float16,
                 progress: bool = True, desc: str = "encoding", index: int = 0, count: int = 1,
                 max_tokens: Optional[int] = None, row_multiple: int = 1
                 ) -> Tuple[np.ndarray, Union[np.ndarray, TokenEmbeddings]]:
  """Embeds shard `index` of `count` of `texts`: (rows, embeddings of those rows).

  Texts are sorted by token length (longest first, so memory trouble shows up at once);
  each batch is padded to the smallest bucket length >= its longest sequence (its first)
  and to `batch_rows` of that length (`batch_size`, or fewer under `max_tokens`), so a
  jitted `embed_fn` compiles once per bucket used. Padding
  rows are stripped before the results are stored. Shard `index` encodes batches
  `index, index + count, ...` of that order (hosts of a multi-host evaluation split a
  corpus so), so every text is embedded in exactly the batch, padding and shape it would
  get from a single process: the shards' rows together equal the unsharded result.

  Args:
    texts: the strings to embed.
    tokenize_fn: list[str] -> list[list[int]], already truncated to <= max(length_buckets).
    embed_fn: (ids int32 [B, L], mask int32 [B, L]) -> [B, D] (one vector per text) or
      [B, L, D] (token vectors for MaxSim); for token vectors it may instead return
      (emb [B, L, D], mask [B, L]) to mark which positions count (default: the input mask).
    batch_size: rows per call of `embed_fn` (the most, with `max_tokens`).
    length_buckets: allowed padded lengths.
    pad_id: token id used for padding.
    dtype: storage dtype of dense vectors.
    token_dtype: storage dtype of token vectors (float16 halves the memory of a collection).
    progress: show progress (a bar on a terminal, plain lines in logs); desc: its label.
    max_tokens: optional budget of padded tokens per batch (see `batch_rows`);
      row_multiple: batches' rows are a multiple of this (e.g. the device count).

    index, count: which shard to encode (default: everything).

  Returns:
    rows: int64 [n], the (ascending) positions in `texts` of this shard's texts.
    embeddings for those rows, in that order:
      dense: np.ndarray [n, D] of `dtype`;
      token-level: TokenEmbeddings(emb [n, Lmax, D] of `token_dtype`, mask [n, Lmax] int8),
      where Lmax is the longest tokenized text of all `texts` (not the largest bucket)
      and vectors past a text's end are zero.
  """
  texts = list(texts)
  if not texts:
    raise ValueError("encode_texts got no texts")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  ids, lengths, buckets = _tokenized(texts, tokenize_fn, length_buckets)
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} is not in [0, {count})")
  if row_multiple < 1 or batch_size % row_multiple:
    raise ValueError(f"row_multiple {row_multiple} does not divide batch_size {batch_size}")
  batches = _length_batches(lengths, buckets, batch_size, max_tokens, row_multiple)[index::count]
  shard_rows = np.sort(np.concatenate(batches)) if batches else np.zeros((0,), np.int64)
  where = np.zeros(len(texts), np.int64)
  where[shard_rows] = np.arange(len(shard_rows))
  n = len(shard_rows)
  l_max = max(int(lengths.max()), 1)
  out = out_mask = None
  token_level = False
  with progress_bar(total=n, desc=desc, unit="text", disable=not progress, leave=False) as bar:
    for rows in batches:
      width = buckets_lib.width(int(lengths[rows].max()), buckets)
      size = batch_rows(width, batch_size, max_tokens, row_multiple)
      tok, mask = _padded(ids, lengths, rows, size, width, pad_id)
      result = embed_fn(tok, mask)
      emb_mask = None
      if isinstance(result, tuple):
        result, emb_mask = result
      emb = np.asarray(result)
      if emb.shape[0] != size or emb.ndim not in (2, 3):
        raise ValueError(f"embed_fn returned shape {emb.shape} for a batch of shape "
                         f"{tok.shape}; expected [B, D] or [B, L, D]")
      emb = emb[:len(rows)]
      if out is None:
        token_level = emb.ndim == 3
        if token_level:
          out = np.zeros((n, l_max, emb.shape[-1]), dtype=token_dtype)
          out_mask = np.zeros((n, l_max), dtype=np.int8)
        else:
          out = np.empty((n, emb.shape[-1]), dtype=dtype)
      if (emb.ndim == 3) != token_level or emb.shape[-1] != out.shape[-1]:
        raise ValueError(f"embed_fn output shape changed between batches: {emb.shape}")
      if token_level:
        if emb.shape[1] != width:
          raise ValueError(f"embed_fn returned {emb.shape[1]} positions for length {width}")
        m = mask if emb_mask is None else np.asarray(emb_mask)
        m = (m[:len(rows), :l_max] > 0)
        w = m.shape[1]
        out[where[rows], :w] = np.where(m[..., None], emb[:, :w], 0).astype(token_dtype)
        out_mask[where[rows], :w] = m
      else:
        out[where[rows]] = emb
      bar.update(len(rows))
  if out is None:   # a shard without batches (more shards than batches)
    return shard_rows, np.zeros((0, 0), dtype)
  return shard_rows, (TokenEmbeddings(out, out_mask) if token_level else out)


# ---------------------------------------------------------------------------
# The embedding cache.


def cache_key(key_parts: Mapping[str, Any]) -> str:
  """The hex hash naming a cache entry: `fingerprint.digest` of `key_parts`, 24 digits."""
  return fingerprint.digest(dict(key_parts), n=24)


CacheValue = Union[np.ndarray, TokenEmbeddings, Tuple[np.ndarray, ...]]


def cached(cache_dir: Union[str, os.PathLike, None], key_parts: Mapping[str, Any],
           compute_fn: Callable[[], CacheValue], *, name: str = "emb",
           mmap: bool = False) -> CacheValue:
  """Returns `compute_fn()`, stored under `cache_dir` and reused on later calls with the same key.

  `key_parts` should name everything the arrays depend on, e.g. {"model": model
  fingerprint, "collection": Corpus.fingerprint(), "max_len": 180, "kind": "doc"}.
  An entry is an `array_cache` entry `<name>-<hash>/` (written atomically, its arrays
  checked against their manifest's shapes, dtypes and checksums before use); an entry
  that fails is named in one warning, moved aside and recomputed. With `cache_dir=None`
  this just calls `compute_fn`.

  compute_fn must return an np.ndarray, a TokenEmbeddings or a tuple of arrays; the same
  kind comes back. `mmap=True` memory-maps the arrays read from the cache.
  """
  if cache_dir is None:
    return compute_fn()
  root, key = os.fspath(cache_dir), cache_key(key_parts)
  hit = array_cache.load(root, name, key, mmap=mmap)
  if hit is not None:
    arrays, meta = hit
    values = tuple(arrays[str(i)] for i in range(len(arrays)))
    kind = meta.get("kind")
    if kind == "array":
      return values[0]
    return TokenEmbeddings(*values) if kind == "token" else values
  value = compute_fn()
  if isinstance(value, TokenEmbeddings):
    kind, arrays = "token", tuple(value)
  elif isinstance(value, tuple):
    kind, arrays = "tuple", value
  else:
    kind, arrays = "array", (value,)
  array_cache.store(root, name, key, {str(i): np.asarray(a) for i, a in enumerate(arrays)},
                    meta={"kind": kind,
                          "key_parts": json.loads(fingerprint.canonical_json(dict(key_parts)))})
  return value


# ---------------------------------------------------------------------------
# Exact search.


def _check_inputs(q_emb, d_emb, scoring, q_mask, d_mask):
  scoring_lib.check(scoring)
  want = 2 if scoring == "dense" else 3
  if q_emb.ndim != want or d_emb.ndim != want:
    raise ValueError(f"{scoring} scoring needs {want}-d embeddings, got queries "
                     f"{q_emb.shape} and documents {d_emb.shape}")
  if q_emb.shape[-1] != d_emb.shape[-1]:
    raise ValueError(f"embedding sizes differ: {q_emb.shape[-1]} vs {d_emb.shape[-1]}")
  if scoring == "dense":
    return None, None
  q_mask = np.ones(q_emb.shape[:2], np.int8) if q_mask is None else np.asarray(q_mask)
  d_mask = np.ones(d_emb.shape[:2], np.int8) if d_mask is None else d_mask
  if q_mask.shape != q_emb.shape[:2] or d_mask.shape != d_emb.shape[:2]:
    raise ValueError(f"mask shapes {q_mask.shape}, {d_mask.shape} do not match embeddings "
                     f"{q_emb.shape}, {d_emb.shape}")
  return q_mask, d_mask


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  if a.shape[0] == rows:
    return np.asarray(a)
  out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
  out[:a.shape[0]] = a
  return out


@functools.partial(jax.jit, static_argnames=("k", "scoring"))
def _search_step(q, q_mask, d, d_mask, offset, n_docs, best_s, best_i, *, k, scoring):
  """Scores one (query chunk, doc chunk) pair and merges its top-k into the running top-k."""
  s = scoring_lib.scores(q, q_mask, d, d_mask, scoring)
  col = offset + jnp.arange(d.shape[0], dtype=jnp.int32)
  s = jnp.where(col[None, :] < n_docs, s, -jnp.inf)
  chunk_s, chunk_pos = jax.lax.top_k(s, min(k, d.shape[0]))
  # Running entries come from earlier chunks (lower doc indices) and sit first, and
  # lax.top_k keeps the lower position first among equal values, so ties go to the
  # lower document index.
  all_s = jnp.concatenate([best_s, chunk_s], axis=1)
  all_i = jnp.concatenate([best_i, chunk_pos.astype(jnp.int32) + offset], axis=1)
  top_s, pos = jax.lax.top_k(all_s, k)
  return top_s, jnp.take_along_axis(all_i, pos, axis=1)


def _balanced_chunk(n: int, chunk: int) -> int:
  """The smallest chunk size <= `chunk` that covers `n` rows in as many chunks (least padding)."""
  chunk = max(1, min(chunk, n))
  pieces = -(-n // chunk)
  return -(-n // pieces)


def _auto_doc_chunk(scoring: str, query_chunk: int, q_len: int, d_len: int,
                    budget: int) -> int:
  per_doc = query_chunk * (1 if scoring == "dense" else q_len * d_len)
  return max(1, budget // max(per_doc, 1))


def exact_search(q_emb: Array, d_emb: Array, top_k: int, *, scoring: str = "dense",
                 q_mask: Optional[Array] = None, d_mask: Optional[Array] = None,
                 query_chunk: int = 256, doc_chunk: Optional[int] = None,
                 max_chunk_elements: int = 1 << 26, progress: bool = False,
                 desc: str = "searching") -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-k over the whole collection, in chunks, with a running top-k per query.

  Memory stays bounded by the chunk sizes (the score block is query_chunk x doc_chunk,
  times Lq x Ld for MaxSim), so a million-passage collection can be searched from a
  host (or memory-mapped) array. Chunks are zero-padded to full size, so the jitted step
  compiles once; chunk sizes are evened out (at most the given sizes) to waste as little
  padding as possible. `doc_chunk=None` picks the largest doc chunk whose score block has at
  most `max_chunk_elements` float32 values.

  Args:
    q_emb: [Q, D] (dense) or [Q, Lq, D] (maxsim); d_emb: [N, D] or [N, Ld, D].
    top_k: results per query (capped at N).
    scoring: "dense" (dot product) or "maxsim" (ColBERT late interaction).
    q_mask, d_mask: [Q, Lq] / [N, Ld] token masks for maxsim (default: all ones).

  Returns:
    (scores float32 [Q, k], indices int64 [Q, k]) as numpy, best first; equal scores
    are ordered by lower document index first.
  """
  q_emb = np.asarray(q_emb) if not isinstance(q_emb, np.ndarray) else q_emb
  d_emb = np.asarray(d_emb) if not isinstance(d_emb, (np.ndarray, np.memmap)) else d_emb
  q_mask, d_mask = _check_inputs(q_emb, d_emb, scoring, q_mask, d_mask)
  n_q, n_d = q_emb.shape[0], d_emb.shape[0]
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  if n_q == 0 or n_d == 0:
    k0 = min(top_k, n_d)
    return np.zeros((n_q, k0), np.float32), np.zeros((n_q, k0), np.int64)
  k = min(top_k, n_d)
  qc = _balanced_chunk(n_q, query_chunk)
  if doc_chunk is None:
    lq = q_emb.shape[1] if scoring == "maxsim" else 1
    ld = d_emb.shape[1] if scoring == "maxsim" else 1
    doc_chunk = _auto_doc_chunk(scoring, qc, lq, ld, max_chunk_elements)
  dc = _balanced_chunk(n_d, doc_chunk)
  n_qc = -(-n_q // qc)
  q_dev = jnp.asarray(_pad_rows(q_emb, n_qc * qc))
  qm_dev = None if q_mask is None else jnp.asarray(_pad_rows(q_mask, n_qc * qc))
  best = [(jnp.full((qc, k), -jnp.inf, jnp.float32), jnp.full((qc, k), -1, jnp.int32))
          for _ in range(n_qc)]
  n_docs = jnp.int32(n_d)
  starts = range(0, n_d, dc)
  for start in progress_bar(starts, desc=desc, unit="chunk", disable=not progress, leave=False):
    d = jnp.asarray(_pad_rows(np.asarray(d_emb[start:start + dc]), dc))
    dm = None if d_mask is None else jnp.asarray(_pad_rows(np.asarray(d_mask[start:start + dc]),
                                                           dc))
    # Dispatch is asynchronous: without this wait every chunk could be uploaded before the
    # first is searched (a second copy of the corpus). Waiting on the previous chunk's
    # results keeps at most two chunks alive while the next upload still overlaps compute.
    jax.block_until_ready(best)
    offset = jnp.int32(start)
    for j in range(n_qc):
      qs = q_dev[j * qc:(j + 1) * qc]
      qms = None if qm_dev is None else qm_dev[j * qc:(j + 1) * qc]
      best[j] = _search_step(qs, qms, d, dm, offset, n_docs, *best[j], k=k, scoring=scoring)
  scores = np.concatenate([np.asarray(s) for s, _ in best])[:n_q]
  indices = np.concatenate([np.asarray(i) for _, i in best])[:n_q].astype(np.int64)
  indices[(indices < 0) | (indices >= n_d)] = -1
  return scores, indices


def to_run(qids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray,
           indices: np.ndarray) -> Run:
  """Turns `exact_search` output into {qid: {doc_id: score}} (index -1 entries are skipped)."""
  if len(qids) != scores.shape[0] or scores.shape != indices.shape:
    raise ValueError(f"{len(qids)} query ids for scores {scores.shape} / indices "
                     f"{indices.shape}")
  run: Run = {}
  for qid, row_s, row_i in zip(qids, np.asarray(scores), np.asarray(indices)):
    run[qid] = {doc_ids[i]: float(s) for s, i in zip(row_s, row_i) if i >= 0}
  return run


def search(qids: Sequence[str], q_emb: Array, doc_ids: Sequence[str], d_emb: Array,
           top_k: int, **kwargs) -> Run:
  """The top-k run of every query: `exact_search`, then `rescore_top_k` (so the written
  scores do not depend on chunk sizes or on how the corpus was split over hosts)."""
  scores, indices = exact_search(q_emb, d_emb, top_k, **kwargs)
  scores = rescore_top_k(q_emb, d_emb, indices, scoring=kwargs.get("scoring", "dense"),
                         q_mask=kwargs.get("q_mask"), d_mask=kwargs.get("d_mask"))
  scores, indices = merge_top_k([scores], [indices], indices.shape[1])
  return to_run(qids, doc_ids, scores, indices)


def rescore_top_k(q_emb: Array, d_emb: Array, indices: np.ndarray, *, scoring: str = "dense",
                  q_mask: Optional[Array] = None, d_mask: Optional[Array] = None,
                  max_elements: int = 1 << 24) -> np.ndarray:
  """Each (query, candidate) score computed on its own: [Q, k] float32 (-inf for index -1).

  `exact_search` scores whole blocks of documents, and a dot product's last bit can
  depend on the block's shape; scoring the selected pairs one by one (a fixed-shape
  vmap) makes the scores of a run the same however the corpus was chunked, searched on
  how many devices, or split over hosts.
  """
  q_emb = np.asarray(q_emb)
  q_mask, d_mask = _check_inputs(q_emb, d_emb, scoring, q_mask, d_mask)
  n_q, k = indices.shape
  out = np.full((n_q, k), -np.inf, np.float32)
  if n_q == 0 or k == 0:
    return out
  per_query = k * int(np.prod(d_emb.shape[1:]))
  bs = max(1, min(n_q, max_elements // max(per_query, 1)))
  safe = np.maximum(indices, 0)
  for start in range(0, n_q, bs):
    rows = np.arange(start, min(start + bs, n_q))
    pad = bs - len(rows)
    q_rows = np.pad(rows, (0, pad))
    cand = np.pad(safe[rows], ((0, pad), (0, 0)))
    d = jnp.asarray(np.asarray(d_emb[cand.reshape(-1)]).reshape((bs, k) + tuple(d_emb.shape[1:])))
    qm = dm = None
    if scoring == "maxsim":
      qm = jnp.asarray(q_mask[q_rows])
      dm = jnp.asarray(np.asarray(d_mask[cand.reshape(-1)]).reshape((bs, k) + tuple(d_mask.shape[1:])))
    s = np.asarray(_pair_scores(jnp.asarray(q_emb[q_rows]), qm, d, dm, scoring=scoring))
    out[rows] = s[:len(rows)]
  return np.where(indices >= 0, out, -np.inf).astype(np.float32)


# ---------------------------------------------------------------------------
# Reranking.


@functools.partial(jax.jit, static_argnames=("scoring",))
def _rerank_step(q, q_mask, d, d_mask, *, scoring):
  """q [B, D] / [B, Lq, D]; d [B, C, D] / [B, C, Ld, D] -> scores [B, C]."""
  def one(q1, m1, d1, dm1):  # m1 and dm1 are None for dense scoring
    return scoring_lib.scores(q1[None], None if m1 is None else m1[None], d1, dm1, scoring)[0]
  return jax.vmap(one)(q, q_mask, d, d_mask)


@functools.partial(jax.jit, static_argnames=("scoring",))
def _pair_scores(q, q_mask, d, d_mask, *, scoring):
  """Like `_rerank_step`, but every score as its own reduction (no matrix product, whose
  last bit can depend on where in a block a document sits): q [B, D] / [B, Lq, D],
  d [B, C, D] / [B, C, Ld, D] -> [B, C]."""
  q = q.astype(jnp.float32)
  d = d.astype(jnp.float32)
  if scoring == "dense":
    return jnp.sum(q[:, None, :] * d, axis=-1)

  def one_candidate(q1, m1, d1, dm1):   # q1 [Lq, D], d1 [Ld, D] -> scalar
    sim = jnp.sum(q1[:, None, :] * d1[None, :, :], axis=-1)          # [Lq, Ld]
    best = jnp.max(jnp.where(dm1[None, :] > 0, sim, -jnp.inf), axis=-1)
    best = jnp.where((m1 > 0) & jnp.isfinite(best), best, 0.0)
    return jnp.sum(best)

  def per_query(q1, m1, d1, dm1):   # one candidate at a time: memory Lq x Ld x D
    return jax.lax.map(lambda c: one_candidate(q1, m1, *c), (d1, dm1))

  return jax.lax.map(lambda a: per_query(*a), (q, q_mask, d, d_mask))


def _as_index(ids: Union[Sequence[str], Mapping[str, int]]) -> Mapping[str, int]:
  if isinstance(ids, Mapping):
    return ids
  return {x: i for i, x in enumerate(ids)}


def _examples(items: Sequence[str], limit: int = 3) -> str:
  return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def rerank(run: Mapping[str, Mapping[str, float]],
           q_ids: Union[Sequence[str], Mapping[str, int]], q_emb: Array,
           doc_ids: Union[Sequence[str], Mapping[str, int]], d_emb: Array, *,
           scoring: str = "dense", q_mask: Optional[Array] = None,
           d_mask: Optional[Array] = None, depth: Optional[int] = None,
           batch_size: int = 32) -> Run:
  """Rescores the documents of an input run (e.g. BM25 top-100) with the embeddings.

  Never adds a document: the output for a query holds a subset of its input documents.
  Documents missing from `doc_ids` and queries missing from `q_ids` are dropped with one
  summarising DataWarning each. `depth` keeps only each query's top `depth` input
  documents (in trec_eval order: score descending, ties by doc_id descending).

  Args:
    run: {qid: {doc_id: score}}, e.g. from `load_run`.
    q_ids, doc_ids: row ids of `q_emb` / `d_emb` (a sequence, or a mapping id -> row).
    q_emb, d_emb, q_mask, d_mask, scoring: as for `exact_search`.
    batch_size: queries scored per jitted call (padded, so it compiles once per call).

  Returns:
    {qid: {doc_id: new score}}.
  """
  q_host = np.asarray(q_emb)
  q_mask, d_mask = _check_inputs(q_host, d_emb, scoring, q_mask, d_mask)
  q_index, d_index = _as_index(q_ids), _as_index(doc_ids)
  missing_q = [q for q in run if q not in q_index]
  missing_d: Dict[str, None] = {}
  missing_n = 0
  work: List[Tuple[str, int, List[str], List[int]]] = []
  for qid, docs in run.items():
    if qid not in q_index:
      continue
    items = ranked(docs)
    if depth is not None:
      items = items[:depth]
    names, rows = [], []
    for doc_id, _ in items:
      row = d_index.get(doc_id)
      if row is None:
        missing_d[doc_id] = None
        missing_n += 1
      else:
        names.append(doc_id)
        rows.append(row)
    if rows:
      work.append((qid, q_index[qid], names, rows))
  if missing_q:
    warnings.warn(f"rerank: dropped {len(missing_q)} run queries without embeddings "
                  f"(e.g. {_examples(missing_q)})", DataWarning, stacklevel=2)
  if missing_d:
    warnings.warn(f"rerank: dropped {missing_n} run entries of {len(missing_d)} documents "
                  f"not in the corpus (e.g. {_examples(list(missing_d))})", DataWarning,
                  stacklevel=2)
  out: Run = {qid: {} for qid in run if qid in q_index}
  if not work:
    return out
  width = max(len(rows) for *_, rows in work)
  bs = max(1, min(batch_size, len(work)))
  for start in range(0, len(work), bs):
    part = work[start:start + bs]
    q_rows = np.zeros(bs, np.int64)
    d_rows = np.zeros((bs, width), np.int64)
    for r, (_, qrow, _, rows) in enumerate(part):
      q_rows[r] = qrow
      d_rows[r, :len(rows)] = rows
    q = jnp.asarray(q_host[q_rows])
    d = jnp.asarray(np.asarray(d_emb[d_rows.reshape(-1)]).reshape(
        (bs, width) + tuple(d_emb.shape[1:])))
    qm = dm = None
    if scoring == "maxsim":
      qm = jnp.asarray(q_mask[q_rows])
      dm = jnp.asarray(np.asarray(d_mask[d_rows.reshape(-1)]).reshape(
          (bs, width) + tuple(d_mask.shape[1:])))
    scores = np.asarray(_rerank_step(q, qm, d, dm, scoring=scoring))
    for r, (qid, _, names, _) in enumerate(part):
      out[qid] = {name: float(s) for name, s in zip(names, scores[r, :len(names)])}
  return out


# ---------------------------------------------------------------------------
# Sharded search: each host searches its slice of the corpus; the top-k lists merge.


def merge_top_k(scores: Sequence[np.ndarray], indices: Sequence[np.ndarray],
                k: int) -> Tuple[np.ndarray, np.ndarray]:
  """The global top-k of per-shard top-k lists.

  Args:
    scores: per shard, float [Q, k_i] (best first).
    indices: per shard, int [Q, k_i] global document indices (-1 = no document).
    k: results per query.

  Returns:
    (scores [Q, k], indices [Q, k]) as `exact_search` returns them over the whole
    collection: best first, equal scores ordered by lower document index, -1 (score
    -inf) where fewer than k documents exist.
  """
  s = np.concatenate([np.asarray(x, np.float32) for x in scores], axis=1)
  i = np.concatenate([np.asarray(x, np.int64) for x in indices], axis=1)
  s = np.where(i >= 0, s, -np.inf).astype(np.float32)
  tie = np.where(i >= 0, i, np.iinfo(np.int64).max)
  order = np.lexsort((tie, -s), axis=-1)[:, :k]
  top_s = np.take_along_axis(s, order, axis=1)
  top_i = np.take_along_axis(i, order, axis=1)
  top_i[~np.isfinite(top_s)] = -1
  if top_s.shape[1] < k:
    pad = k - top_s.shape[1]
    top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
    top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
  return top_s, top_i
