"""Orbax CheckpointManager wrapper: async saves, keep-last-K, exact restore.

A checkpoint holds two items: 'state' (the TrainState pytree, saved by every
process, restored into an abstract target that carries the shardings, so the
arrays come back already placed on the mesh) and 'meta' (small JSON: step,
the loss of the last log window, accumulated wall time), which lets a run that
was killed right after its final save still write a complete summary.

Saves are asynchronous. The manager must be closed (it is a context manager)
or waited on before the process exits, otherwise the last save is lost and
only a `*.orbax-checkpoint-tmp` folder remains; such unfinished folders are
invisible to `latest_step()`, which is what makes resume-after-SIGKILL safe.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

_ITEMS = ("state", "meta")


class Checkpointer:
  """Keeps the last `keep` checkpoints of one run under `directory`."""

  def __init__(self, directory: str, *, keep: int, use_async: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=use_async,
        # Temporary folders of saves that never finished (a SIGKILL mid-save)
        # are removed at start instead of accumulating.
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=_ITEMS)

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
    """Starts an async save of `state` at `step` (on every process)."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta)),
        force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into the structure, dtypes and shardings of the target.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `sharding` set,
    e.g. `abstract_like(jax.eval_shape(init), sharding)`.
    """
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta or {})


def abstract_like(shapes: Any, sharding: jax.sharding.Sharding) -> Any:
  """Attaches one sharding to every leaf of a pytree of shapes/arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      shapes)
