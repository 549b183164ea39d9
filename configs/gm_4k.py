"""2k CIFAR-10 cars + 4k Gaussian-mixture dummy images; class-conditional (0 =
car, 1 = dummy).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("gm_4k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="gm",
                            num_dummy=4000)
