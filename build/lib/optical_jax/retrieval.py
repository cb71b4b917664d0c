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

from optical_jax import fingerprint, scoring as scoring_lib
from optical_jax.data.beir import DataWarning, Run, ranked
from optical_jax.fileio import save_npy, write_json

Array = Union[np.ndarray, jax.Array]
TokenizeFn = Callable[[List[str]], List[List[int]]]
EmbedFn = Callable[[np.ndarray, np.ndarray], Any]


class TokenEmbeddings(NamedTuple):
  """Token-level embeddings for MaxSim: `emb` [N, L, D] (zero past each text's end), `mask` [N, L] int8."""
  emb: np.ndarray
  mask: np.ndarray


# ---------------------------------------------------------------------------
# Encoding.


def _bucket(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f"a text has {length} tokens, more than the largest length bucket "
                   f"{buckets[-1]}; tokenize_fn must truncate")


def encode_texts(texts: Sequence[str], tokenize_fn: TokenizeFn, embed_fn: EmbedFn, *,
                 batch_size: int, length_buckets: Sequence[int], pad_id: int = 0,
                 dtype: Any = np.float32, token_dtype: Any = np.float16,
                 progress: bool = True, desc: str = "encoding"
                 ) -> Union[np.ndarray, TokenEmbeddings]:
  """Embeds `texts` in batches of static shape, returning rows in the input order.

  Texts are sorted by token length (longest first, so memory trouble shows up at once);
  each batch is padded to the smallest bucket length >= its longest sequence and to the
  full `batch_size` rows, so a jitted `embed_fn` compiles once per bucket used. Padding
  rows are stripped before the results are stored.

  Args:
    texts: the strings to embed.
    tokenize_fn: list[str] -> list[list[int]], already truncated to <= max(length_buckets).
    embed_fn: (ids int32 [B, L], mask int32 [B, L]) -> [B, D] (one vector per text) or
      [B, L, D] (token vectors for MaxSim); for token vectors it may instead return
      (emb [B, L, D], mask [B, L]) to mark which positions count (default: the input mask).
    batch_size: rows per call of `embed_fn`.
    length_buckets: allowed padded lengths.
    pad_id: token id used for padding.
    dtype: storage dtype of dense vectors.
    token_dtype: storage dtype of token vectors (float16 halves the memory of a collection).
    progress: show progress (a bar on a terminal, plain lines in logs); desc: its label.

  Returns:
    dense: np.ndarray [N, D] of `dtype`.
    token-level: TokenEmbeddings(emb [N, Lmax, D] of `token_dtype`, mask [N, Lmax] int8),
      where Lmax is the longest tokenized text (not the largest bucket) and vectors past
      a text's end are zero.
  """
  texts = list(texts)
  if not texts:
    raise ValueError("encode_texts got no texts")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
  n = len(texts)
  order = np.argsort(-lengths, kind="stable")
  l_max = max(int(lengths.max()), 1)
  out = out_mask = None
  token_level = False
  with progress_bar(total=n, desc=desc, unit="text", disable=not progress, leave=False) as bar:
    for start in range(0, n, batch_size):
      rows = order[start:start + batch_size]
      width = _bucket(int(lengths[rows].max()), buckets)
      tok = np.full((batch_size, width), pad_id, dtype=np.int32)
      mask = np.zeros((batch_size, width), dtype=np.int32)
      for r, i in enumerate(rows):
        tok[r, :lengths[i]] = ids[i]
        mask[r, :lengths[i]] = 1
      result = embed_fn(tok, mask)
      emb_mask = None
      if isinstance(result, tuple):
        result, emb_mask = result
      emb = np.asarray(result)
      if emb.shape[0] != batch_size or emb.ndim not in (2, 3):
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
        out[rows, :w] = np.where(m[..., None], emb[:, :w], 0).astype(token_dtype)
        out_mask[rows, :w] = m
      else:
        out[rows] = emb
      bar.update(len(rows))
  return TokenEmbeddings(out, out_mask) if token_level else out


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
  An entry is `<name>-<hash>.<i>.npy` per array (each written atomically) plus a JSON
  manifest `<name>-<hash>.json` written last, so an interrupted write is never reused.
  A cache entry that cannot be read is recomputed with a warning. With `cache_dir=None`
  this just calls `compute_fn`.

  compute_fn must return an np.ndarray, a TokenEmbeddings or a tuple of arrays; the same
  kind comes back. `mmap=True` memory-maps the arrays read from the cache.
  """
  if cache_dir is None:
    return compute_fn()
  cache_dir = os.fspath(cache_dir)
  stem = os.path.join(cache_dir, f"{name}-{cache_key(key_parts)}")
  manifest_path = stem + ".json"
  if os.path.exists(manifest_path):
    try:
      with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
      arrays = tuple(np.load(f"{stem}.{i}.npy", mmap_mode="r" if mmap else None,
                             allow_pickle=False) for i in range(manifest["num_arrays"]))
      kind = manifest["kind"]
      if kind == "array":
        return arrays[0]
      return TokenEmbeddings(*arrays) if kind == "token" else arrays
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
      warnings.warn(f"{manifest_path}: unreadable cache entry ({e}); recomputing",
                    DataWarning, stacklevel=2)
  value = compute_fn()
  if isinstance(value, TokenEmbeddings):
    kind, arrays = "token", tuple(value)
  elif isinstance(value, tuple):
    kind, arrays = "tuple", value
  else:
    kind, arrays = "array", (value,)
  arrays = tuple(np.asarray(a) for a in arrays)
  for i, a in enumerate(arrays):
    save_npy(f"{stem}.{i}.npy", a)
  write_json(manifest_path, {"kind": kind, "num_arrays": len(arrays),
                             "shapes": [list(a.shape) for a in arrays],
                             "dtypes": [str(a.dtype) for a in arrays],
                             "key_parts": json.loads(fingerprint.canonical_json(dict(key_parts)))})
  return value if kind != "array" else arrays[0]


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
  """`exact_search` followed by `to_run`: the top-k run for every query."""
  scores, indices = exact_search(q_emb, d_emb, top_k, **kwargs)
  return to_run(qids, doc_ids, scores, indices)


# ---------------------------------------------------------------------------
# Reranking.


@functools.partial(jax.jit, static_argnames=("scoring",))
def _rerank_step(q, q_mask, d, d_mask, *, scoring):
  """q [B, D] / [B, Lq, D]; d [B, C, D] / [B, C, Ld, D] -> scores [B, C]."""
  def one(q1, m1, d1, dm1):  # m1 and dm1 are None for dense scoring
    return scoring_lib.scores(q1[None], None if m1 is None else m1[None], d1, dm1, scoring)[0]
  return jax.vmap(one)(q, q_mask, d, d_mask)


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
