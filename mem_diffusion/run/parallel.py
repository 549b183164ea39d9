"""Device mesh, shardings and multi-host plumbing for data parallelism.

One 1-D mesh named 'data' spans every device of every process. The batch is
sharded along it and the train state is replicated, so the same jitted step
runs on one CPU, eight GPUs or a TPU pod. The mesh axis is of type Auto: with
Explicit axes (the default of `jax.make_mesh` since JAX 0.9) Linen's Dropout
raises a sharding type error (see docs/reference.md#mesh-auto-axis).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np

from mem_diffusion import errors

DATA_AXIS = "data"


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


def gather(value: Any) -> np.ndarray:
  """Every process's value of a numpy scalar or array, stacked by process index."""
  if jax.process_count() == 1:
    return np.asarray(value)[None]
  return np.asarray(multihost_utils.process_allgather(np.asarray(value)))


def from_lead(tree: Any) -> Any:
  """Process 0's value of a pytree of numpy values, on every process.

  For decisions that read the shared workdir: two hosts can see a file
  system differently for a moment (attribute caches), and processes that
  decide differently would then run different collectives and wait for each
  other forever. So process 0 decides and the others follow.
  """
  if jax.process_count() == 1:
    return tree
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


_MESSAGE_BYTES = 2048


def lead_only(fn: Callable[[], Any], read_back: Callable[[], Any]) -> Any:
  """fn() on process 0 only; the others wait for it, then `read_back()`.

  For work that writes shared outputs (the evaluation's report and
  figures): one writer per file. A documented failure on process 0
  (errors.UserError) is raised on every process, with its message and exit
  code, instead of leaving the others waiting for a process that has gone.
  """
  if jax.process_count() == 1:
    return fn()
  result, error, code, message = None, None, 0, b""
  if jax.process_index() == 0:
    try:
      result = fn()
    except errors.UserError as e:
      code, message = e.exit_code, str(e).encode()[:_MESSAGE_BYTES]
      error = e
  text = np.zeros(_MESSAGE_BYTES, np.uint8)
  text[:len(message)] = np.frombuffer(message, np.uint8)
  code, text = from_lead((np.int32(code), text))
  if int(code):
    if jax.process_index() == 0:
      raise error
    raise errors.LeadFailed(bytes(text).rstrip(b"\0").decode(errors="replace"), int(code))
  return result if jax.process_index() == 0 else read_back()
