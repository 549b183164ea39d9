"""CPU toy of the minority/majority claim: two Mondrian populations in one
class-conditional model (data.dataset='mondrian_classes').

Class 0 (the minority) is the standard Mondrian, class 1 (the majority) the
earth-palette Mondrian of docs/data.md: same construction, other colours, so
the two differ in count, not in difficulty. The expectation from Yoon et al.
is that the majority fills the model's capacity and generalizes while the
minority is memorized. Sampling draws every class in turn
(`sampling.label = -1`: sample i gets label i % 2), so one evaluation's
`per_class` block gives both classes' replicate ratios.

The toy model, schedule and budget are configs/toy_capacity.py's.

Argument: comma-separated tokens,
  minority=N   Mondrian images, class 0 (default 16: memorized alone at toy scale)
  majority=N   earth-palette images, class 1 (default 240)
  steps=S      training steps (default as configs/toy_capacity.py)
  tiny         test-sized
The run's name is `toy_minority_majority_<minority>_<majority>` (`_s<S>`
appended if S is not the default).
"""

from configs import _common
from configs import toy_capacity


@_common.precision_arg
def get_config(arg: str = ""):
  file = "configs/toy_minority_majority.py"
  tiny, opts = _common.parse_arg(arg, file, keys=("minority", "majority", "steps"))
  counts = []
  for key, default_count in (("minority", 16), ("majority", 240)):
    try:
      counts.append(int(opts.get(key, default_count)))
    except ValueError:
      raise ValueError(f"{file}: {key}={opts[key]!r} is not an integer") from None
    if counts[-1] < 1:
      raise ValueError(f"{file}: {key} must be >= 1, got {counts[-1]}")
  steps = toy_capacity.parse_steps(opts, file)
  name = f"toy_minority_majority_{counts[0]}_{counts[1]}{toy_capacity.steps_suffix(steps)}"
  config = _common.build(name, False, dataset="mondrian_classes", num_original=counts[0],
                         conditional=True)
  config.data.class_counts = tuple(counts)
  config.sampling.label = -1
  return toy_capacity.apply_toy(config, steps=steps, tiny=tiny)
