"""Tokenizers from local files (`tokenizer.json` or a WordPiece `vocab.txt`), with text prefixes from config."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from optical_jax import fingerprint
from optical_jax.errors import InputError


ENCODE_SLICE = 4096   # texts per call of the library's encode_batch (bounds its memory)


class Tokenizer:
  """A thin, picklable-by-path wrapper over a `tokenizers.Tokenizer`.

  Attributes:
    pad_id: id of the padding token.
    special_ids: ids of the special tokens ([CLS]/[SEP] or <s>/</s>, ...).
    fingerprint: a short hash of the tokenizer file, for caches.
  """

  def __init__(self, path: str, *, lowercase: Optional[bool] = None):
    path = os.fspath(path)
    if os.path.isdir(path):
      candidates = [os.path.join(path, "tokenizer.json"), os.path.join(path, "vocab.txt")]
      found = [c for c in candidates if os.path.exists(c)]
      if not found:
        raise InputError("no tokenizer.json or vocab.txt in this directory", path)
      path = found[0]
    if not os.path.exists(path):
      raise InputError("tokenizer file not found", path)
    self.path = path
    self.fingerprint = fingerprint.file(path)
    if path.endswith(".txt"):
      from tokenizers import BertWordPieceTokenizer  # pylint: disable=g-import-not-at-top
      wp = BertWordPieceTokenizer(path, lowercase=True if lowercase is None else lowercase)
      self._tok = wp._tokenizer  # pylint: disable=protected-access
    else:
      try:
        self._tok = _HFTokenizer.from_file(path)
      except Exception as e:  # tokenizers raises a plain Exception on bad JSON
        raise InputError(f"cannot read tokenizer: {e}", path) from e
    self._tok.no_padding()
    self._tok.no_truncation()
    vocab = self._tok.get_vocab()
    self.vocab_size = self._tok.get_vocab_size()
    pad = next((t for t in ("[PAD]", "<pad>") if t in vocab), None)
    if pad is None:
      raise InputError("tokenizer has no [PAD] or <pad> token", path)
    self.pad_id = vocab[pad]
    specials = [t for t in ("[CLS]", "[SEP]", "<s>", "</s>") if t in vocab]
    self.special_ids = tuple(sorted({vocab[t] for t in specials} | {self.pad_id}))

  def encode_batch(self, texts: Sequence[str], max_length: int, prefix: str = "") -> List[List[int]]:
    """Token ids with special tokens, truncated to `max_length` (the last token stays [SEP]/</s>).

    Encoded `ENCODE_SLICE` texts at a time: the library's Encoding objects (tokens,
    offsets, masks of the whole untruncated text) take ~20 KB per passage, so a million
    passages encoded at once would hold ~20 GB; only the truncated ids are kept."""
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    out = []
    for lo in range(0, len(texts), ENCODE_SLICE):
      encs = self._tok.encode_batch([prefix + t for t in texts[lo:lo + ENCODE_SLICE]],
                                    add_special_tokens=True)
      for e in encs:
        ids = e.ids
        out.append(ids[: max_length - 1] + [ids[-1]] if len(ids) > max_length else list(ids))
    return out

  def pad(self, id_lists: Sequence[Sequence[int]], length: int):
    """Pads (and, if needed, truncates) to `length`: (ids int32 [N, length], mask int32 [N, length])."""
    ids = np.full((len(id_lists), length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(id_lists), length), dtype=np.int32)
    for i, row in enumerate(id_lists):
      row = list(row)[:length]
      ids[i, : len(row)] = row
      mask[i, : len(row)] = 1
    return ids, mask

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids))

  def id_to_token(self, i: int) -> str:
    return self._tok.id_to_token(int(i))
