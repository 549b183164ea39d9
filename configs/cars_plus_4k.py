"""2k CIFAR-10 cars + 4k more CIFAR-10 cars (a 4k-larger real train set); cars
only, so unconditional.

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("cars_plus_4k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="cars",
                            num_dummy=4000)
