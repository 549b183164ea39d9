"""Yoon et al.: 2k CIFAR-10 cars + 14k Gaussian-mixture dummy images, class-
conditional (0 = car, 1 = dummy).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("cars_2k_gm_14k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="gm",
                            num_dummy=14000)
