"""Device mesh, shardings and multi-host plumbing for data parallelism.

One 1-D mesh named 'data' spans every device of every process. The batch is
sharded along it and the train state is replicated, so the same jitted step
runs on one CPU, eight GPUs or a TPU pod. The mesh axis is of type Auto: with
Explicit axes (the default of `jax.make_mesh` since JAX 0.9) Linen's Dropout
raises a sharding type error (see docs/reference.md#mesh-auto-axis).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
  """Starts jax.distributed when the run is launched as a multi-process job.

  Explicit arguments win; otherwise the environment variables
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are read. With
  `auto`, JAX's own cluster detection (TPU pods, SLURM, ...) fills the gaps.
  A plain single-process run calls nothing, because `initialize()` without a
  cluster to detect raises.

  Returns whether jax.distributed was initialised.
  """
  coordinator_address = coordinator_address or os.environ.get(
      "JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not (explicit or auto):
    return False
  if explicit and (coordinator_address is None or num_processes is None or
                   process_id is None):
    missing = [n for n, v in (("coordinator_address", coordinator_address),
                              ("num_processes", num_processes),
                              ("process_id", process_id)) if v is None]
    raise ValueError(
        "multi-process launch needs coordinator_address, num_processes and "
        f"process_id; missing: {', '.join(missing)}")
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The 1-D 'data' mesh (Auto axis type) over all devices, or the given ones."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) dimension split over 'data'; the rest replicated."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """Rows of the global batch that this process feeds.

  Raises ValueError naming training.batch_size when the batch does not split
  evenly over the devices (every device must hold the same number of rows).
  """
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f"training.batch_size={global_batch_size} must be divisible by the "
        f"number of devices ({n})")
  return global_batch_size * _num_local_devices(mesh) // n


def _num_local_devices(mesh: jax.sharding.Mesh) -> int:
  me = jax.process_index()
  return sum(1 for d in mesh.devices.flat if d.process_index == me)


def to_global(batch: Mapping[str, np.ndarray],
              mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Turns this process's slice of the batch into globally sharded arrays.

  Process p holds rows [p * B/P, (p+1) * B/P) of the global batch, which is
  the slice its devices address on a mesh built from `jax.devices()` (sorted
  by process). With one process this is simply a sharded device_put.
  """
  sharding = batch_sharded(mesh)
  num_procs = len({d.process_index for d in mesh.devices.flat})
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    global_shape = (v.shape[0] * num_procs,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out


def fetch(tree: Any) -> Any:
  """Host numpy copy of a pytree of replicated (or fully addressable) arrays.

  A replicated array spanning several processes is not fully addressable, but
  each local shard holds the whole value, so the first local shard is read.
  """
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)
      return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)
  return jax.tree.map(one, tree)


def any_process(flag: bool) -> bool:
  """True when the flag is set on any process (a collective: call on all)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))


def sync(name: str) -> None:
  """Barrier across processes (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
