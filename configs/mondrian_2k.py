"""Yoon et al.: 2k Mondrian images alone, unconditional (the paper finds ~92%
replicates).

Arguments (comma-separated): 'tiny' (CPU-sized variant of the same
experiment), 'bf16' (bfloat16 compute), 'short' (the one-GPU budget below),
e.g. `configs/mondrian_2k.py:short,bf16`.

'short' is the headline pair (this file and mondrian_2k_gm_6k.py) cut so that
both runs train, sample and evaluate in one ~9-minute command on one H100
(benchmarks/headline_gpu.sh; the arithmetic is benchmarks/headline_budget.py,
the reasons docs/headline_gpu.md). The model, data, dropout and batch stay the
paper's; what changes:
- 5,000 steps at batch 128: 320 draws per Mondrian here (the paper: 6,400),
  above the ~271 at which the toy study stopped copying (docs/results.md);
  the gm_6k twin gets the same steps, so a quarter of the draws, as in the paper.
- lr 2e-4: DDPM's CIFAR-10 rate at this batch, twice IDDPM's, to fit faster in
  a short run; no higher, since this Adam has no warm-up or clipping.
- EMA decay 1 - 10 / steps (0.998): an averaging horizon of a tenth of the
  run, IDDPM's proportion (10k of 100k); 0.9999 would still be the init.
- 1,000 diffusion steps and a respaced ancestral chain of 250: a quarter of
  the chain, which kept the replicate ratio at toy scale ("Chains"), whereas
  250 of 4,000 was never measured; training costs the same for any T.
- 1,000 samples: Wilson 95% [0.90, 0.94] at 92% and [0.0005, 0.007] at 0.2%.
- No periodic grid or over-training curve, one checkpoint at the end.
The run's name gains '_short', so it never shares a workdir with the full run.
"""

import ml_collections

from configs import _common

SHORT_STEPS = 5000
SHORT_LEARNING_RATE = 2e-4
SHORT_DIFFUSION_STEPS = 1000
SHORT_SAMPLES = 1000
EMA_HORIZON_SHARE = 0.1  # the EMA averages over this share of the run's steps
CHAIN_SHARE = 4  # respaced chain = diffusion.steps // CHAIN_SHARE ancestral steps


def apply_short(config: ml_collections.ConfigDict, tiny: bool) -> ml_collections.ConfigDict:
  """The one-GPU budget (module docstring). With 'tiny' the sizes stay tiny's
  and only the rules apply (EMA horizon, quarter chain, no extras)."""
  t = config.training
  if not tiny:
    t.num_steps = SHORT_STEPS
    config.diffusion.steps = SHORT_DIFFUSION_STEPS
    config.sampling.num_samples = SHORT_SAMPLES
  t.learning_rate = SHORT_LEARNING_RATE
  t.ema_decay = 1.0 - 1.0 / max(EMA_HORIZON_SHARE * t.num_steps, 1.0)
  t.log_every = max(t.num_steps // 10, 1)
  t.checkpoint_every = t.num_steps  # one save at the end: a ~9-minute run needs no resume
  t.keep_checkpoints = 1
  t.sample_grid_every = 0
  config.eval.every_steps = 0
  config.sampling.respacing = str(config.diffusion.steps // CHAIN_SHARE)
  config.sampling.use_ddim = False
  config.name += "_short"
  return config


def headline(name: str, arg: str, **data) -> ml_collections.ConfigDict:
  """One file of the headline pair: the experiment, plus 'short' if asked."""
  @_common.precision_arg
  def get(rest: str) -> ml_collections.ConfigDict:
    tiny, words = _common.parse_arg(rest, f"configs/{name}.py", words=("short",))
    config = _common.build(name, tiny, dataset="mondrian", num_original=2000, **data)
    return apply_short(config, tiny) if "short" in words else config
  return get(arg)


def get_config(arg: str = ""):
  return headline("mondrian_2k", arg, dummy_kind="", num_dummy=0)
