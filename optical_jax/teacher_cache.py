"""The frozen teacher's token embeddings of the English side, computed once and reused.

The teacher never trains, so its token embeddings of a bitext's English sentences are the
same at every epoch and in every run over that bitext. `teacher_tokens` computes them
once per (teacher, English rows, their padded lengths, storage dtype), stores them under
the cache (memory-mapped on reuse; `cache_key`: runs that differ only in student, seed or
loss share an entry), and attaches them to the batches: the distillation step then reads
`tgt_tokens` from the batch instead of running the teacher
(`step.DistillSpec.teacher_from_batch`).

Each English sentence is encoded at the padded length of its bucket, exactly as the step
would encode it, so a float32 cache reproduces the uncached step (within float noise of
a different batch composition). Float16 / bfloat16 halve the memory and the host-to-device
traffic at a precision cost. The rows are encoded in chunks split over the run's devices
(`chunked.apply`, as validation and the centred-cost means are). Every host holds the
whole cache (hosts draw different rows each epoch), encoded once over the devices of all
hosts, unless the pipeline shards the data by host (`data.host_shards`): then each host
computes and stores only the rows of its share (`BitextBatches.host_rows`) on its own
devices, a cache entry per (host, host count).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import ml_dtypes
import numpy as np

from optical_jax import array_cache, chunked, fingerprint
from optical_jax import encoder as enc
from optical_jax.data.pipeline import BitextBatches, TokenVectors
from optical_jax.errors import InputError

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
FORMAT = 2


def cache_key(teacher, batches: BitextBatches, dtype: str) -> str:
  """Everything the cached vectors depend on, and nothing else: the teacher (files and
  spec; its params too when they are random), the English side's token ids, the length
  each row is encoded at, the rows this host keeps, the storage dtype. Not the student,
  the data seed or the loss: the cells of a study over seeds, losses or students with
  the same teacher and bitext share one entry."""
  rows = {"ids": batches.tgt.flat, "offsets": batches.tgt.offsets,
          "lengths": batches.row_lengths()}
  mine = batches.host_rows()
  if mine is not None:
    rows["host_rows"] = mine
  parts = {"format": FORMAT, "teacher": teacher.fingerprint, "encoder": teacher.cfg.to_dict(),
           "rows": fingerprint.params(rows), "dtype": dtype}
  if teacher.spec.weights == "random":
    parts["params"] = fingerprint.params(teacher.params)
  return fingerprint.digest(parts, n=24)


def compute(teacher, batches: BitextBatches, dtype: str = "float32", chunk: int = 64,
            log: Callable[[str], None] = print,
            mesh: Optional[jax.sharding.Mesh] = None) -> TokenVectors:
  """The teacher's token embeddings of every English row this host can be given (all rows,
  or its share under host shards; the others are stored empty), each at its bucket's length,
  encoded in chunks split over `mesh` (default: this host's devices; `chunked.apply`; a
  mesh spanning hosts: every host must call, with the same rows)."""
  store = DTYPES[dtype]
  lengths = batches.row_lengths()
  tgt = batches.tgt
  d = teacher.cfg.output_dim
  mine = batches.host_rows()
  keep = np.ones(len(tgt), bool)
  if mine is not None:
    keep[:] = False
    keep[mine] = True
  offsets = np.zeros(len(tgt) + 1, np.int64)
  np.cumsum(np.where(keep, np.minimum(tgt.lengths, lengths), 0), out=offsets[1:])
  flat = np.zeros((int(offsets[-1]), d), store)
  run = jax.jit(lambda p, i, m: enc.apply(p, i, m, cfg=teacher.cfg))
  pad = int(teacher.tokenizer.pad_id)
  mesh = mesh if mesh is not None else chunked.local_mesh()
  params = chunked.place(teacher.params, mesh)
  for length in sorted(set(lengths[keep].tolist())):
    rows = np.flatnonzero((lengths == length) & keep)
    parts = chunked.apply(run, params, len(rows),
                          lambda lo, hi: tgt.gather(rows[lo:hi], int(length), pad),
                          chunk=chunk, mesh=mesh)
    for lo, out in parts:
      out = np.asarray(out, np.float32)
      if store is np.float16:   # only float16's range can be exceeded
        peak = float(np.abs(out).max())
        if peak > float(np.finfo(np.float16).max):
          raise InputError(f"data.teacher_cache=float16: the teacher's token embeddings reach "
                           f"{peak:.3g}, beyond float16's range; use bfloat16 or float32")
      for r, i in enumerate(rows[lo:lo + len(out)]):
        a, b = offsets[i], offsets[i + 1]
        flat[a:b] = out[r, :b - a].astype(store)
  hosts = len({dev.process_index for dev in mesh.devices.flat})
  log(f"teacher tokens: {int(keep.sum())} of {len(tgt)} English rows, {len(flat)} tokens x {d} ({dtype}, "
      f"{flat.nbytes / 2**20:.1f} MiB), encoded on {mesh.size} device(s) of {hosts} host(s)")
  return TokenVectors(flat, offsets)


def teacher_tokens(teacher, batches: BitextBatches, dtype: str, cache_dir: Optional[str],
                   log: Callable[[str], None] = print,
                   mesh: Optional[jax.sharding.Mesh] = None) -> TokenVectors:
  """The cached vectors (computed and stored on first use) and attaches them to `batches`.

  Entries are `array_cache` entries (`teacher-<cache_key>/`): checked against their
  manifest's shapes, dtypes and checksums before use; one that fails is reported, moved
  aside and recomputed, so a damaged cache never trains a student on wrong targets.

  `mesh`: the run's devices (default: this host's). When it spans several hosts and the
  data is not sharded by host, every host needs every row: the hosts encode them
  together (each its devices' part of every chunk, the outputs gathered to all), and
  since that is a collective, they first agree whether any of them lacks a verified
  entry; if one does, all compute and those without an entry store it. Under
  `data.host_shards` each host encodes its own rows on its own devices.
  """
  if dtype not in DTYPES:
    raise ValueError(f"teacher cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  key = cache_key(teacher, batches, dtype)
  report = lambda m: log(f"warning: {m}")
  meta = {"dtype": dtype, "rows": len(batches.tgt)}
  together = mesh is not None and chunked.spans_hosts(mesh) and batches.host_rows() is None
  if together:
    hit = array_cache.load(cache_dir, "teacher", key, mmap=True, report=report) if cache_dir else None
    if _on_every_host(hit is not None):
      arrays, vectors = hit[0], None
    else:
      vectors = compute(teacher, batches, dtype, log=log, mesh=mesh)
      if cache_dir and hit is None:
        array_cache.store(cache_dir, "teacher", key, _stored(vectors, dtype), meta)
  else:
    local = chunked.local_part(mesh) if mesh is not None else None
    computed = []

    def make():
      computed.append(compute(teacher, batches, dtype, log=log, mesh=local))
      return _stored(computed[0], dtype)

    arrays, _ = array_cache.cached(cache_dir or None, "teacher", key, make, mmap=True, meta=meta,
                                   report=report)
    vectors = computed[0] if computed else None
  if vectors is None:
    flat = arrays["flat"].view(ml_dtypes.bfloat16) if dtype == "bfloat16" else arrays["flat"]
    vectors = TokenVectors(flat, np.asarray(arrays["offsets"]))
    _check_layout(vectors, batches, dtype)
    log(f"teacher tokens: from cache ({array_cache.entry_dir(cache_dir, 'teacher', key)})")
  batches.attach_teacher_tokens(vectors)
  return vectors


def _stored(vectors: TokenVectors, dtype: str):
  # .npy has no bfloat16: stored as its raw 16 bits.
  flat = vectors.flat.view(np.uint16) if dtype == "bfloat16" else vectors.flat
  return {"flat": flat, "offsets": vectors.offsets}


def _on_every_host(flag: bool) -> bool:
  """Whether `flag` holds on every host (a collective: every host must call it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))))


def _check_layout(vectors: TokenVectors, batches: BitextBatches, dtype: str) -> None:
  """A verified entry still has to fit these batches (its key says it does; this catches
  a key collision or a cache written by other code): one offset per row, the last equal
  to the token count, the storage dtype."""
  want = np.dtype(DTYPES[dtype])
  if (len(vectors.offsets) != len(batches.tgt) + 1 or int(vectors.offsets[-1]) != len(vectors.flat)
      or vectors.flat.dtype != want):
    raise InputError(f"teacher-token cache entry does not fit this bitext ({len(vectors.offsets) - 1} "
                     f"rows, {len(vectors.flat)} tokens, {vectors.flat.dtype}; expected "
                     f"{len(batches.tgt)} rows, {want}); delete it")
