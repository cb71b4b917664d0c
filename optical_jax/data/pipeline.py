"""Training batches: cached tokenisation, length bucketing, deterministic resumable mixing, host sharding."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from optical_jax import array_cache, errors, fingerprint
from optical_jax import buckets as buckets_lib
from optical_jax.data.bitext import Bitext, Mixture, mix
from optical_jax.errors import InputError


CACHE_FORMAT = 1
Batch = Dict[str, np.ndarray]

REMAINDERS = ("pad", "drop")
# Seed-sequence tags, so the different random streams never coincide.
TAG_EPOCH_SHUFFLE = 0
TAG_SOURCE_PERM = 1
TAG_ROW_CHOICES = 2
TAG_CODE_SWITCH = 3   # optical_jax.data.codeswitch: per-example word switches
TAG_HOST_SCHEDULE = 4  # host shards: the order of an epoch's batches


class TokenizerLike(Protocol):
  fingerprint: str
  pad_id: int

  def encode_batch(self, texts: Sequence[str], max_length: int, prefix: str = "") -> List[List[int]]:
    ...


# --- tokenised text tables --------------------------------------------------------------------


@dataclasses.dataclass
class Ragged:
  """Variable-length rows stored flat: row i is `flat[offsets[i]:offsets[i+1]]`. The one
  ragged storage of the project: token ids (flat int32 [total]) here, token vectors (flat
  [total, D], `TokenVectors`) for the teacher-token cache."""

  flat: np.ndarray  # [total] int32 ids, or [total, D] vectors
  offsets: np.ndarray  # int64 [n + 1]

  def __len__(self) -> int:
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def rows(self) -> List[np.ndarray]:
    """Each row's ids (views into `flat`)."""
    return [self.flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

  @classmethod
  def from_lists(cls, rows: Sequence[Sequence[int]]) -> "Ragged":
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return cls(flat, offsets)

  @classmethod
  def concat(cls, parts: Sequence["Ragged"]) -> "Ragged":
    if len(parts) == 1:
      return parts[0]
    flat = np.concatenate([p.flat for p in parts]).astype(np.int32, copy=False)
    offs = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
      offs.append(p.offsets[1:] + base)
      base += int(p.offsets[-1])
    return cls(flat, np.concatenate(offs))

  def row(self, i: int) -> np.ndarray:
    return self.flat[self.offsets[i]:self.offsets[i + 1]]

  def gather(self, idx: np.ndarray, length: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rows `idx` padded with `pad_id` (or cut) to `length`: (values [len(idx), length, ...]
    in the stored dtype, mask int32 [len(idx), length])."""
    idx = np.asarray(idx, dtype=np.int64)
    starts = self.offsets[idx]
    lens = np.minimum(self.offsets[idx + 1] - starts, length)
    pos = np.arange(length, dtype=np.int64)
    mask = pos[None, :] < lens[:, None]
    shape = mask.shape + self.flat.shape[1:]
    if len(self.flat) == 0:
      return np.full(shape, pad_id, self.flat.dtype), mask.astype(np.int32)
    src = np.where(mask, starts[:, None] + pos[None, :], 0)
    keep = mask.reshape(mask.shape + (1,) * (self.flat.ndim - 1))
    values = np.where(keep, self.flat[src], np.asarray(pad_id, self.flat.dtype))
    return values.astype(self.flat.dtype, copy=False), mask.astype(np.int32)


def tokenize_texts(texts: Sequence[str], tokenizer: TokenizerLike, max_length: int, prefix: str = "",
                   cache_dir: Optional[str] = None, chunk_size: int = 4096) -> Ragged:
  """Token ids (special tokens included, truncated to `max_length`) for each text, cached.

  With `cache_dir`, the result is an `array_cache` entry `tok-<key>/` (written
  atomically, checked against its manifest's checksums before use) under a key from the
  tokenizer fingerprint, the texts' content hash, `max_length` and `prefix`; a later
  call with the same key loads it without calling the tokenizer. A damaged entry is
  named in one warning, moved aside and rebuilt.
  """
  errors.check_int(max_length, "max_length", 2)
  key = fingerprint.digest({"format": CACHE_FORMAT, "tokenizer": tokenizer.fingerprint,
                            "texts": fingerprint.texts(list(texts), n=None),
                            "max_length": max_length, "prefix": prefix}, n=None)

  def make():
    rows: List[List[int]] = []
    for start in range(0, len(texts), chunk_size):
      rows.extend(tokenizer.encode_batch(list(texts[start:start + chunk_size]), max_length, prefix))
    ragged = Ragged.from_lists(rows)
    return {"flat": ragged.flat, "offsets": ragged.offsets}

  arrays, _ = array_cache.cached(
      None if cache_dir is None else os.fspath(cache_dir), "tok", key[:32], make,
      meta={"count": len(texts), "max_length": max_length, "prefix": prefix,
            "tokenizer": tokenizer.fingerprint})
  if len(arrays["offsets"]) != len(texts) + 1:   # a key collision: never silently used
    raise InputError(f"token cache entry tok-{key[:32]} holds {len(arrays['offsets']) - 1} rows "
                     f"for {len(texts)} texts; delete it", cache_dir)
  return Ragged(arrays["flat"].astype(np.int32, copy=False),
                arrays["offsets"].astype(np.int64, copy=False))


# --- bucketing -----------------------------------------------------------------------------


def side_buckets(buckets: Sequence[int], max_length: int, what: str,
                 count: Optional[int] = None) -> Tuple[int, ...]:
  """Bucket lengths for one side: `buckets` clipped to `max_length`, whose last must reach it.

  With `count`, a single length is repeated `count` times (one shape for that side) and
  any other number of lengths than `count` is an error.
  """
  b = tuple(buckets)
  if not b or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b):
    raise InputError(f"{what} buckets must be a non-empty list of positive integers, got {list(b)}")
  if any(x > y for x, y in zip(b, b[1:])):
    raise InputError(f"{what} buckets must be increasing, got {list(b)}")
  if b[-1] < max_length:
    raise InputError(f"largest {what} bucket {b[-1]} is shorter than its max_length {max_length}")
  if count is not None and len(b) != count:
    if len(b) != 1:
      raise InputError(f"{what} buckets have {len(b)} lengths but the other side has {count}")
    b = b * count
  return tuple(min(x, max_length) for x in b)


def joint_buckets(lengths: Sequence[np.ndarray], bucket_lengths: Sequence[Tuple[int, ...]]) -> np.ndarray:
  """Per example, the smallest bucket index whose length fits every side (int32 [n])."""
  out = None
  for lens, bl in zip(lengths, bucket_lengths):
    try:
      i = buckets_lib.index(lens, bl)
    except ValueError as e:  # a tokenizer ignored max_length
      raise InputError(str(e)) from None
    out = i if out is None else np.maximum(out, i)
  return out.astype(np.int32)


def epoch_counts(ratios: Sequence[float], epoch_size: int) -> List[int]:
  """Examples drawn per source per epoch: `ratios * epoch_size`, rounded by largest remainder."""
  raw = np.asarray(ratios, dtype=np.float64) * epoch_size
  counts = np.floor(raw).astype(np.int64)
  short = epoch_size - int(counts.sum())
  if short > 0:
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:short]] += 1
  if np.any(counts == 0):
    raise InputError(f"epoch_size {epoch_size} is too small for mixture ratios {list(ratios)}: "
                     "a source would never be sampled")
  return [int(c) for c in counts]


def check_batching(global_batch: Any, remainder: Any, epoch_size: Any) -> None:
  """Range checks shared by the batching configs."""
  errors.check_int(global_batch, "global_batch", 1)
  if remainder not in REMAINDERS:
    raise InputError(f"remainder must be 'pad' or 'drop', got {remainder!r}")
  if epoch_size is not None:
    errors.check_int(epoch_size, "epoch_size", 1)


def seeded_rng(*parts: int) -> np.random.Generator:
  """A Generator seeded by a sequence of integers (e.g. seed, stream tag, epoch)."""
  return np.random.default_rng(np.random.SeedSequence([int(p) for p in parts]))


@dataclasses.dataclass
class EpochPlan:
  """The batches of one epoch: bucket index, global example indices and real rows per batch."""

  bucket: np.ndarray  # int32 [num_batches]
  indices: np.ndarray  # int64 [num_batches, global_batch]
  valid: np.ndarray  # bool [num_batches, global_batch]: False for filler rows

  def __len__(self) -> int:
    return len(self.bucket)


class BatchIterator:
  """Deterministic, resumable iterator over bucketed global batches, yielding this host's rows.

  Epoch `e` draws `counts[k]` examples from source `k`, continuing that source's own
  stream of permutations (permutation `q` of source k is seeded by (seed, k, q), so a
  source is seen in full before any example repeats, and ratios are exact per epoch);
  the epoch's examples are then shuffled with a Generator seeded by (seed, epoch).
  Walking that order, each example joins its bucket; a bucket emits a batch whenever
  it holds `global_batch` examples. Leftovers at the end of the epoch are either padded
  (remainder='pad': filler rows repeat the batch's first example and get valid=0) or
  dropped (remainder='drop'). Every host computes the same plan and keeps rows
  `[p * B / P, (p + 1) * B / P)` of each global batch.

  With `host_shards`, host p instead draws only from its own fixed share of the data
  (example i of each source belongs to host i mod P), as TFDS's per-process splits do,
  so per-host state such as the teacher-token cache covers 1/P of the data
  (`host_rows`). Each host's share of the epoch (the source streams above, over its
  rows, `counts[k] / P` each) is bucketed into local batches of B / P; bucket k gets
  the most (pad) or fewest (drop) local batches any host has, hosts short of them pad
  with valid=0 rows, and a seeded shuffle of (seed, epoch) orders the batches, so every
  host runs the same shape at every step. The data order then depends on P.

  The state `{'epoch', 'batch', 'fingerprint'}` is JSON-serialisable; `restore(state)`
  resumes with exactly the batches that would have followed, also under another
  process count (the fingerprint excludes the host layout; with `host_shards` it
  includes P, whose data order differs).

  `global_batch`, `seed`, `epoch_size` and `remainder` come from a config dataclass
  that has checked them (`check_batching`); this class checks the host layout.
  """

  def __init__(self, *, bucket_of: np.ndarray, sizes: Sequence[int], ratios: Sequence[float],
               num_buckets: int, global_batch: int, seed: int, assemble: Callable[..., Batch],
               fingerprint_payload: Mapping[str, Any], epoch_size: Optional[int] = None,
               remainder: str = "pad", process_index: int = 0, process_count: int = 1,
               host_shards: bool = False):
    if not isinstance(process_count, int) or process_count < 1 or not 0 <= process_index < process_count:
      raise InputError(f"bad host layout: process_index={process_index} process_count={process_count}")
    if global_batch % process_count:
      raise InputError(f"global_batch {global_batch} is not divisible by process_count {process_count}")
    self.sizes = [int(s) for s in sizes]
    if any(s <= 0 for s in self.sizes):
      raise InputError(f"every source needs at least one example, sizes {self.sizes}")
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
    if epoch_size is None:
      epoch_size = int(sum(self.sizes))
    self.counts = epoch_counts(ratios, epoch_size)
    self.bucket_of = np.asarray(bucket_of, dtype=np.int32)
    self.num_buckets = int(num_buckets)
    self.global_batch = global_batch
    self.seed = seed
    self.remainder = remainder
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch = global_batch // process_count
    self.host_shards = bool(host_shards) and process_count > 1
    if self.host_shards and min(self.sizes) < process_count:
      raise InputError(f"host_shards: every source needs at least one example per host, sizes "
                       f"{self.sizes}, {process_count} processes")
    self._assemble = assemble
    payload = dict(fingerprint_payload)
    payload.update(sizes=self.sizes, counts=self.counts, global_batch=global_batch, seed=seed,
                   remainder=remainder, num_buckets=self.num_buckets)
    if self.host_shards:
      payload.update(host_shards=process_count)
    self.fingerprint = fingerprint.digest(payload)
    self._plans: Dict[int, EpochPlan] = {}  # the two most recently used epochs
    self._epoch = 0
    self._batch = 0
    if len(self.plan(0)) == 0:
      raise InputError(f"no batch in an epoch: {epoch_size} examples per epoch, global_batch "
                       f"{global_batch}, remainder='drop' (per-bucket counts "
                       f"{np.bincount(self.bucket_of, minlength=self.num_buckets).tolist()})")

  # -- planning --

  def epoch_examples(self, epoch: int, host: Optional[int] = None) -> np.ndarray:
    """Global example indices of epoch `epoch`, in shuffled order (int64); with `host`,
    that host's share under `host_shards` (its rows only, about 1/P of the epoch)."""
    P = self.process_count
    parts = []
    for k, (n, c) in enumerate(zip(self.sizes, self.counts)):
      if host is not None:  # rows host, host + P, ... of the source; its share of the draws
        n, c = len(range(host, n, P)), c // P + (host < c % P)
      s = np.arange(epoch * c, (epoch + 1) * c, dtype=np.int64)
      q, r = s // n, s % n
      out = np.empty(c, dtype=np.int64)
      for qq in np.unique(q):
        tag = (k, qq) if host is None else (k, qq, P, host)
        perm = seeded_rng(self.seed, TAG_SOURCE_PERM, *tag).permutation(n)
        m = q == qq
        out[m] = perm[r[m]]
      if host is not None:
        out = out * P + host
      parts.append(out + self.offsets[k])
    order = np.concatenate(parts)
    tag = (epoch,) if host is None else (epoch, P, host)
    return order[seeded_rng(self.seed, TAG_EPOCH_SHUFFLE, *tag).permutation(len(order))]

  def host_rows(self, host: Optional[int] = None) -> Optional[np.ndarray]:
    """The global example indices host `host` (default: this one) can ever be given under
    `host_shards` (sorted); None when every host draws from all of them."""
    if not self.host_shards:
      return None
    host = self.process_index if host is None else host
    return np.concatenate([np.arange(host, n, self.process_count, dtype=np.int64) + o
                           for n, o in zip(self.sizes, self.offsets)])

  def plan(self, epoch: int) -> EpochPlan:
    """The batches of epoch `epoch` (cached for the current epoch)."""
    if epoch in self._plans:
      return self._plans[epoch]
    plan = self._host_plan(epoch) if self.host_shards else self._global_plan(epoch)
    if len(self._plans) >= 2:
      self._plans.pop(next(iter(self._plans)))
    self._plans[epoch] = plan
    return plan

  def _global_plan(self, epoch: int) -> EpochPlan:
    order = self.epoch_examples(epoch)
    b = self.bucket_of[order]
    B = self.global_batch
    keys, buckets, rows, valid = [], [], [], []
    for k in range(self.num_buckets):
      pos = np.flatnonzero(b == k)
      members = order[pos]
      full = len(members) // B
      if full:
        keys.append(pos[B - 1::B][:full])
        buckets.append(np.full(full, k, np.int32))
        rows.append(members[:full * B].reshape(full, B))
        valid.append(np.full(full, B, np.int32))
      rest = len(members) - full * B
      if rest and self.remainder == "pad":
        tail = members[full * B:]
        keys.append(np.array([len(order) + k]))
        buckets.append(np.array([k], np.int32))
        rows.append(np.concatenate([tail, np.full(B - rest, tail[0])])[None])
        valid.append(np.array([rest], np.int32))
    if keys:
      key = np.concatenate(keys)
      o = np.argsort(key, kind="stable")
      num_valid = np.concatenate(valid)[o]
      return EpochPlan(np.concatenate(buckets)[o], np.concatenate(rows)[o],
                       np.arange(B)[None] < num_valid[:, None])
    return EpochPlan(np.zeros(0, np.int32), np.zeros((0, B), np.int64), np.zeros((0, B), bool))

  def _host_plan(self, epoch: int) -> EpochPlan:
    """`host_shards`: every host's local batches, on a schedule all hosts share."""
    P, b, K = self.process_count, self.local_batch, self.num_buckets
    members = []  # [host][bucket] -> that host's examples of the bucket, in epoch order
    for p in range(P):
      order = self.epoch_examples(epoch, host=p)
      bk = self.bucket_of[order]
      members.append([order[bk == k] for k in range(K)])
    sizes = np.array([[len(m) for m in host] for host in members], np.int64)  # [P, K]
    if self.remainder == "pad":
      per_bucket = (-(-sizes // b)).max(0)
    else:
      per_bucket = (sizes // b).min(0)
    seq = np.repeat(np.arange(K, dtype=np.int32), per_bucket)
    seq = seq[seeded_rng(self.seed, TAG_HOST_SCHEDULE, epoch, P).permutation(len(seq))]
    indices = np.zeros((len(seq), self.global_batch), np.int64)
    valid = np.zeros((len(seq), self.global_batch), bool)
    where_of = [np.flatnonzero(seq == k) for k in range(K)]   # the steps of each bucket
    for p in range(P):
      cols = slice(p * b, (p + 1) * b)
      for k in range(K):
        take = int(per_bucket[k]) * b
        if not take:
          continue
        real = members[p][k][:take]
        rows = np.full(take, self._filler(p, k, real), np.int64)
        rows[:len(real)] = real
        where = where_of[k]
        indices[where, cols] = rows.reshape(-1, b)
        valid[where, cols] = (np.arange(take) < len(real)).reshape(-1, b)
    return EpochPlan(seq, indices, valid)

  def _filler(self, host: int, bucket: int, real: np.ndarray) -> int:
    """A row of `host` for the valid=0 slots of its batches of `bucket` (its own data, of
    that bucket if it has one, so per-host caches cover it)."""
    if len(real):
      return int(real[0])
    rows = self.host_rows(host)
    same = rows[self.bucket_of[rows] == bucket]
    return int(same[0] if len(same) else rows[0])

  def batches_per_epoch(self, epoch: int = 0) -> int:
    return len(self.plan(epoch))

  # -- batches --

  def batch_at(self, epoch: int, index: int) -> Batch:
    """This host's part of batch `index` of epoch `epoch` (pure: the iterator state is untouched)."""
    plan = self.plan(epoch)
    if not 0 <= index < len(plan):
      raise IndexError(f"epoch {epoch} has {len(plan)} batches, asked for {index}")
    lo = self.process_index * self.local_batch
    local = slice(lo, lo + self.local_batch)
    bucket = int(plan.bucket[index])
    batch = self._assemble(plan.indices[index], bucket, local, (self.seed, epoch, index))
    batch["valid"] = plan.valid[index, local].astype(np.float32)
    return batch

  @property
  def state(self) -> Dict[str, Any]:
    """Position of the next batch: `{'epoch': int, 'batch': int, 'fingerprint': str}`."""
    return {"epoch": self._epoch, "batch": self._batch, "fingerprint": self.fingerprint}

  def check_state(self, state: Any) -> None:
    """Raises ValueError for a malformed or out-of-range saved `state` (a damaged
    checkpoint: the trainer falls back to an older one), InputError for a state saved
    for another pipeline (the data or its settings changed: no checkpoint will do)."""
    if not isinstance(state, Mapping) or not all(
        isinstance(state.get(k), int) and not isinstance(state.get(k), bool) and state.get(k) >= 0
        for k in ("epoch", "batch")):
      raise ValueError(f"bad data iterator state {state!r}: need non-negative integers 'epoch' and 'batch'")
    fp = state.get("fingerprint")
    if fp is not None and fp != self.fingerprint:
      raise InputError(f"data iterator state was saved for another pipeline (fingerprint {fp}, "
                       f"this one {self.fingerprint}): data, seed, batch size, buckets or, "
                       f"with data.host_shards, the process count changed")
    epoch, batch = state["epoch"], state["batch"]
    n = len(self.plan(epoch))
    if batch > n:
      raise ValueError(f"data iterator state points at batch {batch} of epoch {epoch}, which has {n}")

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a saved `state` (from this iterator or one built the same way)."""
    try:
      self.check_state(state)
    except ValueError as e:
      raise InputError(str(e)) from None
    epoch, batch = state["epoch"], state["batch"]
    n = len(self.plan(epoch))
    self._epoch, self._batch = (epoch + 1, 0) if batch == n else (epoch, batch)

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> Batch:
    for _ in range(1000):  # remainder='drop' with a skewed epoch can leave an epoch empty
      if self._batch < len(self.plan(self._epoch)):
        break
      self._epoch, self._batch = self._epoch + 1, 0
    batch = self.batch_at(self._epoch, self._batch)
    self._batch += 1
    if self._batch >= len(self.plan(self._epoch)):
      self._epoch, self._batch = self._epoch + 1, 0
    return batch

  def epoch(self, epoch: int) -> Iterator[Batch]:
    """This host's batches of one epoch, in order (does not move the iterator)."""
    for i in range(self.batches_per_epoch(epoch)):
      yield self.batch_at(epoch, i)


# --- bitext batches ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Batching of bitext for distillation.

  `buckets` are the sequence lengths a batch may have; each side uses them clipped to
  its own max length (`tgt_buckets` overrides the teacher side: same count, or a single
  length for one teacher shape).
  A pair goes to the smallest bucket index whose length fits both sides, so there are
  at most `len(buckets)` batch shapes. `epoch_size` defaults to the total number of
  pairs; `remainder` is 'pad' (valid=0 filler rows) or 'drop'. `seed` overrides the
  mixture's seed when set. `cache_dir=None` disables the token cache. `host_shards`: each
  host draws from its own fixed share of the pairs (`BatchIterator`).

  Built directly (the trainer does, from the checked ml_collections config) or from a
  mapping by `BitextBatches`; either way the ranges are checked here, once.
  """

  global_batch: int
  src_max_length: int = 64
  tgt_max_length: int = 64
  buckets: Tuple[int, ...] = (16, 32, 64)
  tgt_buckets: Optional[Tuple[int, ...]] = None
  src_prefix: str = ""
  tgt_prefix: str = ""
  remainder: str = "pad"
  epoch_size: Optional[int] = None
  seed: Optional[int] = None
  cache_dir: Optional[str] = None
  host_shards: bool = False

  def __post_init__(self):
    check_batching(self.global_batch, self.remainder, self.epoch_size)
    if self.seed is not None:
      errors.check_int(self.seed, "seed", None)
    for k in ("buckets", "tgt_buckets"):  # lists from a mapping: tuples keep the config hashable
      if getattr(self, k) is not None:
        object.__setattr__(self, k, tuple(getattr(self, k)))


@dataclasses.dataclass
class TokenVectors(Ragged):
  """Per-row token vectors (`Ragged` with flat [total tokens, D], float16 / bfloat16 /
  float32): a frozen model's outputs for every row of a tokenised side (the teacher's
  token embeddings of the English sentences), usually memory-mapped from the cache."""

  def gather(self, idx: np.ndarray, length: int) -> np.ndarray:  # pylint: disable=arguments-differ
    """Rows `idx` as [len(idx), length, D] in the stored dtype, zeros past each row's end.
    Rows stored empty are outside this host's share (`host_shards`): asking for one is an error."""
    idx = np.asarray(idx, dtype=np.int64)
    empty = self.offsets[idx + 1] == self.offsets[idx]
    if empty.any():
      raise ValueError(f"row {int(idx[np.argmax(empty)])} has no stored vectors: not in this "
                       "host's shard")
    return super().gather(idx, length, 0)[0]


class BitextBatches(BatchIterator):
  """Bitext batches `src_ids, src_mask` (student, foreign) and `tgt_ids, tgt_mask` (teacher, English).

  All int32 of shape [local_batch, bucket length of that side], plus `valid` float32
  [local_batch]. `shapes()` lists the possible shapes (for ahead-of-time compilation).
  """

  def __init__(self, data: Union[Mixture, Bitext, Sequence[Bitext]], student: TokenizerLike,
               teacher: TokenizerLike, config: Union[PipelineConfig, Mapping[str, Any]], *,
               process_index: int = 0, process_count: int = 1):
    cfg = errors.build(PipelineConfig, config, "pipeline config")
    if isinstance(data, Bitext):
      data = mix([data])
    elif not isinstance(data, Mixture):
      data = mix(list(data))
    self.mixture = data
    self.config = cfg
    src_b = side_buckets(cfg.buckets, cfg.src_max_length, "student")
    tgt_b = side_buckets(cfg.tgt_buckets if cfg.tgt_buckets is not None else cfg.buckets,
                         cfg.tgt_max_length, "teacher", count=len(src_b))
    self.src_bucket_lengths, self.tgt_bucket_lengths = src_b, tgt_b
    srcs, tgts = [], []
    for s in data.sources:
      srcs.append(tokenize_texts(s.foreign, student, cfg.src_max_length, cfg.src_prefix, cfg.cache_dir))
      tgts.append(tokenize_texts(s.english, teacher, cfg.tgt_max_length, cfg.tgt_prefix, cfg.cache_dir))
    self.src, self.tgt = Ragged.concat(srcs), Ragged.concat(tgts)
    self._src_pad, self._tgt_pad = int(student.pad_id), int(teacher.pad_id)
    bucket_of = joint_buckets([self.src.lengths, self.tgt.lengths], [src_b, tgt_b])
    payload = {"kind": "bitext", "content": [s.content_hash() for s in data.sources],
               "student": student.fingerprint, "teacher": teacher.fingerprint,
               "ratios": data.ratios, "src": [src_b, cfg.src_max_length, cfg.src_prefix],
               "tgt": [tgt_b, cfg.tgt_max_length, cfg.tgt_prefix]}
    super().__init__(bucket_of=bucket_of, sizes=[len(s) for s in data.sources], ratios=data.ratios,
                     num_buckets=len(src_b), global_batch=cfg.global_batch,
                     seed=data.seed if cfg.seed is None else cfg.seed, assemble=self._make,
                     fingerprint_payload=payload, epoch_size=cfg.epoch_size,
                     remainder=cfg.remainder, process_index=process_index,
                     process_count=process_count, host_shards=cfg.host_shards)

  def _make(self, idx: np.ndarray, bucket: int, local: slice, _: Tuple[int, int, int]) -> Batch:
    idx = idx[local]
    src_ids, src_mask = self.src.gather(idx, self.src_bucket_lengths[bucket], self._src_pad)
    tgt_ids, tgt_mask = self.tgt.gather(idx, self.tgt_bucket_lengths[bucket], self._tgt_pad)
    out = {"src_ids": src_ids, "src_mask": src_mask, "tgt_ids": tgt_ids, "tgt_mask": tgt_mask}
    if self.teacher_tokens is not None:
      out["tgt_tokens"] = self.teacher_tokens.gather(idx, self.tgt_bucket_lengths[bucket])
    return out

  teacher_tokens: Optional[TokenVectors] = None

  def row_lengths(self) -> np.ndarray:
    """Per pair, the teacher-side length it is batched at (its bucket's length)."""
    return np.asarray(self.tgt_bucket_lengths, np.int64)[self.bucket_of]

  def attach_teacher_tokens(self, vectors: TokenVectors) -> None:
    """Batches then carry `tgt_tokens` [local_batch, tgt length, D]: the teacher's token
    embeddings of the English side, read from `vectors` instead of computed per step."""
    if len(vectors) != len(self.tgt):
      raise ValueError(f"teacher tokens for {len(vectors)} rows, the bitext has {len(self.tgt)}")
    self.teacher_tokens = vectors

  def shapes(self) -> List[Dict[str, Tuple[int, int]]]:
    """The distinct per-host batch shapes this iterator can yield."""
    out, seen = [], set()
    for s, t in zip(self.src_bucket_lengths, self.tgt_bucket_lengths):
      if (s, t) not in seen:
        seen.add((s, t))
        out.append({"src": (self.local_batch, s), "tgt": (self.local_batch, t)})
    return out

  def stats(self) -> Dict[str, Any]:
    """Counts for logging: per-source reading stats, per-epoch draws and bucket occupancy."""
    return {"sources": self.mixture.stats(), "per_epoch": self.counts,
            "bucket_pairs": np.bincount(self.bucket_of, minlength=self.num_buckets).tolist(),
            "batches_per_epoch": self.batches_per_epoch(0)}
