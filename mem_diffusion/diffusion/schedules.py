"""Beta schedules of IDDPM, in float64 (docs/reference.md#schedules).

The schedules are computed once on the host in float64 (as the reference does)
because alpha_bar near t = T is tiny and float32 loses the posterior
coefficients there; the jitted code later gathers float32 copies.
"""

import math

import numpy as np

# The cosine schedule's betas are capped here: without the cap the last beta is
# 1 (alpha_bar(1) = 0) and the reverse process divides by zero.
MAX_BETA = 0.999
# Offset s of the cosine schedule: keeps beta_0 from being vanishingly small.
COSINE_S = 0.008

SCHEDULES = ("linear", "cosine")


def cosine_alpha_bar(u: float) -> float:
  """alpha_bar at the fraction u in [0, 1] of the chain (Nichol & Dhariwal eq. 17)."""
  return math.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2


def betas_for_alpha_bar(num_steps: int, alpha_bar, max_beta: float = MAX_BETA) -> np.ndarray:
  """Discretises a continuous alpha_bar(u) into num_steps betas.

  Uses Python floats (math.cos), the same arithmetic as the reference, so the
  float64 values agree to the last bit rather than to numpy's SIMD cos.
  """
  betas = [
      min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
      for i in range(num_steps)
  ]
  return np.asarray(betas, dtype=np.float64)


def get_betas(name: str, steps: int) -> np.ndarray:
  """Returns the float64 betas of schedule `name` with `steps` steps.

  'linear' is Ho et al.'s 1e-4..0.02 for 1000 steps, scaled by 1000/steps so
  that the total noise stays comparable for any step count.
  """
  steps = int(steps)
  if steps < 1:
    raise ValueError(f"diffusion steps must be >= 1, got {steps}")
  if name == "linear":
    scale = 1000 / steps
    return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
  if name == "cosine":
    return betas_for_alpha_bar(steps, cosine_alpha_bar)
  raise ValueError(f"unknown diffusion schedule {name!r} (expected one of {SCHEDULES})")
