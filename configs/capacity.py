"""Memorization capacity: one real train set of N images, no dummy data.

Run it for several N and plot the replicate ratio against N (Yoon et al.;
Gu et al. report 99% replicates at 0.5k, 61% at 2k, 9% at 5k for CIFAR-10).

Argument: comma-separated tokens,
  N or n=N     train-set size (default 2000), e.g. `configs/capacity.py:1000`
  mondrian     Mondrian images instead of CIFAR-10 cars
  tiny         CPU-sized variant (N is divided by ten, as for every experiment)
e.g. `--config=configs/capacity.py:500,mondrian,tiny`. The run's name is
`capacity_<dataset>_<N>` so runs of a sweep are told apart.
"""

from configs import _common


@_common.precision_arg
def get_config(arg: str = ""):
  tiny, opts = _common.parse_arg(arg, "configs/capacity.py",
                                 words=("mondrian",), keys=("n",),
                                 positional="n")
  try:
    n = int(opts.get("n", "2000"))
  except ValueError:
    raise ValueError(f"configs/capacity.py: n={opts['n']!r} is not an integer") from None
  if n <= 0:
    raise ValueError(f"configs/capacity.py: the train-set size must be positive, got {n}")
  dataset = "mondrian" if "mondrian" in opts else "cifar_cars"
  short = "mondrian" if dataset == "mondrian" else "cars"
  return _common.build(f"capacity_{short}_{n}", tiny, dataset=dataset,
                       num_original=n)
