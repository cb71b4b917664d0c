"""The device mesh: one 1-D `data` axis over every device of every host, and placing data on it.

Training (`optical_jax.step`) maps its per-device update over this mesh with
`jax.shard_map`; evaluation (`optical_jax.evaluator`, `optical_jax.models`) splits encoder
batches over it. Axis types are Auto: ott-jax 0.6.0's Sinkhorn needs them.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over `devices` (default: all global devices)."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree that every host holds identically on all devices (replicated).

  Works across hosts: each host supplies the shards of its own devices from its copy.
  Keys must be raw uint32 keys (`jax.random.PRNGKey`), as the train state uses.
  """
  sharding = NamedSharding(mesh, P())

  def put(x):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def shard_batch(local_batch: Dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> Dict[str, jax.Array]:
  """This host's slice of the global batch -> global arrays split over the `data` axis.

  Each host passes only its own rows (global_batch / process_count of them); the
  leading dimension must divide evenly over this host's devices.
  """
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def distributed_config() -> ml_collections.ConfigDict:
  """Settings of `initialize_distributed` (a config section of training and evaluation).

  TPU pods fill the coordinator in automatically; on CPU/GPU clusters give it, e.g. a
  127.0.0.1:PORT coordinator for processes on one machine (gloo CPU collectives).
  """
  return ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address="", num_processes=0, process_id=-1,
      local_device_ids="", cpu_collectives="gloo"))


def initialize_distributed(d) -> None:
  """`jax.distributed.initialize` per a `distributed_config()` section, when enabled."""
  if not d.initialize:
    return
  if d.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
  kwargs = {}
  if d.coordinator_address:
    kwargs["coordinator_address"] = d.coordinator_address
  if d.num_processes:
    kwargs["num_processes"] = int(d.num_processes)
  if d.process_id >= 0:
    kwargs["process_id"] = int(d.process_id)
  if d.local_device_ids:
    kwargs["local_device_ids"] = [int(x) for x in str(d.local_device_ids).split(",")]
  jax.distributed.initialize(**kwargs)
