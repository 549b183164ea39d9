"""The `diffusion` section's allowed values, and respacing specs against a chain.

The lists of schedules, losses and timestep samplers stay with the code that
implements them (schedules.py, gaussian.py, timestep_samplers.py); this module
only bounds the values a config may give them.
"""

from __future__ import annotations

import re
from typing import Any

from mem_diffusion.config_checks import check_section, int_in, one_of, require
from mem_diffusion.diffusion import respace
from mem_diffusion.diffusion.gaussian import LOSS_TYPES
from mem_diffusion.diffusion.schedules import SCHEDULES
from mem_diffusion.diffusion.timestep_samplers import NAMES as TIMESTEP_SAMPLERS

MAX_STEPS = 100_000
# The grammar respace.space_timesteps accepts, for keys checked without a chain.
_RESPACING = re.compile(r"^(|ddim\d+|\d+(,\d+)*)$")

LIMITS = (
    int_in("diffusion.steps", 2, MAX_STEPS, "the schedule is built step by step on the host: "
           "10**12 hung; IDDPM uses 4000"),
    one_of("diffusion.schedule", SCHEDULES),
    one_of("diffusion.loss", LOSS_TYPES),
    one_of("diffusion.timestep_sampler", TIMESTEP_SAMPLERS),
)


def validate_diffusion_config(diffusion_cfg) -> None:
  """Raises ConfigError naming the first bad `diffusion.*` key."""
  check_section(LIMITS, diffusion_cfg)


def respacing_error(spec: Any, steps: int) -> str | None:
  """respace's one-line complaint about `spec` for a chain of `steps`, if any."""
  try:
    respace.space_timesteps(int(steps), str(spec))
  except (ValueError, TypeError) as e:
    return str(e).splitlines()[0]
  return None


def check_respacing(key: str, spec: Any, steps: int | None) -> None:
  """Refuses a respacing spec the chain cannot take (e.g. '50' of 20 steps),
  which would otherwise only fail when sampling starts, after training.

  steps=None checks only the spelling (for a key that is unused this run).
  """
  require(isinstance(spec, str) and _RESPACING.match(spec.strip()) is not None,
          f"{key}={spec!r}: expected '', 'N', 'ddimN' or 'a,b,c'")
  if steps is None:
    return
  error = respacing_error(spec, steps)
  require(error is None, f"{key}={spec!r}: {error}")
