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
traffic at a precision cost. Every host computes the whole cache (hosts draw different rows
each epoch), unless the pipeline shards the data by host (`data.host_shards`): then each
host computes and stores only the rows of its share (`BitextBatches.host_rows`), a cache
entry per (host, host count).
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

import jax
import ml_dtypes
import numpy as np

from optical_jax import encoder as enc
from optical_jax import fingerprint
from optical_jax.data.pipeline import BitextBatches, TokenVectors
from optical_jax.errors import InputError
from optical_jax.fileio import save_npy

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
            log: Callable[[str], None] = print) -> TokenVectors:
  """The teacher's token embeddings of every English row this host can be given (all rows,
  or its share under host shards; the others are stored empty), each at its bucket's length."""
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
  for length in sorted(set(lengths[keep].tolist())):
    rows = np.flatnonzero((lengths == length) & keep)
    for lo in range(0, len(rows), chunk):
      part = rows[lo:lo + chunk]
      idx = np.concatenate([part, np.full(chunk - len(part), part[0])])  # fixed shape
      ids, mask = tgt.gather(idx, int(length), pad)
      out = np.asarray(run(teacher.params, ids, mask), np.float32)
      if store is np.float16:   # only float16's range can be exceeded
        peak = float(np.abs(out).max())
        if peak > float(np.finfo(np.float16).max):
          raise InputError(f"data.teacher_cache=float16: the teacher's token embeddings reach "
                           f"{peak:.3g}, beyond float16's range; use bfloat16 or float32")
      for r, i in enumerate(part):
        a, b = offsets[i], offsets[i + 1]
        flat[a:b] = out[r, :b - a].astype(store)
  log(f"teacher tokens: {int(keep.sum())} of {len(tgt)} English rows, {len(flat)} tokens x {d} ({dtype}, "
      f"{flat.nbytes / 2**20:.1f} MiB)")
  return TokenVectors(flat, offsets)


def teacher_tokens(teacher, batches: BitextBatches, dtype: str, cache_dir: Optional[str],
                   log: Callable[[str], None] = print) -> TokenVectors:
  """The cached vectors (computed and stored on first use) and attaches them to `batches`."""
  if dtype not in DTYPES:
    raise ValueError(f"teacher cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  vectors = None
  path = None
  if cache_dir:
    path = os.path.join(cache_dir, cache_key(teacher, batches, dtype))
    if os.path.exists(os.path.join(path, "offsets.npy")):
      flat = np.load(os.path.join(path, "flat.npy"), mmap_mode="r", allow_pickle=False)
      if dtype == "bfloat16":   # stored as its raw 16 bits (.npy has no bfloat16)
        flat = flat.view(ml_dtypes.bfloat16)
      vectors = TokenVectors(flat, np.load(os.path.join(path, "offsets.npy")))
      log(f"teacher tokens: from cache ({path})")
  if vectors is None:
    vectors = compute(teacher, batches, dtype, log=log)
    if path:
      tmp = f"{path}.tmp{os.getpid()}"
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
      flat = vectors.flat.view(np.uint16) if dtype == "bfloat16" else vectors.flat
      save_npy(os.path.join(tmp, "flat.npy"), np.ascontiguousarray(flat))
      save_npy(os.path.join(tmp, "offsets.npy"), vectors.offsets)   # written last: complete
      try:
        os.replace(tmp, path)
      except OSError:   # another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
  batches.attach_teacher_tokens(vectors)
  return vectors
