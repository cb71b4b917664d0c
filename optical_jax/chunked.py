"""Chunked encoding: a jitted function of (params, ids, mask) over many rows, in chunks of
one static shape, each chunk split over this host's devices.

The one loop behind the teacher-token cache, the bitext-centred cost's token means and
held-out validation (corpus encoding batches by length itself, `retrieval.encode_shard`,
and runs its batches through the same kind of sharded function, `embedder`). A chunk's
rows are padded to a multiple of the device count with all-padding rows (mask 0), which
the caller never sees; params are replicated once per call.

On a mesh of one host's devices, every host encodes the rows it is given (hosts that
need different rows pass different ones: `data.host_shards`) and nothing is exchanged.
On a mesh spanning hosts (the run's mesh), every host passes the same rows, each encodes
its devices' part of every chunk, and the outputs are gathered to every host: the work
is split over all devices of all hosts (the teacher-token cache without host shards).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Tuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from optical_jax import mesh as mesh_lib

RowsFn = Callable[[int, int], Tuple[np.ndarray, np.ndarray]]


def local_mesh() -> jax.sharding.Mesh:
  """The `data` mesh over this host's devices."""
  return mesh_lib.make_mesh(jax.local_devices())


def place(params: Any, mesh: jax.sharding.Mesh) -> Any:
  """`params` replicated on `mesh` (a no-op for params placed so already): call it once
  for params that several `apply` calls share."""
  replicated = NamedSharding(mesh, P())
  leaves = jax.tree.leaves(params)
  if leaves and all(isinstance(x, jax.Array) and x.sharding == replicated for x in leaves):
    return params
  return mesh_lib.replicate(params, mesh)


def local_part(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
  """The `data` mesh over the devices of `mesh` that belong to this host."""
  mine = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  return mesh_lib.make_mesh(mine)


def spans_hosts(mesh: jax.sharding.Mesh) -> bool:
  return mesh.size != len(mesh.local_devices)


def apply(fn: Callable, params: Any, n_rows: int, rows: RowsFn, *, chunk: int = 64,
          mesh: Optional[jax.sharding.Mesh] = None, per_row: bool = True
          ) -> Iterator[Tuple[int, Any]]:
  """`fn(params, ids, mask)` over rows [0, n_rows) in chunks; yields (first row, the
  chunk's outputs as numpy) in order.

  Args:
    fn: a jitted function of (params, ids int32 [B, L], mask int32 [B, L]) returning a
      pytree of arrays; with `per_row` each has leading axis B and only the real rows are
      returned; without, they are reductions over the batch (sums), to which the padding
      rows (mask all zero) must contribute nothing.
    rows: (lo, hi) -> (ids, mask) of rows lo..hi-1, each [hi - lo, L]; L may differ
      between chunks (a compilation per length).
    chunk: rows per call, rounded up to a multiple of the mesh's devices.
    mesh: the devices to split each chunk over (default: this host's local devices). A
      mesh spanning hosts needs every host to call with the same rows (a collective per
      chunk); each host gets every output.
  """
  mesh = mesh if mesh is not None else local_mesh()
  chunk = -(-max(1, int(chunk)) // mesh.size) * mesh.size
  sharded = NamedSharding(mesh, P(mesh_lib.AXIS))
  params = place(params, mesh)
  if spans_hosts(mesh):
    put = lambda a: jax.make_array_from_callback(a.shape, sharded, lambda i: a[i])
    everywhere = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))
  else:
    put, everywhere = lambda a: jax.device_put(a, sharded), lambda t: t
  for lo in range(0, n_rows, chunk):
    hi = min(n_rows, lo + chunk)
    ids, mask = rows(lo, hi)
    pad = chunk - (hi - lo)
    if pad:
      ids = np.concatenate([ids, np.zeros((pad,) + ids.shape[1:], ids.dtype)])
      mask = np.concatenate([mask, np.zeros((pad,) + mask.shape[1:], mask.dtype)])
    out = everywhere(fn(params, put(np.asarray(ids, np.int32)), put(np.asarray(mask, np.int32))))
    n = hi - lo
    yield lo, jax.tree.map(lambda x: np.asarray(x)[:n] if per_row else np.asarray(x), out)
