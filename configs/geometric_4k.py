"""2k CIFAR-10 cars + 4k geometric images (circle, grid, gradient, line); class-
conditional (0 = car, 1 = dummy).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("geometric_4k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="geometric",
                            num_dummy=4000)
