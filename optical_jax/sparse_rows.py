"""Row-sparse word-embedding updates: the optimizer touches only the rows a batch used.

A multilingual vocabulary makes the word-embedding table most of a small encoder
(82% of e5-small's parameters), and a dense AdamW step reads and writes every row of it,
its two moments and its weight decay, although a batch of 32 x 64 tokens uses at most
2,048 of its 250,002 rows. With `optim.sparse_embeddings` the step instead works on a
*row view* of the student:

1. `batch_rows`: the sorted distinct token ids of the global batch (every device computes
   the same array from the all-gathered ids), padded with `FILL` to a static length;
2. `view`: the params with the table replaced by those rows (`FILL` rows are zeros), and
   `lookup` the word vectors the encoder would have read from the table;
3. the gradient of the loss with respect to the view (the table's entry is [rows, D]) is
   exactly the dense gradient restricted to those rows (the others are zero);
4. the unchanged optax transformation (clipping, AdamW, schedule) updates the view, with
   the optimizer state's copies of the table (AdamW's moments) gathered the same way
   (`view_state`), and `scatter` / `merge_state` write the touched rows back.

This is lazy AdamW (TensorFlow Addons' LazyAdam, PyTorch's SparseAdam with decoupled decay):
a row no batch used keeps its moments and is not decayed, where dense AdamW would keep
moving it with its decaying momentum and shrink it by the weight decay. The bias
correction and the learning-rate schedule count every step. Only the first update from a
fresh state equals the dense one; after it the two differ on rows that were used earlier
and not now. The global gradient norm (clipping, `grad_norm`) and the finiteness check are
the dense ones: the rows left out have zero gradient.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The word-embedding table in the student's params (optical_jax.encoder's layout).
TABLE = ("encoder", "embeddings", "word_embeddings", "embedding")
_TABLE_NAME = "/".join(TABLE)
# Pads the distinct ids to a static length; past any vocabulary, so gathers give zeros
# and scatters drop it.
FILL = np.iinfo(np.int32).max


def table(params) -> jnp.ndarray:
  node = params
  for k in TABLE:
    node = node[k]
  return node


def _is_table_copy(path, leaf, shape) -> bool:
  """A leaf of params or of an optimizer state that holds (a copy of) the table: its path
  ends with the table's path (optax keeps moments in trees shaped like the params)."""
  name = jax.tree_util.keystr(path, simple=True, separator="/")
  return ((name == _TABLE_NAME or name.endswith("/" + _TABLE_NAME))
          and getattr(leaf, "shape", None) == tuple(shape))


def batch_rows(id_arrays: Sequence[jnp.ndarray], axis_name: Optional[str] = None) -> jnp.ndarray:
  """The sorted distinct ids of every array in `id_arrays`, over all devices of
  `axis_name` (inside a mapped step), padded with `FILL`: int32 [total number of ids]."""
  ids = jnp.concatenate([a.reshape(-1) for a in id_arrays]).astype(jnp.int32)
  if axis_name is not None and jax.lax.axis_size(axis_name) > 1:
    ids = jax.lax.all_gather(ids, axis_name, tiled=True)
  return jnp.unique(ids, size=ids.shape[0], fill_value=FILL)


def gather(x: jnp.ndarray, rows: jnp.ndarray) -> jnp.ndarray:
  return jnp.take(x, rows, axis=0, mode="fill", fill_value=0)


def _gather_copies(tree, rows: jnp.ndarray, shape):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: gather(x, rows) if _is_table_copy(p, x, shape) else x, tree)


def view(params, rows: jnp.ndarray):
  """`params` with the table replaced by its `rows` ([len(rows), D]; zeros for `FILL`)."""
  return _gather_copies(params, rows, table(params).shape)


def lookup(view_params, rows: jnp.ndarray, ids: jnp.ndarray) -> jnp.ndarray:
  """The word vectors of `ids` [B, L] read from a row view: [B, L, D], the values the
  full table gives (every id of `ids` is among `rows`)."""
  return jnp.take(table(view_params), jnp.searchsorted(rows, ids), axis=0)


def scatter(x: jnp.ndarray, rows: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
  return x.at[rows].set(values, mode="drop")


def apply_updates(params, view_updates, rows: jnp.ndarray):
  """optax.apply_updates for a row view: the table changes in its `rows` only."""
  shape = table(params).shape

  def one(path, p, u):
    if _is_table_copy(path, p, shape):
      return p.at[rows].add(u.astype(p.dtype), mode="drop")
    return (p + u).astype(p.dtype)

  return jax.tree_util.tree_map_with_path(one, params, view_updates)


def view_state(opt_state, params, rows: jnp.ndarray):
  """The optimizer state as the row view's: every copy of the table gathered at `rows`."""
  return _gather_copies(opt_state, rows, table(params).shape)


def merge_state(opt_state, new_view_state, params, rows: jnp.ndarray):
  """The full optimizer state after a row-view update: the rows of each table copy come
  from `new_view_state`, everything else is `new_view_state`'s."""
  shape = table(params).shape

  def one(path, old, new):
    return scatter(old, rows, new) if _is_table_copy(path, old, shape) else new

  return jax.tree_util.tree_map_with_path(one, opt_state, new_view_state)
