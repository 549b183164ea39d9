"""Class-level memorization: a minority class next to a majority class.

CIFAR-10 automobiles (class 1, label 0, the minority) and trucks (class 9,
label 1, the majority) in one class-conditional model. The expectation from
Yoon et al. is that the majority fills the capacity and generalizes while the
minority is memorized; sampling draws the minority (label 0) by default
(`--config.sampling.label=1` samples trucks).

Argument: comma-separated tokens,
  minority=N   automobiles (default 500)
  majority=N   trucks (default 5000)
  tiny         CPU-sized variant (counts divided by ten, at least 8)
"""

from configs import _common


@_common.precision_arg
def get_config(arg: str = ""):
  tiny, opts = _common.parse_arg(arg, "configs/minority_majority.py",
                                 keys=("minority", "majority"))
  counts = []
  for key, default_count in (("minority", 500), ("majority", 5000)):
    try:
      counts.append(int(opts.get(key, default_count)))
    except ValueError:
      raise ValueError(f"configs/minority_majority.py: {key}={opts[key]!r} "
                       "is not an integer") from None
  config = _common.build("minority_majority", False, dataset="cifar_classes",
                         num_original=counts[0], conditional=True)
  config.data.classes = (1, 9)
  config.data.class_counts = tuple(counts)
  if tiny:
    _common.default.apply_tiny(config)
  return config
