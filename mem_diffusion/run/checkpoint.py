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

A finished checkpoint can still be damaged later (a disk error, a truncated
copy, a full disk during a manual rsync). Orbax notices broken metadata and
most broken data files, but not every flipped byte: a bit flip inside an
uncompressed array chunk restores without error to different numbers. So
every save also records a checksum of the state in 'meta', every restore
compares it, and `restore_latest` falls back to the newest intact step,
moving the broken ones aside (never deleting them) and never silently
starting over from step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mem_diffusion import errors
from mem_diffusion import files
from mem_diffusion.run import parallel

_ITEMS = ("state", "meta")
CHECKSUM_KEY = "state_checksum"
_CORRUPT = re.compile(r"^(\d+)\.corrupt-(\d+)$")


from mem_diffusion.errors import CheckpointCorruptError  # re-exported for callers

# How tensorstore, which writes the arrays, words a failed write; the errno
# is in `os_error_code='28'` (ValueError, not OSError, reaches Python).
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_WRITE_FAILURE = re.compile(r"RESOURCE_EXHAUSTED|PERMISSION_DENIED|No space left|"
                            r"Read-only file system|Disk quota exceeded|Permission denied")


@jax.jit
def _leaf_sum(x):
  """sum_i bits_i * (2i + 1) mod 2^32 over one array's words.

  Integer arithmetic is exact and order-free, so the value does not depend
  on the device count or the reduction order; the odd weights make any
  single changed word (a bit flip, a zeroed block's first word) change the
  sum, and a swapped pair of words too. Jitted per array (not over the whole
  tree): a UNet state has ~1,800 arrays but few distinct shapes, so this
  compiles a few dozen tiny programs instead of one huge one.
  """
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = x.dtype.itemsize * 8
    bits = jax.lax.bitcast_convert_type(
        x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width]).astype(jnp.uint32)
  weights = jnp.arange(x.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


def state_checksum(tree: Any) -> str:
  """A checksum of a pytree's values, dtypes, shapes and structure (hex).

  Computed on the device (a few integer ops per element), so only a vector
  of one word per leaf travels to the host, even for a 52M-parameter state.
  """
  leaves, treedef = jax.tree.flatten(tree)
  sums = np.asarray(parallel.fetch([_leaf_sum(x) for x in leaves]), np.uint32)
  h = hashlib.sha256(str(treedef).encode())
  for x in leaves:
    h.update(f"{jnp.dtype(x.dtype).name}{tuple(x.shape)};".encode())
  h.update(sums.astype("<u4").tobytes())
  return h.hexdigest()


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
    self._pending: int | None = None  # the step of a save not yet waited for

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc is None:
      self.close()
      return
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      # Orbax re-raises a failed save from each of its layers; the error
      # already on its way out is the one to report.
      logging.warning("closing %s after an error: %s", self.directory, _first_line(e))

  def close(self) -> None:
    """Waits for pending saves, then releases the manager.

    Raises:
      OutputError: the last save failed (see `wait`).
    """
    step = self._pending
    try:
      self.wait()
    except BaseException:
      with contextlib.suppress(Exception):
        self._manager.close()
      raise
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
    """Starts an async save of `state` at `step` (on every process).

    `meta` gets the state's checksum, which `restore` verifies.
    """
    meta = dict(meta, **{CHECKSUM_KEY: state_checksum(state)})
    # The previous save's failure, if any, surfaces here rather than inside
    # the manager's save, so it is reported for the step it belongs to.
    self.wait()
    try:
      started = self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              meta=ocp.args.JsonSave(meta)),
          force=True)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_write_failure(e):
        raise
      raise self._save_failed(step, e) from e
    self._pending = step
    return started

  def wait(self) -> None:
    """Blocks until the pending save is on disk.

    Raises:
      OutputError: the pending save failed (disk full, quota, read-only or
        unwritable folder). Orbax reports an async failure once, from the
        first wait after it; the failed step's temporary folder stays behind,
        invisible to `latest_step()` and removed by the next Checkpointer,
        and no older checkpoint is deleted (orbax drops old steps only after
        a commit succeeds).
    """
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      # Everything the background save does is writing: any failure there
      # is a checkpoint that could not be written.
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int | None, error: BaseException) -> errors.OutputError:
    good = self.latest_step()
    resume = (f" (a rerun resumes from step {good}, the last good checkpoint)"
              if good is not None else " (no checkpoint was saved before it)")
    return files.output_error(self.directory, _oserror_of(error),
                              "checkpoint" if step is None else f"checkpoint {step} in",
                              note=resume)

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
    state, meta = restored.state, dict(restored.meta or {})
    saved = meta.pop(CHECKSUM_KEY, None)
    if saved is not None and state_checksum(state) != saved:
      raise CheckpointCorruptError(
          f"checkpoint {step} in {self.directory} restored to values whose "
          "checksum differs from the one recorded when it was saved")
    return state, meta

  def restore_latest(self, abstract_state: Any
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that restores intact.

    Broken checkpoints newer than it are moved aside to
    `<step>.corrupt-<n>` (kept for inspection) with a warning naming them,
    so that the run redoes those steps instead of colliding with them.
    Returns None only when the directory holds no checkpoint at all.

    Raises:
      CheckpointCorruptError: when checkpoints exist but none restores, or
        when only moved-aside ones remain: starting over from step 0 then
        would silently throw away a run, so a person must decide. Nothing is
        moved in that case (a cause that breaks every restore, e.g. too
        little memory, must not cost the checkpoints).
    """
    steps = sorted(self.all_steps(), reverse=True)
    broken: list[tuple[int, str]] = []
    for step in steps:
      error = None
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        error = f"{type(e).__name__}: {_first_line(e)}"
      # Every process must agree, or they would resume from different steps.
      if parallel.any_process(error is not None):
        error = error or "unreadable on another process"
        logging.warning("checkpoint %d in %s is unreadable (%s); trying an "
                        "older one", step, self.directory, error)
        broken.append((step, error))
        continue
      for bad, why in broken:
        moved = self._move_aside(bad)
        logging.warning("resuming from step %d: checkpoint %d was broken (%s) "
                        "and is moved aside to %s", step, bad, why, moved)
      if broken:
        parallel.sync("checkpoint_moved_aside")
        self._manager.reload()
      return step, state, meta
    aside = self.corrupt_folders()
    if broken:
      listing = "; ".join(f"step {s}: {why}" for s, why in broken)
      raise CheckpointCorruptError(
          f"none of the {len(broken)} checkpoints in {self.directory} can be "
          f"restored ({listing}); refusing to start over from step 0. Repair or "
          "remove them (or use a new --workdir) to train from scratch")
    if aside:
      raise CheckpointCorruptError(
          f"{self.directory} holds only checkpoints moved aside as broken "
          f"({', '.join(aside)}); refusing to start over from step 0. Remove "
          "them (or use a new --workdir) to train from scratch")
    return None

  def corrupt_folders(self) -> list[str]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(n for n in os.listdir(self.directory) if _CORRUPT.match(n))

  def _move_aside(self, step: int) -> str:
    """Renames `<step>` to the first free `<step>.corrupt-<n>` (process 0)."""
    n = 1
    while os.path.exists(os.path.join(self.directory, f"{step}.corrupt-{n}")):
      n += 1
    target = os.path.join(self.directory, f"{step}.corrupt-{n}")
    if jax.process_index() == 0:
      os.rename(os.path.join(self.directory, str(step)), target)
    return target


def _is_write_failure(e: BaseException) -> bool:
  return isinstance(e, OSError) or bool(_OS_ERROR_CODE.search(str(e))
                                        or _WRITE_FAILURE.search(str(e)))


def _oserror_of(e: BaseException) -> BaseException:
  """An OSError with errno and strerror for `e`, if one can be recovered.

  Orbax runs the write in threads and re-raises what tensorstore raised: a
  ValueError whose text carries the OS error code.
  """
  cause = e
  while cause is not None:
    if isinstance(cause, OSError):
      return cause
    match = _OS_ERROR_CODE.search(str(cause))
    if match:
      code = int(match.group(1))
      return OSError(code, os.strerror(code))
    cause = cause.__cause__ or cause.__context__
  return e


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[0][:300] if lines else ""


def abstract_like(shapes: Any, sharding: jax.sharding.Sharding) -> Any:
  """Attaches one sharding to every leaf of a pytree of shapes/arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      shapes)
