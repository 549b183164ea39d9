"""Baseline: 2k CIFAR-10 cars, no dummy data, unconditional.

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("cars_2k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="",
                            num_dummy=0)
