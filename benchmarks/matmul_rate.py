"""The reference rate every benchmark reports beside its own: a dense float32
matmul timed in the same process, so ratios hold on a shared, noisy machine."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def matmul_gflops(n: int = 2048, mesh=None, repeats: int = 5) -> float:
  """Best-of-`repeats` GFLOP/s of (n x n) @ (n x n) float32 at full precision.

  With a mesh, every device multiplies its own matrix (the batch is sharded
  over 'data'), so the rate is that of all devices together.
  """
  d = 1 if mesh is None else mesh.devices.size
  a = jax.random.normal(jax.random.PRNGKey(0), (d, n, n), jnp.float32)
  if mesh is not None:
    from mem_diffusion.run import parallel  # pylint: disable=g-import-not-at-top
    a = jax.device_put(a, parallel.batch_sharded(mesh))
  f = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x,
                                   precision=jax.lax.Precision.HIGHEST))
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * d * n ** 3 / best / 1e9
