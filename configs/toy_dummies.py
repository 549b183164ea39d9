"""CPU toy of the dummy-data experiment: 16 Mondrian images (memorized at toy
scale, see configs/toy_capacity.py) plus M dummy images; class-conditional
(label 0 = Mondrian, 1 = dummy), samples drawn for label 0.

'uniform' batches draw from the mixed set, so the Mondrian class gets
16 / (16 + M) of the updates: a drop in replicates can be plain under-fitting.
'balanced' batches keep half of every batch Mondrian whatever M is, so the
real class gets the same number of updates at every M (half the no-dummy
run's at batch 16; with batch=32 exactly the no-dummy run's 16 rows per
step); a drop there is the capacity effect the paper claims.

Hybrids here mix a GM image with a held-out Mondrian in place of the car
(docs/data.md, 'Mondrian hybrids'): no CIFAR-10 needed.

Argument: comma-separated tokens,
  kind=K       'gm' (default) | 'geometric' | 'hybrid'
  m=M          number of dummy images (default 64)
  sampling=S   'uniform' (default) | 'balanced'
  n=N          Mondrian train-set size (default 16)
  batch=B      training.batch_size (default 16, as configs/toy_capacity.py)
  steps=S      training steps (default as configs/toy_capacity.py)
  mask=R       hybrids only: how data.hybrid_cutoff is read, 'bin_fraction'
               (default) | 'corner_radius' (docs/data.md, "Hybrid")
  loss_scale=X training.loss_scale (default 1). 'balanced', batch=32 and
               loss_scale=2 keep the Mondrians' 16 rows per step AND each
               row's 1/16 loss weight of the no-dummy run at batch 16.
  tiny         test-sized
The run's name is `toy_<kind>_<M>_<sampling>`, then `_n<N>` if N != 16,
`_b<B>` if B != 16, `_s<S>` if S is not the default, `_corner` for
mask=corner_radius and `_ls<X>` if X != 1: every non-default token shows,
so two settings never share a sweep's workdir.

Besides the 128 samples of the Mondrian label (TOY_SAMPLES), every run
draws 64 with the dummy label (sampling.dummy_label_samples), so the report
also says how much the dummy class itself is copied.
"""

from configs import _common
from configs import toy_capacity

_KINDS = ("gm", "geometric", "hybrid")  # 'cars' needs CIFAR-10 and 'cifar_cars'
_SAMPLING = ("uniform", "balanced")
_DEFAULT_N = _DEFAULT_BATCH = 16
_MASKS = ("bin_fraction", "corner_radius")  # the first is the default, unnamed


@_common.precision_arg
def get_config(arg: str = ""):
  file = "configs/toy_dummies.py"
  tiny, opts = _common.parse_arg(arg, file,
                                 keys=("kind", "m", "sampling", "n", "batch", "steps",
                                       "mask", "loss_scale"))
  kind = opts.get("kind", "gm")
  if kind not in _KINDS:
    raise ValueError(f"{file}: kind={kind!r} must be one of {_KINDS}")
  sampling = opts.get("sampling", "uniform")
  if sampling not in _SAMPLING:
    raise ValueError(f"{file}: sampling={sampling!r} must be one of {_SAMPLING}")
  try:
    m, n = int(opts.get("m", "64")), int(opts.get("n", str(_DEFAULT_N)))
    batch = int(opts.get("batch", str(_DEFAULT_BATCH)))
  except ValueError:
    raise ValueError(f"{file}: m, n and batch must be integers, got {arg!r}") from None
  if m <= 0 or n < 2 or batch <= 0:
    raise ValueError(f"{file}: need m >= 1 dummies, n >= 2 images and batch >= 1, got "
                     f"m={m}, n={n}, batch={batch}")
  steps = toy_capacity.parse_steps(opts, file)
  mask = opts.get("mask", _MASKS[0])
  if mask not in _MASKS or (mask != _MASKS[0] and kind != "hybrid"):
    raise ValueError(f"{file}: mask={mask!r} must be one of {_MASKS}, and only with kind=hybrid")
  try:
    loss_scale = float(opts.get("loss_scale", "1"))
  except ValueError:
    raise ValueError(f"{file}: loss_scale={opts['loss_scale']!r} is not a number") from None
  if not 0 < loss_scale <= 1000:
    raise ValueError(f"{file}: loss_scale must be in (0, 1000], got {loss_scale}")
  name = (f"toy_{kind}_{m}_{sampling}" + ("" if n == _DEFAULT_N else f"_n{n}")
          + ("" if batch == _DEFAULT_BATCH else f"_b{batch}")
          + toy_capacity.steps_suffix(steps) + ("" if mask == _MASKS[0] else "_corner")
          + ("" if loss_scale == 1 else f"_ls{loss_scale:g}"))
  config = _common.build(name, False, dataset="mondrian", num_original=n,
                         dummy_kind=kind, num_dummy=m)
  config.data.sampling = sampling
  config.data.hybrid_mask = mask
  config = toy_capacity.apply_toy(config, steps=steps, tiny=tiny)
  config.training.batch_size = batch
  config.training.loss_scale = loss_scale
  extra = config.sampling.num_samples // 2
  config.sampling.num_samples += extra
  config.sampling.dummy_label_samples = extra
  return config
