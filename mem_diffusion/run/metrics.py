"""Training metrics: per-quarter loss statistics and parameter hashes.

Hash definition (documented in docs/training.md, used by train_summary.json):
the leaves of the parameter pytree are visited in the order `jax.tree_util`
flattens them (dict keys sorted), and for each leaf the SHA-256 is updated
with its key path (`jax.tree_util.keystr`, UTF-8), its dtype name and shape,
then its bytes in C order, little endian. Two runs whose parameters are equal
bit for bit, and only those, get the same digest.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

NUM_QUARTERS = 4
TERMS = ("loss", "mse", "vb")


def tree_sha256(tree: Any) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f"|{a.dtype.name}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def tree_l2_norm(tree: Any) -> float:
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf, np.float64)
    total += float(np.sum(a * a))
  return math.sqrt(total)


def step_statistics(t: jax.Array, num_timesteps: int,
                    terms: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Batch sums per quarter of the timestep range, for windowed means.

  improved-diffusion logs each loss term also per quartile of t
  (quartile = floor(4 t / T)); sums and counts are kept, not means, so that
  windows of several steps (and micro-batches) add up exactly.
  """
  q = jnp.clip((NUM_QUARTERS * t) // num_timesteps, 0, NUM_QUARTERS - 1)
  onehot = jax.nn.one_hot(q, NUM_QUARTERS, dtype=jnp.float32)
  out = {"count_q": onehot.sum(0), "count": jnp.float32(t.shape[0])}
  for name, v in terms.items():
    v = v.astype(jnp.float32)
    out[f"{name}_sum"] = v.sum()
    out[f"{name}_sum_q"] = onehot.T @ v
  return out


class Window:
  """Host-side accumulator of per-step device metrics between two log points.

  Adding keeps device arrays (no host sync); `flush` fetches them all at once.
  """

  def __init__(self):
    self._steps: list[int] = []
    self._metrics: list[dict[str, jax.Array]] = []

  def __len__(self) -> int:
    return len(self._steps)

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._steps.append(step)
    self._metrics.append(metrics)

  def flush(self) -> tuple[dict[str, float], int | None]:
    """Returns (window means, first step whose loss was not finite or None)."""
    if not self._steps:
      return {}, None
    fetched = jax.device_get(self._metrics)
    steps = self._steps
    self._steps, self._metrics = [], []
    bad = None
    for s, m in zip(steps, fetched):
      if not (np.isfinite(m["loss_sum"]) and np.isfinite(m["grad_norm"])):
        bad = s
        break
    total = {k: np.sum([m[k] for m in fetched], axis=0) for k in fetched[0]}
    out = {"grad_norm": float(np.mean([m["grad_norm"] for m in fetched]))}
    count = float(total["count"])
    for name in TERMS:
      if f"{name}_sum" not in total:
        continue
      out[name] = float(total[f"{name}_sum"]) / count
      for q in range(NUM_QUARTERS):
        n = float(total["count_q"][q])
        if n:
          out[f"{name}_q{q}"] = float(total[f"{name}_sum_q"][q]) / n
    out["last_step_loss"] = float(fetched[-1]["loss_sum"] / fetched[-1]["count"])
    return out, bad
