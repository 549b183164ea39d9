"""2k CIFAR-10 cars + 2k Fourier hybrids (low frequencies of a held-out car, high
frequencies of a GM image); class-conditional (0 = car, 1 = dummy).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("hybrid_2k", arg, dataset="cifar_cars",
                            num_original=2000, dummy_kind="hybrid",
                            num_dummy=2000)
