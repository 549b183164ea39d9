"""The mixing pipeline: a pure function of (seed, step, process index/count).

Which rows form the batch of step s is decided by `batch_plan`, without any
iterator state, so a run resumed at step k builds a new dataset at k and sees
exactly the batches the uninterrupted run saw:

- 'uniform' (the study's setting): the mixed set is one stream of positions
  p = s * B + j (j < B); position p reads row perm_e[p mod N] with
  e = p div N and perm_e a permutation of the N rows keyed on fold_in(seed, e).
  Every epoch visits every row once; an epoch boundary may fall inside a batch.
- 'balanced': each global batch takes n_o = round(original_share * B) rows
  from the originals' own stream (same construction over the N_o original
  rows) and B - n_o rows from the dummies' stream; the B rows are then put in
  an order keyed on (seed, s), so no process slice holds only one kind. Both
  kinds thus get a fixed number of updates per step whatever their set sizes;
  the two streams wrap around their epochs independently.

The global batch is cut into process_count equal slices; process i gets rows
[i * B / P, (i + 1) * B / P) of it. The optional horizontal flip is keyed on
(seed, step, position in the global batch), so it is resumable and the same
whatever the process count.

The rows are then gathered from the in-memory uint8 train set and converted
to float32 in [-1, 1] with NumPy, on the training thread. Not tf.data: its
thread pools, the generator's Python callback and JAX's dispatch contend for
a small CPU's cores, and at toy scale that hand-off costs more than the
train step itself (benchmarks/data_pipeline.py measures both).
A gather of at most a few hundred small images takes well under a
millisecond, and JAX's asynchronous dispatch already overlaps it with the
step in flight, so there is nothing for a prefetch thread to hide
(docs/benchmarks.md, "Toy run").
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from mem_diffusion.data import generators

_TAG_UNIFORM = 1
_TAG_ORIGINAL = 2
_TAG_DUMMY = 3
_TAG_MIX = 4
_TAG_FLIP = 5


@functools.partial(jax.jit, static_argnums=(2,))
def _permutation(key, epoch, n):
  return jax.random.permutation(jax.random.fold_in(key, epoch), n)


@functools.partial(jax.jit, static_argnums=(2,))
def _flips(key, step, n):
  return jax.random.bernoulli(jax.random.fold_in(key, step), 0.5, (n,))


class _Stream:
  """Rows read at positions [start, start + count) of an endless sequence of
  per-epoch permutations of n rows (offset added)."""

  def __init__(self, key, n: int, offset: int = 0):
    self._key, self._n, self._offset = key, n, offset
    self._cache: dict[int, np.ndarray] = {}

  @generators.on_cpu
  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 4:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = np.asarray(_permutation(self._key, np.uint32(epoch), self._n))
    return self._cache[epoch]

  def take(self, start: int, count: int) -> np.ndarray:
    pos = start + np.arange(count, dtype=np.int64)
    epochs, within = np.divmod(pos, self._n)
    out = np.empty(count, np.int64)
    for e in np.unique(epochs):
      if e >= 2**32:
        raise ValueError("step beyond 2**32 epochs")
      m = epochs == e
      out[m] = self._perm(int(e))[within[m]]
    return out + self._offset


class BatchPlanner:
  """Global batch rows and flips of any step; see the module docstring."""

  @generators.on_cpu
  def __init__(self, num_rows: int, num_original: int, data_cfg, *,
               global_batch_size: int, seed: int):
    if global_batch_size <= 0:
      raise ValueError(f"global_batch_size={global_batch_size} must be positive")
    if num_rows <= 0:
      raise ValueError("the train set is empty")
    key = generators.root_key(seed)
    self.batch_size = global_batch_size
    self.balanced = data_cfg.sampling == "balanced"
    self.hflip = bool(data_cfg.hflip)
    self._mix_key = jax.random.fold_in(key, _TAG_MIX)
    self._flip_key = jax.random.fold_in(key, _TAG_FLIP)
    if data_cfg.sampling not in ("uniform", "balanced"):
      raise ValueError(f"data.sampling={data_cfg.sampling!r}: 'uniform' or 'balanced'")
    if self.balanced:
      num_dummy = num_rows - num_original
      if num_original <= 0 or num_dummy <= 0:
        raise ValueError("data.sampling='balanced' needs both original and dummy rows")
      self.n_orig = int(round(data_cfg.original_share * global_batch_size))
      if not 0 < self.n_orig < global_batch_size:
        raise ValueError(
            f"data.original_share={data_cfg.original_share} gives {self.n_orig} of "
            f"{global_batch_size} rows per batch; both kinds need at least one")
      self._orig = _Stream(jax.random.fold_in(key, _TAG_ORIGINAL), num_original)
      self._dummy = _Stream(jax.random.fold_in(key, _TAG_DUMMY), num_dummy,
                            offset=num_original)
    else:
      self._all = _Stream(jax.random.fold_in(key, _TAG_UNIFORM), num_rows)

  @generators.on_cpu
  def rows(self, step: int) -> np.ndarray:
    b = self.batch_size
    if not self.balanced:
      return self._all.take(step * b, b)
    n_o, n_d = self.n_orig, b - self.n_orig
    rows = np.concatenate([self._orig.take(step * n_o, n_o),
                           self._dummy.take(step * n_d, n_d)])
    return rows[np.asarray(_permutation(self._mix_key, np.uint32(step), b))]

  @generators.on_cpu
  def flips(self, step: int) -> np.ndarray:
    if not self.hflip:
      return np.zeros(self.batch_size, bool)
    return np.asarray(_flips(self._flip_key, np.uint32(step), self.batch_size))


def _check_process(global_batch_size, process_index, process_count):
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, "
                     f"process_count={process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"training.batch_size={global_batch_size} is not divisible by "
                     f"the process count {process_count}")


class PipelineDataset:
  """An iterable of numpy batches (re-iterable: each pass starts at start_step)."""

  def __init__(self, batches, num_steps: int):
    self._batches = batches
    self.num_steps = num_steps

  def __len__(self) -> int:
    return self.num_steps

  def __iter__(self):
    return self._batches()


def make_dataset(train_set, data_cfg, *, global_batch_size: int, seed: int,
                 start_step: int, num_steps: int, process_index: int = 0,
                 process_count: int = 1) -> PipelineDataset:
  """Batches of steps [start_step, start_step + num_steps) for one process:
  {'image': float32 [-1, 1] (B / P, H, W, 3), 'label': int32 (B / P,)}."""
  _check_process(global_batch_size, process_index, process_count)
  if start_step < 0 or num_steps < 0:
    raise ValueError(f"start_step={start_step} and num_steps={num_steps} must be >= 0")
  planner = BatchPlanner(len(train_set.images), train_set.num_original, data_cfg,
                         global_batch_size=global_batch_size, seed=seed)
  local = global_batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local
  images = np.asarray(train_set.images)
  labels = np.asarray(train_set.labels, np.int32)

  def batches():
    for step in range(start_step, start_step + num_steps):
      rows = planner.rows(step)[lo:hi]
      flip = planner.flips(step)[lo:hi]
      x = images[rows].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
      x[flip] = x[flip, :, ::-1]
      yield {"image": x, "label": labels[rows]}

  return PipelineDataset(batches, num_steps)
