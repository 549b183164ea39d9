"""Yoon et al.: 2k Mondrian + 6k Gaussian-mixture dummy images, class-conditional
(0 = Mondrian, 1 = dummy); the paper finds ~0.2% replicates.

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("mondrian_2k_gm_6k", arg, dataset="mondrian",
                            num_original=2000, dummy_kind="gm",
                            num_dummy=6000)
