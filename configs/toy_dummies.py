"""CPU toy of the dummy-data experiment: 16 Mondrian images (memorized at toy
scale, see configs/toy_capacity.py) plus M dummy images; class-conditional
(label 0 = Mondrian, 1 = dummy), samples drawn for label 0.

'uniform' batches draw from the mixed set, so the Mondrian class gets
16 / (16 + M) of the updates: a drop in replicates can be plain under-fitting.
'balanced' batches keep half of every batch Mondrian whatever M is, so the
real class gets the same number of updates at every M (half the no-dummy
run's); a drop there is the capacity effect the paper claims.

Argument: comma-separated tokens,
  kind=K       'gm' (default) | 'geometric' | another data.dummy_kind without cars
  m=M          number of dummy images (default 64)
  sampling=S   'uniform' (default) | 'balanced'
  n=N          Mondrian train-set size (default 16)
  steps=S      training steps (default as configs/toy_capacity.py)
  tiny         test-sized
The run's name is `toy_<kind>_<M>_<sampling>` (`_n<N>` appended if N != 16).
"""

from configs import _common
from configs import toy_capacity

_KINDS = ("gm", "geometric")  # the car-based kinds need CIFAR-10 and 'cifar_cars'
_SAMPLING = ("uniform", "balanced")


def get_config(arg: str = ""):
  file = "configs/toy_dummies.py"
  tiny, opts = _common.parse_arg(arg, file, keys=("kind", "m", "sampling", "n", "steps"))
  kind = opts.get("kind", "gm")
  if kind not in _KINDS:
    raise ValueError(f"{file}: kind={kind!r} must be one of {_KINDS}")
  sampling = opts.get("sampling", "uniform")
  if sampling not in _SAMPLING:
    raise ValueError(f"{file}: sampling={sampling!r} must be one of {_SAMPLING}")
  try:
    m, n = int(opts.get("m", "64")), int(opts.get("n", "16"))
  except ValueError:
    raise ValueError(f"{file}: m and n must be integers, got {arg!r}") from None
  if m <= 0 or n < 2:
    raise ValueError(f"{file}: need m >= 1 dummies and n >= 2 images, got m={m}, n={n}")
  name = f"toy_{kind}_{m}_{sampling}" + ("" if n == 16 else f"_n{n}")
  config = _common.build(name, False, dataset="mondrian", num_original=n,
                         dummy_kind=kind, num_dummy=m)
  config.data.sampling = sampling
  return toy_capacity.apply_toy(config, steps=toy_capacity.parse_steps(opts, file),
                                tiny=tiny)
