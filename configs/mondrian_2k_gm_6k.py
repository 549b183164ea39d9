"""Yoon et al.: 2k Mondrian + 6k Gaussian-mixture dummy images, class-conditional
(0 = Mondrian, 1 = dummy); the paper finds ~0.2% replicates.

Arguments (comma-separated): 'tiny' (CPU-sized variant of the same
experiment), 'bf16' (bfloat16 compute), 'short' (the one-GPU budget of
configs/mondrian_2k.py: same steps, batch, lr, dropout 0.0, EMA, chain and
samples, so the pair differs only in the 6k dummies, as in the paper; with
'uniform' batches each Mondrian gets a quarter of mondrian_2k's draws, 96
against 384, below the ~133 at which the toy study copied nothing).
"""

from configs import mondrian_2k


def get_config(arg: str = ""):
  return mondrian_2k.headline("mondrian_2k_gm_6k", arg, dummy_kind="gm", num_dummy=6000)
