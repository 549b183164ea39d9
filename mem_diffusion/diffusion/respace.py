"""Timestep respacing with the semantics of improved-diffusion's respace.py.

A respaced chain keeps a subset of the original timesteps. Its betas are
recomputed from the kept alpha_bar values so that the marginals q(x_t | x_0)
of the kept steps are unchanged; the network keeps seeing the original
timestep index (see `GaussianDiffusion.model_timesteps`).
"""

from typing import List, Sequence, Union


def _parse_sections(num_timesteps: int, spec: str) -> List[int]:
  try:
    return [int(part) for part in spec.split(",")]
  except ValueError:
    raise ValueError(
        f"bad respacing spec {spec!r}: expected '', 'N', 'ddimN' or comma-separated "
        f"counts like '10,10,5' (num_timesteps={num_timesteps})") from None


def space_timesteps(num_timesteps: int, spec: Union[str, Sequence[int]]) -> List[int]:
  """Returns the sorted original timesteps kept by a respacing spec.

  - "" keeps every step.
  - "ddimN" uses the smallest integer stride s >= 1 with len(range(0, T, s)) == N
    (the DDIM paper's striding); no such stride is an error.
  - "N" or "a,b,c" (or a list of ints) splits the chain into as many nearly
    equal sections as there are counts (the first T % k sections one step
    longer) and keeps `count` evenly spaced indices in each, both ends
    included. The index walk adds the fractional stride repeatedly and rounds
    with Python's round (half to even), exactly as the reference does: both
    details change which index is kept when the stride hits .5.
  """
  num_timesteps = int(num_timesteps)
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  if isinstance(spec, str):
    spec = spec.strip()
    if not spec:
      return list(range(num_timesteps))
    if spec.startswith("ddim"):
      try:
        desired = int(spec[len("ddim"):])
      except ValueError:
        raise ValueError(f"bad respacing spec {spec!r}: expected 'ddimN' with an integer N") from None
      # The reference searches strides 1..T-1 only (so 'ddim1' is impossible for T > 1).
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(
          f"respacing {spec!r}: no integer stride gives exactly {desired} of "
          f"{num_timesteps} steps")
    sections = _parse_sections(num_timesteps, spec)
  else:
    sections = [int(c) for c in spec]
  if not sections or any(c < 0 for c in sections):
    raise ValueError(f"bad respacing spec {spec!r}: section counts must be non-negative")
  size_per, extra = divmod(num_timesteps, len(sections))
  start = 0
  kept = set()
  for i, count in enumerate(sections):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(
          f"respacing {spec!r}: cannot take {count} steps from a section of {size} "
          f"(num_timesteps={num_timesteps})")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    pos = 0.0
    for _ in range(count):
      kept.add(start + round(pos))
      pos += stride
    start += size
  return sorted(kept)
