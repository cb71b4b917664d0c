"""English retrieval training data (Tevatron JSONL, query/positive/negative TSV) as bucketed batches."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from optical_jax import errors, fingerprint
from optical_jax.data import io
from optical_jax.data.beir import passage_text
from optical_jax.data.io import PathLike
from optical_jax.data.pipeline import (TAG_ROW_CHOICES, Batch, BatchIterator, Ragged, TokenizerLike, check_batching,
                                       joint_buckets, seeded_rng, side_buckets, tokenize_texts)
from optical_jax.errors import InputError

POSITIVE_CHOICES = ("random", "first")


@dataclasses.dataclass
class RetrievalExamples:
  """(query, positives, negatives) examples; passages are stored once in `passages`.

  `positives[i]` / `negatives[i]` are indices into `passages`. `stats`: `read`
  (records), `skipped_empty` (records dropped under empty='skip': empty query or no
  non-empty positive), `examples` (kept).
  """

  name: str
  queries: List[str]
  passages: List[str]
  positives: List[List[int]]
  negatives: List[List[int]]
  stats: Dict[str, int] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.queries)

  def content_hash(self) -> str:
    h = fingerprint.texts(self.queries + self.passages, n=None)
    links = fingerprint.texts([",".join(map(str, p)) + "|" + ",".join(map(str, n))
                               for p, n in zip(self.positives, self.negatives)], n=None)
    return f"sha256:{h}:{links}"


class _Builder(io.EmptyPolicy):
  """Collects examples, interning passage texts."""

  def __init__(self, empty: str):
    super().__init__(empty, "examples")
    self.queries: List[str] = []
    self.passages: List[str] = []
    self._ids: Dict[str, int] = {}
    self.positives: List[List[int]] = []
    self.negatives: List[List[int]] = []

  def _intern(self, text: str) -> int:
    i = self._ids.get(text)
    if i is None:
      i = self._ids[text] = len(self.passages)
      self.passages.append(text)
    return i

  def add(self, query: str, positives: Sequence[str], negatives: Sequence[str],
          path: str, line: int) -> None:
    query = query.strip()
    pos = [p.strip() for p in positives if p.strip()]
    neg = [n.strip() for n in negatives if n.strip()]
    problem = "empty query" if not query else ("no non-empty positive passage" if not pos else None)
    if not self.admit(problem, path, line):
      return
    self.queries.append(query)
    self.positives.append([self._intern(p) for p in pos])
    self.negatives.append([self._intern(n) for n in neg])

  def result(self, name: str) -> RetrievalExamples:
    return RetrievalExamples(name, self.queries, self.passages, self.positives, self.negatives,
                             {"read": self.read, "skipped_empty": self.skipped,
                              "examples": len(self.queries)})


def _passages(obj: Mapping[str, Any], field: str, path: str, line: int, required: bool,
              title_sep: Optional[str]) -> List[str]:
  value = io.field(obj, field, path, line, required=required)
  if value is None:  # absent and optional, or null: no passages
    return []
  if not isinstance(value, list):
    raise InputError(f"field {field!r} must be a list of passages, found {type(value).__name__}", path, line)
  out = []
  for j, p in enumerate(value):
    if isinstance(p, str):
      out.append(p)
      continue
    if not isinstance(p, dict) or not isinstance(p.get("text"), str):
      raise InputError(f"{field}[{j}] must be an object with a string 'text'", path, line)
    title = p.get("title") or ""
    if not isinstance(title, str):
      raise InputError(f"{field}[{j}].title must be a string", path, line)
    out.append(passage_text(title, p["text"], title_sep))
  return out


def read_tevatron(path: Union[PathLike, Sequence[PathLike]], *, title_sep: Optional[str] = " ",
                  empty: str = "error", name: Optional[str] = None) -> RetrievalExamples:
  """Tevatron JSONL: `{query, positive_passages: [{docid, title, text}], negative_passages: [...]}`.

  A passage's text is `title + title_sep + text` (`title_sep=None` drops titles);
  `negative_passages` may be missing or empty.
  """
  b = _Builder(empty)
  paths = io.as_paths(path)
  for p in paths:
    for line, obj in io.iter_json_objects(p):
      query = io.string_field(obj, "query", p, line)
      b.add(query, _passages(obj, "positive_passages", p, line, True, title_sep),
            _passages(obj, "negative_passages", p, line, False, title_sep), p, line)
  return b.result(name or os.path.basename(paths[0]))


def read_triples(path: Union[PathLike, Sequence[PathLike]], *, empty: str = "error",
                 name: Optional[str] = None) -> RetrievalExamples:
  """TSV lines `query \\t positive \\t negative` (or `query \\t positive`: no hard negative)."""
  b = _Builder(empty)
  paths = io.as_paths(path)
  for p in paths:
    for line, f in io.iter_tsv(p, (2, 3), layout="query<TAB>positive[<TAB>negative]"):
      b.add(f[0], [f[1]], f[2:], p, line)
  return b.result(name or os.path.basename(paths[0]))


def load_retrieval_source(spec: Mapping[str, Any]) -> RetrievalExamples:
  """`{'type': 'tevatron' | 'triples', 'path': P or [P...], 'empty', 'title_sep', 'take', 'label'}`."""
  kind = errors.check_mapping(spec, "a retrieval source").get("type")
  allowed = {"type", "path", "empty", "take", "label"} | ({"title_sep"} if kind == "tevatron" else set())
  if kind not in ("tevatron", "triples"):
    raise InputError(f"retrieval source type must be 'tevatron' or 'triples', got {kind!r}")
  errors.check_keys(spec, allowed, f"retrieval source ({kind})", required=("path",))
  empty = spec.get("empty", "error")
  if kind == "tevatron":
    ex = read_tevatron(spec["path"], title_sep=spec.get("title_sep", " "), empty=empty)
  else:
    ex = read_triples(spec["path"], empty=empty)
  n = spec.get("take")
  if n is not None and errors.check_int(n, "take") < len(ex):
    stats = dict(ex.stats, taken_from=len(ex), examples=n)
    ex = RetrievalExamples(ex.name, ex.queries[:n], ex.passages, ex.positives[:n], ex.negatives[:n], stats)
  if spec.get("label"):
    ex.name = spec["label"]
  return ex


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
  """Batching of (query, positive, negatives) for teacher training.

  `p_buckets` are passage lengths, `q_buckets` query lengths (one length, or as many as
  `p_buckets`); an example's bucket fits its query and all its candidate passages.
  `num_negatives` hard negatives per query (0: in-batch negatives only, no `n_*` keys);
  they are drawn per epoch without replacement, cycling when a query has fewer.
  `positive` is 'random' (one positive drawn per epoch) or 'first'. `host_shards`: each
  host draws from its own fixed share of the examples (`pipeline.BatchIterator`).
  """

  global_batch: int
  q_max_length: int = 32
  p_max_length: int = 256
  q_buckets: Tuple[int, ...] = (32,)
  p_buckets: Tuple[int, ...] = (64, 128, 256)
  q_prefix: str = ""
  p_prefix: str = ""
  num_negatives: int = 0
  positive: str = "random"
  remainder: str = "pad"
  epoch_size: Optional[int] = None
  seed: int = 0
  cache_dir: Optional[str] = None
  host_shards: bool = False

  def __post_init__(self):
    check_batching(self.global_batch, self.remainder, self.epoch_size)
    errors.check_int(self.seed, "seed", None)
    errors.check_int(self.num_negatives, "num_negatives")
    if self.positive not in POSITIVE_CHOICES:
      raise InputError(f"positive must be 'random' or 'first', got {self.positive!r}")
    for k in ("q_buckets", "p_buckets"):  # lists from a mapping: tuples keep the config hashable
      object.__setattr__(self, k, tuple(getattr(self, k)))


class RetrievalBatches(BatchIterator):
  """Batches `q_ids, q_mask` [b, Lq], `p_ids, p_mask` [b, Lp], and (num_negatives > 0)
  `n_ids, n_mask` [b, num_negatives, Lp], all int32, plus `valid` float32 [b]."""

  def __init__(self, data: Union[RetrievalExamples, Sequence[RetrievalExamples]], tokenizer: TokenizerLike,
               config: Union[RetrievalConfig, Mapping[str, Any]], *, ratios: Optional[Sequence[float]] = None,
               process_index: int = 0, process_count: int = 1):
    cfg = errors.build(RetrievalConfig, config, "retrieval batching config")
    sources = [data] if isinstance(data, RetrievalExamples) else list(data)
    if not sources:
      raise InputError("no retrieval training source")
    for s in sources:
      if len(s) == 0:
        raise InputError(f"retrieval source {s.name!r} has no examples (stats: {s.stats})")
    k = cfg.num_negatives
    if k:
      for s in sources:
        lacking = sum(1 for n in s.negatives if not n)
        if lacking:
          raise InputError(f"{lacking} of {len(s)} examples have no hard negative but "
                           f"num_negatives={k} (use 0 for in-batch negatives only)", s.name)
    self.config = cfg
    self.sources = sources
    p_b = side_buckets(cfg.p_buckets, cfg.p_max_length, "passage")
    q_b = side_buckets(cfg.q_buckets, cfg.q_max_length, "query", count=len(p_b))
    self.q_bucket_lengths, self.p_bucket_lengths = q_b, p_b
    qs, ps, pos, neg = [], [], [], []
    base = 0
    for s in sources:
      qs.append(tokenize_texts(s.queries, tokenizer, cfg.q_max_length, cfg.q_prefix, cfg.cache_dir))
      ps.append(tokenize_texts(s.passages, tokenizer, cfg.p_max_length, cfg.p_prefix, cfg.cache_dir))
      pos.extend([[i + base for i in row] for row in s.positives])
      neg.extend([[i + base for i in row] for row in s.negatives])
      base += len(s.passages)
    self.q, self.p = Ragged.concat(qs), Ragged.concat(ps)
    self.pos = Ragged.from_lists(pos)
    self.neg = Ragged.from_lists(neg)
    self._pad = int(tokenizer.pad_id)
    p_len = self.p.lengths
    cand_max = np.zeros(len(self.q), np.int64)
    for table in (self.pos, self.neg) if k else (self.pos,):
      if len(table.flat):
        seg = np.repeat(np.arange(len(table)), table.lengths)
        np.maximum.at(cand_max, seg, p_len[table.flat])
    bucket_of = joint_buckets([self.q.lengths, cand_max], [q_b, p_b])
    if ratios is None:
      ratios = [float(len(s)) for s in sources]
    if len(ratios) != len(sources) or any(not float(r) > 0 for r in ratios):
      raise InputError(f"need one positive ratio per retrieval source, got {list(ratios)}")
    total = float(sum(ratios))
    ratios = [float(r) / total for r in ratios]
    payload = {"kind": "retrieval", "content": [s.content_hash() for s in sources],
               "tokenizer": tokenizer.fingerprint, "ratios": ratios, "k": k, "positive": cfg.positive,
               "q": [q_b, cfg.q_max_length, cfg.q_prefix], "p": [p_b, cfg.p_max_length, cfg.p_prefix]}
    super().__init__(bucket_of=bucket_of, sizes=[len(s) for s in sources], ratios=ratios,
                     num_buckets=len(p_b), global_batch=cfg.global_batch, seed=cfg.seed,
                     assemble=self._make, fingerprint_payload=payload, epoch_size=cfg.epoch_size,
                     remainder=cfg.remainder, process_index=process_index, process_count=process_count,
                     host_shards=cfg.host_shards)

  def _make(self, idx: np.ndarray, bucket: int, local: slice, where: Tuple[int, int, int]) -> Batch:
    seed, epoch, index = where
    rng = seeded_rng(seed, TAG_ROW_CHOICES, epoch, index)
    B = len(idx)
    # Random draws for the whole global batch, so every host agrees; then keep local rows.
    u_pos = rng.random(B)
    n_pos = self.pos.lengths[idx]
    pick = np.zeros(B, np.int64) if self.config.positive == "first" else np.minimum(
        (u_pos * n_pos).astype(np.int64), n_pos - 1)
    p_rows = self.pos.flat[self.pos.offsets[idx] + pick]
    Lq, Lp = self.q_bucket_lengths[bucket], self.p_bucket_lengths[bucket]
    q_ids, q_mask = self.q.gather(idx[local], Lq, self._pad)
    p_ids, p_mask = self.p.gather(p_rows[local], Lp, self._pad)
    out = {"q_ids": q_ids, "q_mask": q_mask, "p_ids": p_ids, "p_mask": p_mask}
    k = self.config.num_negatives
    if k:
      n_neg = self.neg.lengths[idx]
      width = max(int(n_neg.max()), 1)
      keys = rng.random((B, width))
      keys[np.arange(width)[None, :] >= n_neg[:, None]] = np.inf
      order = np.argsort(keys, axis=1, kind="stable")
      j = np.arange(k)[None, :] % n_neg[:, None]  # cycle when fewer than k negatives
      chosen = np.take_along_axis(order, j, axis=1)
      n_rows = self.neg.flat[self.neg.offsets[idx][:, None] + chosen][local]
      b = n_rows.shape[0]
      n_ids, n_mask = self.p.gather(n_rows.reshape(-1), Lp, self._pad)
      out["n_ids"], out["n_mask"] = n_ids.reshape(b, k, Lp), n_mask.reshape(b, k, Lp)
    return out

  def stats(self) -> Dict[str, Any]:
    return {"sources": [{"name": s.name, **s.stats} for s in self.sources], "per_epoch": self.counts,
            "bucket_examples": np.bincount(self.bucket_of, minlength=self.num_buckets).tolist(),
            "batches_per_epoch": self.batches_per_epoch(0)}
