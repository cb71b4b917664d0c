"""Length buckets: the one place a sequence length is mapped to the padded length it is
batched at (training batches, corpus encoding, the teacher-token cache), so that every
reader pads the same way and a jitted function compiles once per bucket."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def capped(buckets: Sequence[int], max_len: int) -> Tuple[int, ...]:
  """The sorted bucket lengths below `max_len`, and `max_len` itself (the longest a
  truncating tokenizer returns)."""
  return tuple(sorted({int(b) for b in buckets if int(b) < max_len} | {int(max_len)}))


def index(lengths: np.ndarray, bucket_lengths: Sequence[int]) -> np.ndarray:
  """Per length, the index of the smallest bucket that holds it (int [n]); ValueError when
  a length exceeds the largest bucket."""
  lens = np.asarray(lengths)
  i = np.searchsorted(np.asarray(bucket_lengths), lens, side="left")
  if np.any(i >= len(bucket_lengths)):
    raise ValueError(f"a sequence of length {int(lens.max())} exceeds the largest bucket "
                     f"{bucket_lengths[-1]}")
  return i


def width(length: int, bucket_lengths: Sequence[int]) -> int:
  """The padded length of one sequence: the smallest bucket >= `length` (sorted buckets)."""
  return int(bucket_lengths[int(index(np.asarray([length]), bucket_lengths)[0])])
