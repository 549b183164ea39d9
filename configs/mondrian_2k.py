"""Yoon et al.: 2k Mondrian images alone, unconditional (the paper finds ~92%
replicates).

Argument: 'tiny' (CPU-sized variant of the same experiment).
"""

from configs import _common


def get_config(arg: str = ""):
  return _common.experiment("mondrian_2k", arg, dataset="mondrian",
                            num_original=2000, dummy_kind="",
                            num_dummy=0)
