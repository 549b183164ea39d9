"""The one timing rule of the GPU check, shared by its JAX and PyTorch halves.

A module of its own (standard library only) because the PyTorch reference
runs in a child process that must not import JAX, and gpu_check.py does.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable


def best_seconds(run: Callable[[], Any], sync: Callable[[Any], Any], *, iters: int,
                 repeats: int) -> float:
  """Seconds per call: best over `repeats` timed loops of `iters` calls, after a warm-up.

  `sync` waits for the device (block_until_ready / torch.cuda.synchronize); the
  best loop, not the mean, because the machine may be shared.
  """
  sync(run())
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(iters):
      out = run()
    sync(out)
    best = min(best, (time.perf_counter() - t0) / iters)
  return best
