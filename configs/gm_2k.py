"""2k CIFAR-10 cars + 2k Gaussian-mixture dummy images; class-conditional (0 =
car, 1 = dummy).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("gm_2k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="gm",
                            num_dummy=2000)
